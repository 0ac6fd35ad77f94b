// The application page's "Live events" panel: opens a WebSocket from the browser to the gateway
// with the key in the key field (carried in the access_token query parameter, since browsers
// cannot set handshake headers) and prints every event that arrives. The key never leaves this
// page except in that handshake: nothing here stores it.
(() => {
  const panel = document.querySelector("[data-live-panel]");
  if (!panel) return;
  const keyInput = panel.querySelector("[data-live-key]");
  const channelSelect = panel.querySelector("[data-live-channel]");
  const addressInput = panel.querySelector("[data-live-address]");
  const connectButton = panel.querySelector("[data-live-connect]");
  const disconnectButton = panel.querySelector("[data-live-disconnect]");
  const prettyToggle = panel.querySelector("[data-live-pretty]");
  const status = panel.querySelector("[data-live-status]");
  const log = panel.querySelector("[data-live-log]");
  const MAX_LINES = 200;
  // Close codes the gateway documents in docs/gateway.md (RFC 6455 §7.4 and its own 4000–4999
  // range). The page names them itself: the close reason the gateway sends may not reach the
  // browser (daphne can drop it), so it is only added when present.
  const CLOSE_REASONS = {
    1000: "closed normally",
    1006: "connection lost (or the handshake was refused: check the key, the address and the subscription)",
    1011: "gateway error",
    4008: "policy violation: this channel does not accept events from clients",
    4013: "the event backbone is unavailable; try again later",
    4401: "the API key was revoked; generate a new key for this application",
    4403: "the subscription ended (it is no longer active)",
    4410: "the API was blocked or retired, or this API version was retired, by its provider or an administrator",
  };

  // What a close means to the user: the page's own text for the code, then the gateway's reason
  // when one arrived and says more.
  const closeMessage = (event) => {
    const known = CLOSE_REASONS[event.code];
    const reason = event.reason.replace(/\.$/, "");
    if (!known) return reason || "closed";
    return reason && reason !== known ? `${known}: ${reason}` : known;
  };
  let socket = null;
  let count = 0;

  const selectedOption = () => channelSelect.options[channelSelect.selectedIndex];

  const setStatus = (text, color) => {
    status.textContent = text;
    status.className = `badge text-bg-${color}`;
  };

  const append = (parts) => {
    const line = document.createElement("li");
    const time = document.createElement("span");
    time.className = "eg-time";
    time.textContent = new Date().toLocaleTimeString();
    line.append(time);
    for (const [text, className] of parts) {
      const span = document.createElement("span");
      if (className) span.className = className;
      span.textContent = text;
      line.append(span);
    }
    log.prepend(line);
    while (log.children.length > MAX_LINES) log.lastElementChild.remove();
  };
  const note = (text) => append([[text, "eg-note"]]);

  // One line with a space after each comma and colon, so long payloads wrap between values,
  // never inside a number; or indented, when "Pretty-print JSON" is on. JSON strings cannot
  // hold a raw newline, so every newline matched here is JSON.stringify's own layout.
  const formatJSON = (value) => {
    if (prettyToggle.checked) return JSON.stringify(value, null, 2);
    return JSON.stringify(value, null, 1)
      .replace(/([{[])\n\s*/g, "$1")
      .replace(/\n\s*([}\]])/g, "$1")
      .replace(/\n\s*/g, " ");
  };

  // Gateway frames are {"id", "channel", "published_at", "payload"}: show the channel and payload.
  const format = (data) => {
    try {
      const event = JSON.parse(data);
      if (event && typeof event === "object" && "payload" in event) {
        return [[event.channel ?? "", "eg-channel"], [formatJSON(event.payload), "eg-json"]];
      }
      return [[formatJSON(event), "eg-json"]];
    } catch {
      return [[String(data), "eg-json"]];
    }
  };

  // The gateway URL of the address, with each path segment encoded as the server does.
  const channelURL = (address, key) => {
    const path = address.trim().replace(/^\/+/, "").split("/").map(encodeURIComponent).join("/");
    return `${selectedOption().dataset.baseUrl}${path}?access_token=${encodeURIComponent(key)}`;
  };

  const connect = () => {
    const key = keyInput.value.trim();
    const address = addressInput.value.trim();
    if (!key) {
      note("Enter an API key of this application first (generate one if you have lost yours).");
      keyInput.focus();
      return;
    }
    if (!address) {
      note("Enter a channel address.");
      addressInput.focus();
      return;
    }
    if (socket) socket.close(1000);
    const url = channelURL(address, key);
    count = 0;
    setStatus("Connecting…", "warning");
    connectButton.disabled = true;
    disconnectButton.disabled = false;
    // Never print the URL: it carries the key.
    note(`Connecting to ${url.split("?")[0]}`);
    const current = new WebSocket(url);
    socket = current;
    current.addEventListener("open", () => {
      setStatus("Connected", "success");
      note("Connected. Waiting for events…");
    });
    current.addEventListener("message", (event) => {
      count += 1;
      setStatus(`Connected · ${count} event${count === 1 ? "" : "s"}`, "success");
      append(format(event.data));
    });
    current.addEventListener("close", (event) => {
      note(`Disconnected (${event.code}: ${closeMessage(event)}).`);
      // A socket replaced by a newer connection must not reset the newer one's controls.
      if (socket !== current) return;
      setStatus("Not connected", "secondary");
      connectButton.disabled = false;
      disconnectButton.disabled = true;
      socket = null;
    });
  };

  const showHints = () => {
    panel.querySelectorAll("[data-live-hints]").forEach((hints) => {
      hints.hidden = hints.dataset.liveHints !== channelSelect.value;
    });
    // Mark the value the address currently uses.
    panel.querySelectorAll("[data-live-hint]").forEach((hint) => {
      if (hint.dataset.liveHint === addressInput.value.trim()) hint.setAttribute("aria-current", "true");
      else hint.removeAttribute("aria-current");
    });
  };

  channelSelect.addEventListener("change", () => {
    addressInput.value = selectedOption().dataset.address;
    showHints();
    if (socket) connect();
  });
  panel.addEventListener("click", (event) => {
    const hint = event.target.closest("[data-live-hint]");
    if (!hint) return;
    addressInput.value = hint.dataset.liveHint;
    showHints();
    if (socket) connect();
  });
  addressInput.addEventListener("input", showHints);
  addressInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") connect();
  });
  keyInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") connect();
  });
  connectButton.addEventListener("click", connect);
  disconnectButton.addEventListener("click", () => socket && socket.close(1000));
  panel.querySelector("[data-live-clear]").addEventListener("click", () => log.replaceChildren());
  showHints();
})();
