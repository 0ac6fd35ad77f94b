// The Try it page (portal/views/try_it.py): pick a credential and a channel of a subscribed API,
// open a WebSocket from this tab to the gateway, watch events arrive and send one where the
// channel allows it. The credential travels only in the handshake's Sec-WebSocket-Protocol
// entry "eventgate.bearer.<token>" (window.Eventgate.subprotocols, static/js/live.js): never in
// a URL, and nothing here stores it beyond this tab's memory.
(() => {
  const root = document.querySelector("[data-try-it]");
  if (!root) return;
  const data = JSON.parse(document.getElementById("try-it-data").textContent);
  const { CLOSE_CODES, REFUSALS, closeMessage, subprotocols } = window.Eventgate;
  const $ = (selector) => document.querySelector(selector);
  const MAX_ENTRIES = 200;
  // Milliseconds a new socket must stay open before the page calls it open (see connect()).
  const OPEN_GRACE_MS = 300;

  const ui = {
    applicationSelect: $("[data-try-application]"),
    credentialRadios: document.querySelectorAll("[data-try-credential]"),
    issueButton: $("[data-try-issue]"),
    keyEmpty: $("[data-try-key-empty]"),
    keyBox: $("[data-try-key]"),
    keyPrefix: $("[data-try-key-prefix]"),
    keyExpiry: $("[data-try-key-expiry]"),
    keyCopy: $("[data-try-key-copy]"),
    keyError: $("[data-try-key-error]"),
    token: $("[data-try-token]"),
    apiSelect: $("[data-try-api]"),
    channelSelect: $("[data-try-channel]"),
    actions: $("[data-try-actions]"),
    channelTitle: $("[data-try-channel-title]"),
    params: $("[data-try-params]"),
    address: $("[data-try-address]"),
    truncated: $("[data-try-truncated]"),
    status: $("[data-try-status]"),
    url: $("[data-try-url]"),
    connect: $("[data-try-connect]"),
    disconnect: $("[data-try-disconnect]"),
    clear: $("[data-try-clear]"),
    closeBox: $("[data-try-close]"),
    log: $("[data-try-log]"),
    snippet: $("[data-try-snippet]"),
    sendHint: $("[data-try-send-hint]"),
    sendForm: $("[data-try-send-form]"),
    payload: $("[data-try-payload]"),
    payloadError: $("[data-try-payload-error]"),
    send: $("[data-try-send]"),
    example: $("[data-try-example]"),
  };

  let testKey = null; // {secret, prefix, expiresAt: Date}
  let socket = null;
  let openChannel = null; // {api, version, channel, address} of the open socket
  let events = 0;

  // ---- Selection: API and version, channel, parameter values -------------------------------

  const versions = data.apis.flatMap((api) => api.versions.map((version) => ({ api, version })));
  const currentVersion = () => versions[Number(ui.apiSelect.value)] ?? versions[0];
  const currentChannel = () => currentVersion().version.channels[Number(ui.channelSelect.value)];

  const option = (value, text) => {
    const element = document.createElement("option");
    element.value = String(value);
    element.textContent = text;
    return element;
  };

  const fillApis = () => {
    versions.forEach(({ api, version }, index) => {
      const deprecated = version.status === "deprecated" ? " (deprecated)" : "";
      ui.apiSelect.append(option(index, `${api.name} · ${version.version}${deprecated}`));
    });
    const wanted = versions.findIndex(
      ({ api, version }) => api.slug === data.selected.api && version.version === data.selected.version,
    );
    ui.apiSelect.value = String(Math.max(wanted, 0));
  };

  const fillChannels = (wantedKey) => {
    const { version } = currentVersion();
    ui.channelSelect.replaceChildren();
    version.channels.forEach((channel, index) => {
      const directions = [channel.receive && "receive", channel.send && "send"].filter(Boolean).join(" + ");
      ui.channelSelect.append(option(index, `${channel.address}${directions ? `  (${directions})` : ""}`));
    });
    const wanted = version.channels.findIndex((channel) => channel.key === wantedKey);
    // Default: the first channel one can receive from, since that shows events without sending.
    const receivable = version.channels.findIndex((channel) => channel.receive);
    ui.channelSelect.value = String(wanted >= 0 ? wanted : Math.max(receivable, 0));
    ui.truncated.hidden = !version.truncated;
    ui.truncated.textContent = version.truncated
      ? `${version.truncated} more channels are not listed here; see the API's documentation.`
      : "";
  };

  const badge = (text, color) => {
    const element = document.createElement("span");
    element.className = `badge text-bg-${color}`;
    element.textContent = text;
    return element;
  };

  const showChannel = (values = {}) => {
    const channel = currentChannel();
    ui.actions.replaceChildren();
    if (!channel) return;
    if (channel.receive) ui.actions.append(badge("you can receive", "success"));
    if (channel.send) ui.actions.append(badge("you can send", "primary"));
    if (!channel.receive && !channel.send) ui.actions.append(badge("no operations", "secondary"));
    ui.channelTitle.hidden = !channel.title;
    ui.channelTitle.textContent = channel.title;
    ui.params.replaceChildren(...channel.parameters.map((parameter) => parameterField(parameter, values)));
    ui.payload.value = channel.example;
    ui.payload.classList.remove("is-invalid");
    update();
  };

  // One labelled field per channel parameter: a select for an enum, else a text input, filled
  // with the deep link's value, the default or the first allowed value.
  const parameterField = (parameter, values) => {
    const id = `try-param-${parameter.name.replace(/\W/g, "_")}`;
    const wrapper = document.createElement("div");
    wrapper.className = "mb-2";
    const label = document.createElement("label");
    label.className = "form-label small fw-semibold mb-1 font-monospace";
    label.htmlFor = id;
    label.textContent = `{${parameter.name}}`;
    const value = values[parameter.name] ?? parameter.default ?? "";
    let input;
    if (parameter.enum.length) {
      input = document.createElement("select");
      input.className = "form-select form-select-sm font-monospace";
      parameter.enum.forEach((allowed) => input.append(option(allowed, allowed)));
      input.value = parameter.enum.includes(value) ? value : parameter.enum[0];
    } else {
      input = document.createElement("input");
      input.type = "text";
      input.className = "form-control form-control-sm font-monospace";
      input.placeholder = parameter.pattern ? `matching ${parameter.pattern}` : "a value";
      input.autocomplete = "off";
      input.spellcheck = false;
      input.value = value;
    }
    input.id = id;
    input.dataset.tryParam = parameter.name;
    const feedback = document.createElement("div");
    feedback.className = "invalid-feedback";
    wrapper.append(label, input, feedback);
    const help = [parameter.description, parameter.pattern && `Pattern: ${parameter.pattern}`].filter(Boolean);
    if (help.length) {
      const small = document.createElement("div");
      small.className = "form-text mt-1";
      small.textContent = help.join(" · ");
      wrapper.append(small);
    }
    return wrapper;
  };

  // Why a parameter value would be refused, or "" when it looks fine. The gateway decides
  // (close code 4400); this only says so before connecting.
  const parameterProblem = (parameter, value) => {
    if (!value) return "Enter a value.";
    if (value.includes("/")) return "A parameter value cannot contain “/”.";
    if (parameter.enum.length && !parameter.enum.includes(value)) return "Not one of the allowed values.";
    if (parameter.pattern) {
      try {
        // JSON Schema patterns are ECMA-262 and unanchored (JSON Schema Validation §6.3.3).
        if (!new RegExp(parameter.pattern, "u").test(value)) return `Does not match ${parameter.pattern}.`;
      } catch {
        return "";
      }
    }
    return "";
  };

  const parameterValues = () => {
    const values = {};
    ui.params.querySelectorAll("[data-try-param]").forEach((input) => {
      values[input.dataset.tryParam] = input.value.trim();
    });
    return values;
  };

  // The concrete address: the template with each {parameter} replaced by its value.
  const concreteAddress = (channel, values) =>
    channel.address.replace(/\{([^{}]+)\}/g, (placeholder, name) => values[name] || placeholder);

  // The gateway URL of the address, each path segment encoded as the server decodes it.
  const channelURL = (version, address) =>
    version.base_url + address.replace(/^\/+/, "").split("/").map(encodeURIComponent).join("/");

  // ---- Credential ----------------------------------------------------------------------------

  const credentialKind = () => [...ui.credentialRadios].find((radio) => radio.checked).value;

  const showCredential = () => {
    const kind = credentialKind();
    document.querySelectorAll("[data-try-pane]").forEach((pane) => {
      pane.hidden = pane.dataset.tryPane !== kind;
    });
  };

  const token = () => {
    if (credentialKind() === "paste") return ui.token.value.trim();
    if (testKey && testKey.expiresAt > new Date()) return testKey.secret;
    return "";
  };

  const csrfToken = () => root.querySelector("input[name=csrfmiddlewaretoken]").value;

  const issueKey = async () => {
    ui.issueButton.disabled = true;
    ui.keyError.hidden = true;
    try {
      const response = await fetch(data.key_url, {
        method: "POST",
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
        credentials: "same-origin",
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok || !body.secret) {
        throw new Error(body.error || `The portal answered ${response.status}; reload the page and try again.`);
      }
      testKey = { secret: body.secret, prefix: body.prefix, expiresAt: new Date(body.expires_at) };
      ui.keyPrefix.textContent = `${body.prefix}…`;
      ui.keyExpiry.textContent = `Valid until ${testKey.expiresAt.toLocaleTimeString([], {
        hour: "2-digit",
        minute: "2-digit",
      })} · listed with ${data.application.name}'s keys, where you can revoke it.`;
      ui.keyEmpty.hidden = true;
      ui.keyBox.hidden = false;
      update();
    } catch (error) {
      ui.keyError.textContent = error.message;
      ui.keyError.hidden = false;
    } finally {
      ui.issueButton.disabled = false;
    }
  };

  const copyKey = async () => {
    if (!testKey) return;
    try {
      await navigator.clipboard.writeText(testKey.secret);
      ui.keyCopy.textContent = "Copied";
    } catch {
      ui.keyCopy.textContent = "Copy failed (needs HTTPS)";
    }
    setTimeout(() => {
      ui.keyCopy.textContent = "Copy key";
    }, 1500);
  };

  // ---- Log ------------------------------------------------------------------------------------

  const entry = (kind, label, { channel = "", detail = "", body = null } = {}) => {
    ui.log.querySelector("[data-try-placeholder]")?.remove();
    const item = document.createElement("li");
    item.className = `eg-try-entry eg-try-${kind}`;
    const head = document.createElement("div");
    head.className = "eg-try-head";
    const time = document.createElement("span");
    time.className = "eg-time";
    time.textContent = new Date().toLocaleTimeString();
    const kindLabel = document.createElement("span");
    kindLabel.className = "eg-try-kind";
    kindLabel.textContent = label;
    head.append(time, kindLabel);
    if (channel) {
      const where = document.createElement("span");
      where.className = "eg-channel";
      where.textContent = channel;
      head.append(where);
    }
    if (detail) {
      const text = document.createElement("span");
      text.className = "eg-try-detail";
      text.textContent = detail;
      head.append(text);
    }
    item.append(head);
    if (body !== null) {
      const pre = document.createElement("pre");
      pre.className = "eg-try-json";
      pre.textContent = body;
      item.append(pre);
    }
    ui.log.prepend(item);
    while (ui.log.children.length > MAX_ENTRIES) ui.log.lastElementChild.remove();
  };
  const note = (text) => entry("note", "info", { detail: text });

  const pretty = (value) => JSON.stringify(value, null, 2);

  const received = (raw) => {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      entry("frame", "frame", { body: String(raw) });
      return;
    }
    if (frame && typeof frame === "object" && frame.type === "error") {
      // An error frame answers one client frame: its reason says what was wrong with it, more
      // precisely than the code's general meaning (which is the fallback).
      const reason = String(frame.reason || "") || closeMessage(frame.code);
      const where = frame.pointer && !reason.includes(frame.pointer) ? ` (at ${frame.pointer})` : "";
      entry("error", `error ${frame.code ?? ""}`.trim(), { channel: frame.channel ?? "", detail: reason + where });
      return;
    }
    if (frame && typeof frame === "object" && frame.type === "throttled") {
      // The plan's throttling policy stopped events (docs/throttling.md): not an event.
      entry("note", `throttled · ${frame.limit ?? ""}`.trim(), { detail: window.Eventgate.throttledMessage(frame) });
      return;
    }
    if (frame && typeof frame === "object" && "payload" in frame) {
      events += 1;
      setStatus(`Open · ${events} event${events === 1 ? "" : "s"}`, "success");
      const latency =
        typeof frame.published_at === "number" ? ` · ${Math.max(0, Date.now() / 1000 - frame.published_at).toFixed(2)} s after publishing` : "";
      entry("event", "event", { channel: frame.channel ?? "", detail: `${frame.id ?? ""}${latency}`, body: pretty(frame.payload) });
      return;
    }
    entry("frame", "frame", { body: pretty(frame) });
  };

  // ---- Connection -----------------------------------------------------------------------------

  const setStatus = (text, color) => {
    ui.status.textContent = text;
    ui.status.className = `badge text-bg-${color} fs-6 fw-semibold`;
  };

  const showClose = (event, outcome) => {
    const final = REFUSALS.has(event.code) || (event.code >= 4000 && event.code !== 4409);
    ui.closeBox.hidden = false;
    ui.closeBox.className = `alert small py-2 mb-3 alert-${final ? "danger" : event.code === 1000 ? "secondary" : "warning"}`;
    ui.closeBox.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = `${outcome} with code ${event.code}`;
    const meaning = CLOSE_CODES[event.code];
    const reason = String(event.reason || "").replace(/\.$/, "");
    ui.closeBox.append(strong, ` — ${meaning || "no documented meaning"}.`);
    if (reason && reason !== meaning) {
      const said = document.createElement("div");
      said.className = "mt-1";
      said.dataset.tryCloseReason = "";
      said.textContent = `The gateway said: ${reason}.`;
      ui.closeBox.append(said);
    }
  };

  const connect = () => {
    const channel = currentChannel();
    const { api, version } = currentVersion();
    const credential = token();
    if (!credential) {
      const kind = credentialKind();
      note(
        kind === "paste"
          ? "Paste an API key or access token of this application first."
          : testKey
            ? "The test key has expired: issue another."
            : "Issue a test key first (step 1), or paste a key or token.",
      );
      (kind === "paste" ? ui.token : ui.issueButton).focus();
      return;
    }
    if (!validateParameters()) {
      note("Fix the channel's parameter values first (step 2).");
      return;
    }
    const address = concreteAddress(channel, parameterValues());
    const url = channelURL(version, address);
    if (socket) {
      const previous = socket;
      socket = null;
      previous.close(1000);
    }
    let current;
    try {
      current = new WebSocket(url, subprotocols(credential));
    } catch {
      // Subprotocol entries may hold only RFC 7230 token characters.
      note("This credential has characters a browser cannot send in a WebSocket handshake: check what you pasted.");
      return;
    }
    socket = current;
    openChannel = { api, version, channel, address };
    events = 0;
    ui.closeBox.hidden = true;
    setStatus("Connecting…", "warning");
    note(`Connecting to ${url}`);
    // The gateway refuses a handshake by accepting it and closing at once with a code (so that
    // browsers see the code), so "open" is announced only once the socket has stayed open a
    // moment or delivered a frame; a close before that is shown as a refusal.
    let announce = null;
    const announceOpen = () => {
      if (announce === null) return;
      clearTimeout(announce);
      announce = null;
      setStatus("Open", "success");
      note(channel.receive ? "Open. Waiting for events…" : "Open. This channel delivers no events; send one below.");
    };
    let opened = false;
    current.addEventListener("open", () => {
      if (socket !== current) return;
      opened = true;
      announce = setTimeout(announceOpen, OPEN_GRACE_MS);
      update();
    });
    current.addEventListener("message", (event) => {
      if (socket !== current) return;
      announceOpen();
      received(event.data);
    });
    current.addEventListener("close", (event) => {
      if (socket !== current) return; // replaced by a newer connection
      // "Failed": no handshake at all; "Refused": closed as soon as it opened; else "Closed".
      const outcome = !opened ? "Failed" : announce !== null ? "Refused" : "Closed";
      clearTimeout(announce);
      socket = null;
      openChannel = null;
      setStatus(`${outcome} · ${event.code}`, event.code === 1000 ? "secondary" : "danger");
      entry("closed", `${outcome.toLowerCase()} ${event.code}`, { detail: closeMessage(event.code, event.reason) });
      showClose(event, outcome);
      update();
    });
    update();
  };

  const disconnect = () => {
    if (socket) socket.close(1000);
  };

  const validateParameters = () => {
    const channel = currentChannel();
    let valid = true;
    ui.params.querySelectorAll("[data-try-param]").forEach((input) => {
      const parameter = channel.parameters.find((p) => p.name === input.dataset.tryParam);
      const problem = parameterProblem(parameter, input.value.trim());
      input.classList.toggle("is-invalid", Boolean(problem));
      input.nextElementSibling.textContent = problem;
      if (problem) valid = false;
    });
    return valid;
  };

  // ---- Sending --------------------------------------------------------------------------------

  const sendEvent = () => {
    if (!socket || socket.readyState !== WebSocket.OPEN || !openChannel?.channel.send) return;
    let value;
    try {
      value = JSON.parse(ui.payload.value);
    } catch (error) {
      showPayloadError(`Not valid JSON: ${error.message}`);
      return;
    }
    const text = JSON.stringify(value);
    const bytes = new TextEncoder().encode(text).length;
    if (bytes > data.max_message_bytes) {
      showPayloadError(`${bytes.toLocaleString()} bytes: the gateway accepts at most ${data.max_message_bytes.toLocaleString()} bytes per frame.`);
      return;
    }
    ui.payload.classList.remove("is-invalid");
    // Single-channel mode: each text frame is one event's payload (docs/gateway.md). The
    // gateway answers nothing on success and an error frame for a refused event.
    socket.send(text);
    entry("sent", "sent", { channel: openChannel.address, detail: `${bytes} bytes`, body: pretty(value) });
  };

  const showPayloadError = (text) => {
    ui.payload.classList.add("is-invalid");
    ui.payloadError.textContent = text;
  };

  // ---- Keeping the page consistent ------------------------------------------------------------

  const update = () => {
    const channel = currentChannel();
    const { api, version } = currentVersion();
    const values = parameterValues();
    const address = channel ? concreteAddress(channel, values) : "";
    const url = channel ? channelURL(version, address) : "";
    ui.address.textContent = address;
    ui.url.textContent = url;
    ui.snippet.textContent =
      `const token = "<your API key or access token>";\n` +
      `const socket = new WebSocket(\n  "${url}",\n  ["eventgate.v1", "eventgate.bearer." + token],\n);\n` +
      `socket.onmessage = (event) => console.log(JSON.parse(event.data));\n` +
      `socket.onclose = (event) => console.log("closed", event.code, event.reason);` +
      (channel?.send ? `\n// Send one event (its payload) once open:\n// socket.send(JSON.stringify({...}));` : "");
    const open = socket && socket.readyState === WebSocket.OPEN;
    const connecting = socket && socket.readyState === WebSocket.CONNECTING;
    ui.connect.textContent = open || connecting ? "Reconnect" : "Connect";
    ui.disconnect.disabled = !socket;
    const canSend = Boolean(open && openChannel?.channel.send);
    ui.payload.disabled = !channel?.send;
    ui.send.disabled = !canSend;
    ui.example.disabled = !channel?.send;
    ui.sendForm.hidden = !channel?.send;
    if (!channel?.send) {
      ui.sendHint.textContent = "This channel has no send operation: consumers only receive events from it.";
    } else if (!open) {
      ui.sendHint.textContent = "This channel accepts events from you. Connect first; the event goes over the open connection as one text frame.";
    } else if (openChannel.channel !== channel || openChannel.address !== address) {
      ui.sendHint.textContent = `Connected to ${openChannel.address}: reconnect to send on ${address}.`;
      ui.send.disabled = true;
    } else {
      ui.sendHint.textContent = "Edit the JSON payload and press Send. A refused event comes back as an error in the log.";
    }
    // Keep the address bar a link to this selection (never with the credential).
    const query = new URLSearchParams({
      application: data.application.id,
      api: api.slug,
      version: version.version,
      channel: channel ? (channel.parameters.length && !/[{}]/.test(address) ? address : channel.key) : "",
    });
    history.replaceState(null, "", `?${query}`);
  };

  // ---- Wiring ---------------------------------------------------------------------------------

  fillApis();
  fillChannels(data.selected.channel);
  showChannel(data.selected.values);
  showCredential();

  ui.applicationSelect?.addEventListener("change", () => {
    window.location.search = `?application=${encodeURIComponent(ui.applicationSelect.value)}`;
  });
  ui.credentialRadios.forEach((radio) => radio.addEventListener("change", () => {
    showCredential();
    update();
  }));
  ui.issueButton.addEventListener("click", issueKey);
  ui.keyCopy.addEventListener("click", copyKey);
  ui.token.addEventListener("keydown", (event) => {
    if (event.key === "Enter") connect();
  });
  ui.apiSelect.addEventListener("change", () => {
    fillChannels(null);
    showChannel();
    if (socket) connect();
  });
  ui.channelSelect.addEventListener("change", () => {
    showChannel();
    if (socket) connect();
  });
  ui.params.addEventListener("input", () => {
    ui.params.querySelectorAll(".is-invalid").forEach((input) => input.classList.remove("is-invalid"));
    update();
  });
  ui.params.addEventListener("change", () => {
    if (socket && validateParameters()) connect();
  });
  ui.params.addEventListener("keydown", (event) => {
    if (event.key === "Enter") connect();
  });
  ui.connect.addEventListener("click", connect);
  ui.disconnect.addEventListener("click", disconnect);
  ui.clear.addEventListener("click", () => ui.log.replaceChildren());
  ui.send.addEventListener("click", sendEvent);
  ui.payload.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) sendEvent();
  });
  ui.payload.addEventListener("input", () => ui.payload.classList.remove("is-invalid"));
  ui.example.addEventListener("click", () => {
    ui.payload.value = currentChannel().example;
    ui.payload.classList.remove("is-invalid");
  });
})();
