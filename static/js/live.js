// Close codes of the gateway (docs/gateway.md, "Rejections and close codes"; RFC 6455 §7.4),
// shared by every page that opens a gateway WebSocket: the application page's "Live events"
// panel below and the Try it page (static/js/try-it.js, loaded after this file).
window.Eventgate = window.Eventgate || {};
(() => {
  // What each close code means to the person watching. The gateway's close reason names the
  // specific case; it is shown after this text when it says more.
  const CLOSE_CODES = {
    1000: "closed normally",
    1001: "the gateway is shutting down or restarting; connect again",
    1005: "closed without a code",
    1006: "the connection failed or was lost without a close frame (is the gateway reachable?)",
    1008: "policy violation: the gateway does not accept this frame",
    1009: "message too big: the frame is over the gateway's size limit",
    1011: "gateway error",
    1013: "try again later: the event backbone is unavailable, or this client read too slowly",
    4400: "bad request: a channel parameter value is not allowed, the address is too long, or a frame is malformed",
    4401: "the credential is missing, unknown, invalid, expired or revoked",
    4403: "no active subscription: there is none, or it is pending approval, suspended, cancelled or rejected",
    4404: "unknown API, version or channel",
    4405: "not allowed: the credential's scope or the channel does not allow this direction",
    4409: "the subscription's business plan changed; connect again to continue under the new plan",
    4410: "the API was blocked or retired, or this API version was retired",
    4408: "the plan's connection duration limit was reached; connect again to continue",
    4429: "a limit of the plan is reached (connections, rate or monthly quota)",
  };
  // Codes after which connecting again as it is will not help.
  const REFUSALS = new Set([1008, 1009, 1011, 4400, 4401, 4403, 4404, 4405, 4410, 4429]);

  // "<meaning>: <the gateway's reason>", or whichever of the two there is.
  const closeMessage = (code, reason = "") => {
    const known = CLOSE_CODES[code];
    const said = String(reason || "").replace(/\.$/, "");
    if (!known) return said || "closed";
    return said && said !== known ? `${known}: ${said}` : known;
  };

  // The subprotocols a browser offers (the contract's "eventgate.v1", plus the credential as
  // "eventgate.bearer.<token>" since browsers cannot set an Authorization header on a
  // WebSocket handshake). The gateway echoes only "eventgate.v1", never the token entry.
  const subprotocols = (token) => ["eventgate.v1", `eventgate.bearer.${token}`];

  // A throttling notice ({"type": "throttled", "reason", "retry_after", "resets_at"}; docs/throttling.md)
  // in words: "<reason>; resumes in 35 s (at 00:40:47 UTC)".
  const throttledMessage = (frame) => {
    const at = typeof frame.resets_at === "number" ? new Date(frame.resets_at * 1000) : null;
    const clock = at ? ` (at ${at.toISOString().slice(11, 19)} UTC)` : "";
    const wait = typeof frame.retry_after === "number" ? `; resumes in ${frame.retry_after.toLocaleString()} s${clock}` : "";
    return `${String(frame.reason || "a limit of the plan is reached")}${wait}`;
  };

  Object.assign(window.Eventgate, { CLOSE_CODES, REFUSALS, closeMessage, subprotocols, throttledMessage });
})();

// The application page's "Live events" panel: opens a WebSocket from the browser to the gateway
// with the key in the key field (carried as a subprotocol entry, never in the URL) and prints
// every event that arrives. The key never leaves this page except in that handshake: nothing
// here stores it.
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
  const { closeMessage, subprotocols, throttledMessage } = window.Eventgate;
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
      if (event && typeof event === "object" && event.type === "error") {
        return [[`error ${event.code}: ${closeMessage(event.code, event.reason)}`, "eg-note"]];
      }
      if (event && typeof event === "object" && event.type === "throttled") {
        return [[`stopped: ${throttledMessage(event)}`, "eg-note"]];
      }
      if (event && typeof event === "object" && "payload" in event) {
        return [[event.channel ?? "", "eg-channel"], [formatJSON(event.payload), "eg-json"]];
      }
      return [[formatJSON(event), "eg-json"]];
    } catch {
      return [[String(data), "eg-json"]];
    }
  };

  // The gateway URL of the address, with each path segment encoded as the server does.
  const channelURL = (address) => {
    const path = address.trim().replace(/^\/+/, "").split("/").map(encodeURIComponent).join("/");
    return `${selectedOption().dataset.baseUrl}${path}`;
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
    const url = channelURL(address);
    count = 0;
    setStatus("Connecting…", "warning");
    connectButton.disabled = true;
    disconnectButton.disabled = false;
    note(`Connecting to ${url}`);
    let current;
    try {
      current = new WebSocket(url, subprotocols(key));
    } catch {
      // A subprotocol entry may hold only RFC 7230 token characters.
      note("This key has characters a browser cannot send in a WebSocket handshake: check what you pasted.");
      setStatus("Not connected", "secondary");
      connectButton.disabled = false;
      disconnectButton.disabled = true;
      return;
    }
    socket = current;
    current.addEventListener("open", () => {
      setStatus("Connected", "success");
      note("Connected. Waiting for events…");
    });
    current.addEventListener("message", (event) => {
      const parts = format(event.data);
      // Error frames ({"type": "error"}) and throttling notices are not events.
      if (parts[0][1] !== "eg-note") {
        count += 1;
        setStatus(`Connected · ${count} event${count === 1 ? "" : "s"}`, "success");
      }
      append(parts);
    });
    current.addEventListener("close", (event) => {
      note(`Disconnected (${event.code}: ${closeMessage(event.code, event.reason)}).`);
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
