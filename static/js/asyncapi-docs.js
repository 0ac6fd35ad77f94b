// The API page's "AsyncAPI documentation" tab: renders the consumer-facing AsyncAPI document with
// the official web component (@asyncapi/react-component's standalone bundle, global
// AsyncApiStandalone). Nothing loads until the tab opens: the bundle is ~3 MB of JavaScript and
// parsing a large document takes seconds. The document is fetched from the page's JSON download
// (so the page itself stays small); large ones render only when the reader asks (a button).
(() => {
  const root = document.querySelector("[data-asyncapi-docs]");
  if (!root) return;
  const target = root.querySelector("[data-asyncapi-target]");
  const status = root.querySelector("[data-asyncapi-status]");
  const onDemand = root.querySelector("[data-asyncapi-on-demand]");
  const tab = document.getElementById("documentation-tab");
  // The provider's info (title, description) is already on the page; the sidebar would fight the
  // page's own layout.
  const config = {
    show: { sidebar: false, info: false, servers: true, operations: true, messages: true, schemas: true, errors: true },
    expand: { messageExamples: true },
    // Operations are written from the provider application's side (AsyncAPI 3.0 §Operation
    // Object; 2.x subscribe/publish likewise): "send" is what consumers receive. Label them from
    // the reader's side, as the Channels tab does.
    sendLabel: "YOU RECEIVE",
    subscribeLabel: "YOU RECEIVE",
    receiveLabel: "YOU SEND",
    publishLabel: "YOU SEND",
  };
  let started = false;

  const say = (text) => {
    status.textContent = text;
    status.classList.toggle("d-none", !text);
  };

  const loadBundle = () =>
    new Promise((resolve, reject) => {
      if (window.AsyncApiStandalone) return resolve();
      const script = document.createElement("script");
      script.src = root.dataset.bundle;
      script.onload = () => resolve();
      script.onerror = () => reject(new Error("the documentation viewer could not be loaded"));
      document.head.appendChild(script);
    });

  const loadDocument = async () => {
    const response = await fetch(root.dataset.documentUrl, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`the document could not be loaded (HTTP ${response.status})`);
    return response.json();
  };

  const render = async () => {
    if (started) return;
    started = true;
    if (onDemand) onDemand.classList.add("d-none");
    say("Loading the documentation…");
    try {
      const [schema] = await Promise.all([loadDocument(), loadBundle()]);
      window.AsyncApiStandalone.render({ schema, config }, target);
      say("");
      root.dataset.rendered = "true";
    } catch (error) {
      started = false;
      if (onDemand) onDemand.classList.remove("d-none");
      say(`Sorry, ${error.message}. Reload the page to try again.`);
    }
  };

  const maybeRender = () => {
    if (!onDemand) render();
  };
  root.querySelector("[data-asyncapi-render]")?.addEventListener("click", render);
  tab?.addEventListener("shown.bs.tab", () => {
    maybeRender();
    history.replaceState(null, "", "#documentation");
  });
  document.getElementById("channels-tab")?.addEventListener("shown.bs.tab", () => {
    history.replaceState(null, "", location.pathname + location.search);
  });
  // A shared link to the documentation (or a "#documentation" link on the page) opens it.
  const openFromHash = () => {
    if (location.hash === "#documentation" && tab && window.bootstrap) {
      window.bootstrap.Tab.getOrCreateInstance(tab).show();
      tab.scrollIntoView({ block: "start" });
    }
  };
  window.addEventListener("hashchange", openFromHash);
  openFromHash();
})();
