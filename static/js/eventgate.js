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
