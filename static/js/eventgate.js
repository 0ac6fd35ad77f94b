// Copy buttons: <button data-copy-target="#id"> copies the text of the element #id.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copyTarget);
  if (!source) return;
  const text = (source.value ?? source.textContent).trim();
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Clipboard API needs a secure context; fall back to selecting the text for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    document.execCommand("copy");
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1500);
});

// Subscribe form: show the "new application name" field only when "New application" is chosen.
document.querySelectorAll("[data-new-application]").forEach((select) => {
  const target = document.querySelector(select.dataset.newApplication);
  const sync = () => target.classList.toggle("d-none", select.value !== "new");
  select.addEventListener("change", sync);
  sync();
});

// A form sent back with errors: bring the first field in error into view and focus it, so a
// long form (a business plan's) never looks as if nothing happened.
(() => {
  const invalid = document.querySelector("form .invalid-feedback, form .is-invalid");
  if (!invalid) return;
  const group = invalid.closest(".mb-3, .col, fieldset, div") || invalid;
  group.scrollIntoView({ block: "center" });
  const input = group.querySelector("input, select, textarea");
  if (input) input.focus({ preventScroll: true });
})();
