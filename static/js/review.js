// Review keyboard shortcuts: arrows or j/k pick a cell, 1-4 set its class, Enter confirms
// the model's class, S signs, O opens. Every key just clicks a normal form button.
(function () {
  "use strict";
  const items = Array.from(document.querySelectorAll("[data-review-item]"));
  if (!items.length) return;
  let current = Math.max(0, items.findIndex((item) => item.classList.contains("selected")));

  function select(index) {
    items.forEach((item) => item.classList.remove("selected"));
    current = Math.min(Math.max(index, 0), items.length - 1);
    items[current].classList.add("selected");
    items[current].scrollIntoView({ block: "nearest" });
  }

  function press(selector) {
    const button = items[current].querySelector(selector);
    if (button && !button.disabled) {
      button.click();
      return true;
    }
    return false;
  }

  items.forEach((item, index) => item.addEventListener("click", () => select(index)));

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const key = event.key;
    let handled = false;
    if (key === "ArrowDown" || key === "j") { select(current + 1); handled = true; }
    else if (key === "ArrowUp" || key === "k") { select(current - 1); handled = true; }
    else if (/^[1-4]$/.test(key)) handled = press('[data-key="' + key + '"]');
    else if (key === "Enter" && !(target && ["BUTTON", "A"].includes(target.tagName))) handled = press("[data-confirm]");
    else if (key === "s" || key === "S") handled = press("[data-sign]");
    else if (key === "o" || key === "O") handled = press("[data-open]");
    if (handled) event.preventDefault();
  });
})();
