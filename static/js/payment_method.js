// The payment method page (templates/billing/payment_method.html): Stripe.js collects the card,
// so its number never reaches Eventgate. On submit: ask the REST API for a SetupIntent, confirm
// it with the card element (Stripe.js confirmCardSetup), then post the PaymentMethod id to the
// page, which attaches it to the billing account's Stripe customer (billing.payments).
//
// Stripe.js proper is an ordinary <script> in the page (Stripe's rule). A stand-in (localstripe's,
// under `make run` and in the tests: data-stripe-js-url on the form) is fetched and evaluated inside
// a function scope instead: it declares a top-level `class Element`, which as an ordinary script
// would shadow the DOM's `Element` for every script of the page (Bootstrap's collapse calls
// Element.prototype.matches, so the navbar toggler stopped opening).
const loadIsolatedStripeJs = async (url) => {
  const response = await fetch(url, { credentials: "omit" });
  if (!response.ok) throw new Error(`Stripe.js stand-in: HTTP ${response.status}`);
  const source = await response.text();
  const script = document.createElement("script");
  // The stand-in finds its server from document.currentScript.src.
  Object.defineProperty(script, "src", { value: url });
  script.textContent = `(function () {\n${source}\n})();`;
  document.head.appendChild(script); // an inline script runs at once, as document.currentScript
  script.remove();
};

(async () => {
  const form = document.getElementById("payment-method-form");
  if (!form) return;
  if (form.dataset.stripeJsUrl) {
    try {
      await loadIsolatedStripeJs(form.dataset.stripeJsUrl);
    } catch (error) {
      console.warn(error);
    }
  }
  const errors = document.getElementById("card-errors");
  const button = form.querySelector("button[type=submit]");
  const showError = (message) => {
    errors.textContent = message;
    button.disabled = false;
    button.textContent = button.dataset.label;
  };
  if (typeof window.Stripe !== "function") {
    button.disabled = true;
    errors.textContent = "Stripe.js could not be loaded, so cards cannot be added right now. Reload the page to try again.";
    return;
  }

  const stripe = window.Stripe(form.dataset.publishableKey);
  const card = stripe.elements().create("card", { hidePostalCode: true });
  card.mount("#card-element");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;

  form.addEventListener("submit", async (event) => {
    if (form.elements.payment_method.value) return; // confirmed by Stripe: post it
    event.preventDefault();
    button.disabled = true;
    button.textContent = "Saving…";
    errors.textContent = "";
    try {
      const response = await fetch(form.dataset.setupIntentUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
        body: JSON.stringify({ setup_intent: true }),
      });
      const intent = await response.json().catch(() => ({}));
      if (!response.ok) {
        showError(intent.detail || "The card could not be saved right now; try again in a minute.");
        return;
      }
      const result = await stripe.confirmCardSetup(intent.client_secret, {
        payment_method: { card, billing_details: { email: form.dataset.email } },
      });
      if (result.error) {
        showError(result.error.message || "The card could not be saved. Check its number, expiry and CVC.");
        return;
      }
      form.elements.payment_method.value = result.setupIntent.payment_method;
      form.submit();
    } catch (error) {
      showError("The card could not be saved. Check its number, expiry and CVC.");
    }
  });
})();
