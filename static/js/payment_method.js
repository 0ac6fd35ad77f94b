// The payment method page (templates/billing/payment_method.html): Stripe.js collects the card,
// so its number never reaches Eventgate. On submit: ask the REST API for a SetupIntent, confirm
// it with the card element (Stripe.js confirmCardSetup), then post the PaymentMethod id to the
// page, which attaches it to the billing account's Stripe customer (billing.payments).
(() => {
  const form = document.getElementById("payment-method-form");
  if (!form) return;
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
