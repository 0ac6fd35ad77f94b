// Usage page: one small bar chart of events per hour for each subscription (Chart.js).
document.querySelectorAll("[data-usage-chart]").forEach((canvas) => {
  const data = JSON.parse(document.getElementById(canvas.dataset.usageChart).textContent);
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [{ label: "Events", data: data.events, backgroundColor: "rgba(91, 77, 219, 0.75)", borderRadius: 3 }],
    },
    options: {
      animation: false,
      plugins: { legend: { display: false } },
      scales: {
        x: { grid: { display: false }, ticks: { maxTicksLimit: 8 } },
        y: { beginAtZero: true, ticks: { precision: 0 } },
      },
    },
  });
});
