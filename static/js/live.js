// The application page's "Live events" panel: opens a WebSocket from the browser to the gateway
// with the key just generated (carried in the access_token query parameter, since browsers cannot
// set handshake headers) and prints every event that arrives.
(() => {
  const panel = document.querySelector("[data-live-panel]");
  if (!panel) return;
  const target = panel.querySelector("[data-live-target]");
  const connectButton = panel.querySelector("[data-live-connect]");
  const disconnectButton = panel.querySelector("[data-live-disconnect]");
  const status = panel.querySelector("[data-live-status]");
  const log = panel.querySelector("[data-live-log]");
  const MAX_LINES = 200;
  // Close codes the gateway documents (RFC 6455 §7.4 and its own 4000–4999 range).
  const CLOSE_REASONS = {
    1000: "closed normally",
    1006: "connection lost (or the handshake was refused)",
    1008: "policy violation",
    4401: "key revoked",
    4429: "throttled: too many events",
  };
  let socket = null;
  let count = 0;

  const setStatus = (text, color) => {
    status.textContent = text;
    status.className = `badge text-bg-${color}`;
  };

  const append = (text, className) => {
    const line = document.createElement("li");
    const time = document.createElement("span");
    time.className = "eg-time";
    time.textContent = new Date().toLocaleTimeString();
    line.append(time);
    const body = document.createElement("span");
    if (className) body.className = className;
    body.textContent = text;
    line.append(body);
    log.prepend(line);
    while (log.children.length > MAX_LINES) log.lastElementChild.remove();
  };

  // Gateway frames are {"id", "channel", "published_at", "payload"}: show the channel and payload.
  const format = (data) => {
    try {
      const event = JSON.parse(data);
      if (event && typeof event === "object" && "payload" in event) {
        return `${event.channel ?? ""}  ${JSON.stringify(event.payload)}`;
      }
      return JSON.stringify(event);
    } catch {
      return String(data);
    }
  };

  const connect = () => {
    if (socket) socket.close();
    const url = target.value;
    count = 0;
    setStatus("Connecting…", "warning");
    connectButton.disabled = true;
    disconnectButton.disabled = false;
    // Never print the URL: it carries the key.
    append(`Connecting to ${url.split("?")[0]}`, "eg-note");
    socket = new WebSocket(url);
    socket.addEventListener("open", () => {
      setStatus("Connected", "success");
      append("Connected. Waiting for events…", "eg-note");
    });
    socket.addEventListener("message", (event) => {
      count += 1;
      setStatus(`Connected · ${count} event${count === 1 ? "" : "s"}`, "success");
      append(format(event.data));
    });
    socket.addEventListener("close", (event) => {
      const reason = event.reason || CLOSE_REASONS[event.code] || "closed";
      append(`Disconnected (${event.code}: ${reason}).`, "eg-note");
      setStatus("Not connected", "secondary");
      connectButton.disabled = false;
      disconnectButton.disabled = true;
      socket = null;
    });
  };

  connectButton.addEventListener("click", connect);
  disconnectButton.addEventListener("click", () => socket && socket.close(1000));
  target.addEventListener("change", () => socket && connect());
})();
