// Usage page (templates/analytics/usage.html): for each subscription, a stacked bar chart of events
// per step (delivered, sent by the app, and the events not delivered by reason) and a line chart of
// bytes per step, drawn with Chart.js from the card's json_script data (analytics.views
// SubscriptionUsage.chart); with webhooks, a stacked bar chart of webhook attempts per step
// (delivered, failed) with dead letters as a line (SubscriptionUsage.webhook_chart). Times are UTC,
// as everywhere on the page.
(() => {
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const UNITS = ["B", "KB", "MB", "GB", "TB", "PB"];

  // Bytes in decimal units with at most one decimal, none when it is zero: 1536000 → "1.5 MB",
  // 800000 → "800 KB" (an axis of "800.0 KB", "1.0 MB" reads as noise). A value that rounds to
  // 1,000 of a unit is written in the next one (999960 → "1 MB", not "1000 KB").
  const humanBytes = (value) => {
    let amount = Math.abs(Number(value) || 0);
    let unit = 0;
    while (unit < UNITS.length - 1 && (unit === 0 ? amount : Math.round(amount * 10) / 10) >= 1000) {
      amount /= 1000;
      unit += 1;
    }
    if (unit === 0) return `${Math.round(amount)} B`;
    return `${Number(amount.toFixed(1))} ${UNITS[unit]}`;
  };
  const number = (value) => Number(value).toLocaleString("en-US");
  const pad = (n) => String(n).padStart(2, "0");

  // The x axis shows ticks at round times only (every 10 minutes, every 6 hours, every day, ...):
  // the smallest of these intervals that gives at most `most` ticks over the range.
  const MINUTE = 60_000;
  const INTERVALS = {
    minute: [5, 10, 15, 30, 60, 120, 180, 360].map((m) => m * MINUTE),
    hour: [1, 2, 3, 6, 12, 24, 48, 72, 168].map((h) => h * 60 * MINUTE),
    day: [1, 2, 3, 7, 14, 28, 56, 91].map((d) => d * 1440 * MINUTE),
  };
  const tickInterval = (labels, step, most) => {
    const span = labels.length > 1 ? Date.parse(labels[labels.length - 1]) - Date.parse(labels[0]) : 0;
    const choices = INTERVALS[step] || INTERVALS.hour;
    return choices.find((interval) => span / interval <= most) || choices[choices.length - 1];
  };
  // Ticks the chart has room for: one per ~70 px of its width ("24 Nov", "18:00" with room to
  // breathe beside the y axis), at most 10, so a phone-wide chart gets every other day rather
  // than labels running into each other.
  const TICK_ROOM = 70;
  const mostTicks = (width) => Math.max(2, Math.min(10, Math.floor(width / TICK_ROOM)));
  // A tick's label (UTC): the clock, with the day under it at midnight and on the first tick;
  // the day alone when ticks are a day or more apart; null (no tick) between round times.
  const tickLabel = (labels, index, interval, firstShown) => {
    const at = new Date(labels[index]);
    if (at.getTime() % interval !== 0) return null;
    const day = `${at.getUTCDate()} ${MONTHS[at.getUTCMonth()]}`;
    if (interval >= 1440 * MINUTE) return day;
    const clock = `${pad(at.getUTCHours())}:${pad(at.getUTCMinutes())}`;
    const midnight = at.getUTCHours() === 0 && at.getUTCMinutes() === 0;
    return midnight || index === firstShown ? [clock, day] : clock;
  };
  const fullLabel = (data, index) => {
    const at = new Date(data.labels[index]);
    const day = `${at.getUTCDate()} ${MONTHS[at.getUTCMonth()]} ${at.getUTCFullYear()}`;
    const when = data.step === "day" ? `${day} (UTC)` : `${day}, ${pad(at.getUTCHours())}:${pad(at.getUTCMinutes())} UTC`;
    const partial = data.partial && index === data.labels.length - 1 ? " (so far)" : "";
    return `${data.step[0].toUpperCase()}${data.step.slice(1)} of ${when}${partial}`;
  };

  const COLORS = {
    delivered: "#5b4ddb",
    sent: "#20a39e",
    throttled: "#dc3545",
    dropped: "#fd7e14",
    rejected: "#b5179e",
    failed: "#6c757d",
  };
  const EVENT_SERIES = [
    ["delivered", "Delivered"],
    ["sent", "Sent by your app"],
    ["throttled", "Throttled"],
    ["dropped", "Dropped (slow client)"],
    ["rejected", "Rejected"],
    ["failed", "Failed"],
  ];
  const anyValue = (values) => values.some((value) => value > 0);

  const axisTitle = (text) => ({ display: true, text, color: "#6c6a80", font: { size: 11, weight: "600" } });
  // The interval follows the chart's width, so it is worked out again when the chart is resized
  // (a phone turned sideways), once per width.
  const xAxis = (data) => {
    let layout = { width: null, interval: 0, firstShown: 0 };
    const layoutFor = (width) => {
      if (layout.width !== width) {
        const interval = tickInterval(data.labels, data.step, mostTicks(width));
        const firstShown = data.labels.findIndex((iso) => Date.parse(iso) % interval === 0);
        layout = { width, interval, firstShown };
      }
      return layout;
    };
    return {
      grid: { display: false },
      title: axisTitle("Time (UTC)"),
      ticks: {
        maxRotation: 0,
        autoSkip: false,
        callback(value, index) {
          const { interval, firstShown } = layoutFor(this.chart.width);
          return tickLabel(data.labels, index, interval, firstShown);
        },
      },
    };
  };

  const eventsChart = (canvas, data) => {
    const last = data.labels.length - 1;
    // The step still filling up (the range ends now) is drawn lighter.
    const fill = (color) => (context) => (data.partial && context.dataIndex === last ? `${color}66` : color);
    const datasets = EVENT_SERIES.filter(([key]) => key === "delivered" || anyValue(data[key])).map(([key, label]) => ({
      label,
      data: data[key],
      backgroundColor: fill(COLORS[key]),
      borderRadius: 2,
      stack: "events",
      maxBarThickness: 28,
    }));
    return new Chart(canvas, {
      type: "bar",
      data: { labels: data.labels, datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12, boxHeight: 12 } },
          tooltip: {
            callbacks: {
              title: (items) => fullLabel(data, items[0].dataIndex),
              label: (item) => `${item.dataset.label}: ${number(item.raw)} event${item.raw === 1 ? "" : "s"}`,
            },
          },
        },
        scales: {
          x: { ...xAxis(data), stacked: true },
          y: {
            stacked: true,
            beginAtZero: true,
            title: axisTitle(`Events per ${data.step}`),
            ticks: { precision: 0, callback: (value) => number(value) },
          },
        },
      },
    });
  };

  const bytesChart = (canvas, data) => {
    const datasets = [
      {
        label: "Delivered",
        data: data.bytes_delivered,
        borderColor: COLORS.delivered,
        backgroundColor: "rgba(91, 77, 219, 0.12)",
        fill: true,
      },
    ];
    if (anyValue(data.bytes_sent)) {
      datasets.push({
        label: "Sent by your app",
        data: data.bytes_sent,
        borderColor: COLORS.sent,
        backgroundColor: "rgba(32, 163, 158, 0.12)",
        fill: true,
      });
    }
    const last = data.labels.length - 1;
    // The step still filling up (the range ends now): a dashed last segment.
    const segment = { borderDash: (context) => (data.partial && context.p1DataIndex === last ? [4, 4] : undefined) };
    datasets.forEach((dataset) =>
      Object.assign(dataset, { tension: 0.25, borderWidth: 2, pointRadius: data.labels.length > 60 ? 0 : 2, segment }),
    );
    return new Chart(canvas, {
      type: "line",
      data: { labels: data.labels, datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12, boxHeight: 12 } },
          tooltip: {
            callbacks: {
              title: (items) => fullLabel(data, items[0].dataIndex),
              label: (item) => `${item.dataset.label}: ${humanBytes(item.raw)} (${number(item.raw)} bytes)`,
            },
          },
        },
        scales: {
          x: xAxis(data),
          y: {
            beginAtZero: true,
            title: axisTitle(`Bytes per ${data.step}`),
            // Whole bytes only: a tiny chart would otherwise tick at 0.2 B, 0.4 B, ...
            ticks: { precision: 0, callback: (value) => humanBytes(value) },
          },
        },
      },
    });
  };

  // Webhook attempts per step: those answered 2xx (a delivery) and those that failed (retried
  // later, or the last one of a dead letter), stacked; dead letters as a line over them.
  const WEBHOOK_COLORS = { delivered: "#2f9e6e", failed: "#e8891a", dead: "#b02a37" };
  const webhooksChart = (canvas, data) => {
    const last = data.labels.length - 1;
    const fill = (color) => (context) => (data.partial && context.dataIndex === last ? `${color}66` : color);
    const bar = (key, label) => ({
      type: "bar",
      label,
      data: data[key],
      backgroundColor: fill(WEBHOOK_COLORS[key]),
      borderRadius: 2,
      stack: "attempts",
      maxBarThickness: 28,
      order: 2,
    });
    const datasets = [bar("delivered", "Delivered (2xx)"), bar("failed", "Failed attempts")];
    if (anyValue(data.dead)) {
      datasets.push({
        type: "line",
        label: "Dead letters",
        data: data.dead,
        borderColor: WEBHOOK_COLORS.dead,
        backgroundColor: WEBHOOK_COLORS.dead,
        borderWidth: 2,
        // Points only where events died: a row of dots along zero reads as noise.
        pointRadius: (context) => (context.raw > 0 && data.labels.length <= 60 ? 3 : 0),
        tension: 0.25,
        order: 1,
      });
    }
    const unit = { "Dead letters": ["event", "events"] };
    return new Chart(canvas, {
      type: "bar",
      data: { labels: data.labels, datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          // In the datasets' order (the line is drawn on top, so its `order` comes first).
          legend: {
            position: "bottom",
            labels: { boxWidth: 12, boxHeight: 12, sort: (a, b) => a.datasetIndex - b.datasetIndex },
          },
          tooltip: {
            itemSort: (a, b) => a.datasetIndex - b.datasetIndex,
            callbacks: {
              title: (items) => fullLabel(data, items[0].dataIndex),
              label: (item) => {
                const [one, many] = unit[item.dataset.label] || ["attempt", "attempts"];
                return `${item.dataset.label}: ${number(item.raw)} ${item.raw === 1 ? one : many}`;
              },
            },
          },
        },
        scales: {
          x: { ...xAxis(data), stacked: true },
          y: {
            stacked: true,
            beginAtZero: true,
            title: axisTitle(`Attempts per ${data.step}`),
            ticks: { precision: 0, callback: (value) => number(value) },
          },
        },
      },
    });
  };

  const DRAW = { events: eventsChart, bytes: bytesChart, webhooks: webhooksChart };
  document.querySelectorAll("[data-usage-chart]").forEach((canvas) => {
    const data = JSON.parse(document.getElementById(canvas.dataset.chartData).textContent);
    const chart = DRAW[canvas.dataset.usageChart](canvas, data);
    canvas.dataset.chartReady = String(chart.data.datasets.length);
  });

  // The application filter applies as soon as one is chosen.
  const application = document.getElementById("range-application");
  if (application) application.addEventListener("change", () => application.form.requestSubmit());
})();
