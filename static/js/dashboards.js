// Analytics dashboards (provider and platform pages): Chart.js charts from the JSON specs the
// views put in the page (analytics.views_dashboards._chart), and live tables refreshed by
// polling a JSON endpoint (data-live-url) every data-live-interval milliseconds. Times are UTC,
// as everywhere on the pages. A chart over time whose last step is not whole (spec.partial:
// "still filling" while the range ends now) draws that step dashed and lighter and says why in
// its tooltip and under the chart, so a step half counted does not read as an outage.
(function () {
  "use strict";

  const BYTE_UNITS = ["B", "KB", "MB", "GB", "TB", "PB"];
  const numberFormat = new Intl.NumberFormat("en-US");

  // Decimal units, as the pages' human_bytes filter: 1536000 → "1.5 MB".
  function humanBytes(value) {
    let amount = Number(value) || 0;
    for (const unit of BYTE_UNITS) {
      if (Math.abs(amount) < 1000 || unit === BYTE_UNITS[BYTE_UNITS.length - 1]) {
        return unit === "B" ? `${Math.round(amount)} B` : `${amount.toFixed(1)} ${unit}`;
      }
      amount /= 1000;
    }
    return `${amount}`;
  }

  // Axis ticks are round numbers: "800 KB", not "800.0 KB" (tooltips and tables keep one decimal).
  function tickBytes(value) {
    return humanBytes(value).replace(/\.0 /, " ");
  }

  function formatValue(value, unit) {
    if (value === null || value === undefined) return "—";
    if (unit === "bytes") return humanBytes(value);
    if (unit === "ms") return value < 1 ? `${value} ms` : `${numberFormat.format(value)} ms`;
    return numberFormat.format(value);
  }

  function withAlpha(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }

  // The last point of a line over time when that step is not whole: lighter, and the segment
  // leading to it dashed.
  function partialStyle(set, spec) {
    const last = spec.labels.length - 1;
    if (!spec.partial || spec.kind !== "line" || last < 1) return {};
    const faded = withAlpha(set.color, 0.35);
    const isLast = (context) => context.dataIndex === last;
    return {
      pointBackgroundColor: (context) => (isLast(context) ? "#fff" : withAlpha(set.color, set.fade || 1)),
      pointBorderColor: (context) => (isLast(context) ? faded : set.color),
      segment: {
        borderColor: (context) => (context.p1DataIndex === last ? faded : undefined),
        borderDash: (context) => (context.p1DataIndex === last ? [3, 3] : undefined),
        backgroundColor: (context) =>
          context.p1DataIndex === last && set.fill ? withAlpha(set.color, 0.06) : undefined,
      },
    };
  }

  function drawChart(canvas) {
    const spec = JSON.parse(document.getElementById(canvas.dataset.chart).textContent);
    const horizontal = spec.kind === "hbar";
    const type = spec.kind === "line" ? "line" : "bar";
    const valueAxis = horizontal ? "x" : "y";
    const categoryAxis = horizontal ? "y" : "x";
    const dense = spec.labels.length > 60;
    const datasets = spec.datasets.map((set, index) => ({
      label: set.label,
      data: set.data,
      borderColor: set.fade ? withAlpha(set.color, set.fade) : set.color,
      backgroundColor: type === "line" ? withAlpha(set.color, set.fill ? 0.15 : 0) : withAlpha(set.color, 0.8),
      fill: Boolean(set.fill),
      borderDash: set.dashed ? [6, 4] : [],
      borderWidth: set.width || 2,
      pointStyle: set.point || "circle",
      pointBackgroundColor: set.fade ? withAlpha(set.color, set.fade) : set.color,
      pointRadius: dense ? 0 : set.radius || 2,
      pointHoverRadius: 5,
      order: set.order === undefined ? index : set.order,
      tension: 0.25,
      spanGaps: false,
      borderRadius: type === "bar" ? 3 : 0,
      maxBarThickness: 28,
      ...partialStyle(set, spec),
    }));
    const scales = {};
    scales[valueAxis] = {
      beginAtZero: true,
      stacked: type === "bar",
      title: { display: true, text: horizontal ? spec.x_title : spec.y_title, font: { weight: "600" } },
      ticks: { precision: 0, callback: (value) => (spec.unit === "bytes" ? tickBytes(value) : formatValue(value, spec.unit)) },
      grid: { color: "rgba(0, 0, 0, .06)" },
    };
    scales[categoryAxis] = {
      stacked: type === "bar",
      title: { display: true, text: horizontal ? spec.y_title : spec.x_title, font: { weight: "600" } },
      ticks: { autoSkip: true, autoSkipPadding: 24, maxTicksLimit: horizontal ? 15 : 8, maxRotation: 0 },
      grid: { display: false },
    };
    return new Chart(canvas, {
      type,
      data: { labels: spec.labels, datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        indexAxis: horizontal ? "y" : "x",
        interaction: { mode: "index", intersect: false },
        plugins: {
          // In the datasets' order, whatever order they are drawn in.
          legend: {
            position: "bottom",
            labels: {
              boxWidth: 12,
              usePointStyle: true,
              sort: (a, b) => a.datasetIndex - b.datasetIndex,
              // A thick line's border would make its legend marker a blob.
              generateLabels: (chart) =>
                Chart.defaults.plugins.legend.labels
                  .generateLabels(chart)
                  .map((item) => ({ ...item, lineWidth: Math.min(item.lineWidth, 2) })),
            },
          },
          subtitle: {
            display: Boolean(spec.partial && type === "line"),
            text: `Dashed, lighter last point: this ${spec.step} is ${spec.partial}`,
            position: "bottom",
            align: "end",
            color: "#6c757d",
            font: { size: 11, style: "italic" },
            padding: { top: 2 },
          },
          tooltip: {
            itemSort: (a, b) => a.datasetIndex - b.datasetIndex,
            callbacks: {
              title: (items) => {
                if (!items.length) return "";
                const label = spec.labels[items[0].dataIndex];
                const partial = spec.partial && items[0].dataIndex === spec.labels.length - 1;
                return partial ? `${label} (${spec.partial})` : label;
              },
              label: (item) => `${item.dataset.label}: ${formatValue(item.raw, spec.unit)}`,
            },
          },
        },
        scales,
      },
    });
  }

  // --- live tables ------------------------------------------------------------------------------

  function since(iso) {
    if (!iso) return "—";
    const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ago`;
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return `${hours} h ${minutes % 60} min ago`;
    return `${Math.floor(hours / 24)} days ago`;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  const RENDERERS = {
    connections(row) {
      const tr = document.createElement("tr");
      tr.dataset.connection = row.id;
      tr.append(
        cell(row.application, "ps-3"),
        cell(row.channels.join(", "), "font-monospace small"),
        cell(row.protocol === "sse" ? "SSE" : "WebSocket"),
        cell(since(row.since), "text-nowrap"),
        cell(numberFormat.format(row.events), "text-end"),
        cell(humanBytes(row.bytes), "text-end text-nowrap"),
        cell(row.client_ip || "—", "ps-3 pe-3 font-monospace small"),
      );
      tr.cells[3].title = row.since || "";
      tr.cells[4].title = `${numberFormat.format(row.events_out)} out, ${numberFormat.format(row.events_in)} in`;
      tr.cells[5].title = `${humanBytes(row.bytes_out)} out, ${humanBytes(row.bytes_in)} in`;
      return { key: row.id, tr, signature: `${row.events}/${row.bytes}` };
    },
    processes(row) {
      const tr = document.createElement("tr");
      tr.dataset.process = row.process;
      tr.append(
        cell(row.process, "ps-3 font-monospace small"),
        cell(row.started_at ? new Date(row.started_at).toISOString().slice(0, 19).replace("T", " ") + " UTC" : "—", "text-nowrap small"),
        cell(since(row.started_at).replace(" ago", ""), "text-nowrap"),
        cell(numberFormat.format(row.connections), "text-end"),
        cell(numberFormat.format(row.events), "text-end"),
        cell(humanBytes(row.bytes), "text-end text-nowrap"),
        cell(since(row.seen_at), "ps-3 pe-3 text-nowrap small text-body-secondary"),
      );
      return { key: row.process, tr, signature: `${row.connections}/${row.events}` };
    },
  };

  function setCounts(text, connections) {
    document.querySelectorAll("[data-live-count]").forEach((node) => { node.textContent = text; });
    document.querySelectorAll("[data-live-connections]").forEach((node) => { node.textContent = connections; });
  }

  function startLive(panel) {
    const render = RENDERERS[panel.dataset.liveKind];
    const body = panel.querySelector("[data-live-rows]");
    const empty = panel.querySelector("[data-live-empty]");
    const status = panel.querySelector("[data-live-status]");
    const interval = Number(panel.dataset.liveInterval) || 5000;
    const seen = new Map();

    // The endpoint answers 503 with live_available false when Redis cannot be reached: say so
    // instead of "nothing open", which is what an empty table would claim.
    function showUnavailable(detail) {
      body.replaceChildren();
      seen.clear();
      if (empty) {
        empty.textContent = detail;
        empty.classList.remove("d-none", "text-body-secondary");
        empty.classList.add("text-warning-emphasis");
      }
      setCounts("?", "?");
      panel.classList.add("eg-live-stale");
      if (status) status.textContent = `Live data unavailable; retrying every ${interval / 1000} s`;
    }

    async function refresh() {
      try {
        const response = await fetch(panel.dataset.liveUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
        const data = await response.json().catch(() => null);
        if (data && data.live_available === false) {
          showUnavailable(data.detail);
          return;
        }
        if (!response.ok || !data) throw new Error(`HTTP ${response.status}`);
        const rows = data[panel.dataset.liveKind];
        const fresh = rows.map(render);
        body.replaceChildren(...fresh.map((item) => item.tr));
        for (const item of fresh) {
          if (seen.has(item.key) && seen.get(item.key) !== item.signature) item.tr.classList.add("eg-updated");
        }
        seen.clear();
        fresh.forEach((item) => seen.set(item.key, item.signature));
        if (empty) {
          empty.textContent = empty.dataset.emptyText || empty.textContent;
          empty.classList.remove("text-warning-emphasis");
          empty.classList.add("text-body-secondary");
          empty.classList.toggle("d-none", rows.length > 0);
        }
        // Rows shown (data-live-count) and, on the platform page, connections across processes.
        setCounts(numberFormat.format(rows.length), numberFormat.format(data.connections));
        panel.classList.remove("eg-live-stale");
        // UTC and 24-hour, as every other time on the page: "Updated 03:26:01 UTC".
        if (status) status.textContent = `Updated ${new Date().toISOString().slice(11, 19)} UTC, every ${interval / 1000} s`;
      } catch (error) {
        panel.classList.add("eg-live-stale");
        if (status) status.textContent = `Live data unavailable (${error.message}); retrying`;
      } finally {
        setTimeout(refresh, interval);
      }
    }
    refresh();
  }

  document.querySelectorAll("canvas[data-chart]").forEach(drawChart);
  document.querySelectorAll("[data-live-url]").forEach(startLive);
})();
