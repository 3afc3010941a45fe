// Review keyboard shortcuts: arrows or j/k pick a cell, a class's key (data-key, from the cell-class
// table: 1-8, 9, 0 and a few letters) sets its class, Enter confirms the model's class, O opens.
// Every key just clicks a normal form button. Cells are never signed one by one (the specimen is).
// After an action the page comes back as #cell-<id> of the card that followed: that one is selected.
// The keys act on the selected card (aria-current="true"); clicking a card or moving the
// focus into it (Tab) selects it, so a key never acts on a cell other than the one in focus.
(function () {
  "use strict";
  const items = Array.from(document.querySelectorAll("[data-review-item]"));
  if (!items.length) return;
  const hash = typeof location === "undefined" ? "" : location.hash;
  const wanted = hash.startsWith("#cell-") ? items.findIndex((item) => "#" + item.id === hash) : -1;
  let current = wanted >= 0 ? wanted : Math.max(0, items.findIndex((item) => item.classList.contains("selected")));

  function select(index, scroll) {
    current = Math.min(Math.max(index, 0), items.length - 1);
    items.forEach((item, i) => {
      if (i === current) {
        item.classList.add("selected");
        item.setAttribute("aria-current", "true");
      } else {
        item.classList.remove("selected");
        item.removeAttribute("aria-current");
      }
    });
    if (scroll !== false) items[current].scrollIntoView({ block: "nearest" });
  }

  function move(delta) {
    // Arrow keys move the focus with the selection, so the two never disagree.
    select(current + delta);
    if (items[current].hasAttribute("tabindex")) items[current].focus({ preventScroll: true });
  }

  function owner(node) {
    // The card holding node (the focused element), or -1.
    const card = node && node.closest ? node.closest("[data-review-item]") : null;
    return card ? items.indexOf(card) : -1;
  }

  function press(selector) {
    const button = items[current].querySelector(selector);
    if (button && !button.disabled) {
      button.click();
      return true;
    }
    return false;
  }

  select(current, wanted >= 0);
  items.forEach((item, index) => {
    item.addEventListener("click", () => select(index));
    // Tabbing into a card's link or buttons makes it the card the keys act on.
    item.addEventListener("focusin", () => { if (index !== current) select(index, false); });
  });

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    // Belt and braces: the focus decides the card even if no focusin was seen (focus set before load).
    const focused = owner(target);
    if (focused >= 0 && focused !== current) select(focused, false);
    const key = event.key;
    let handled = false;
    if (key === "ArrowDown" || key === "j") { move(1); handled = true; }
    else if (key === "ArrowUp" || key === "k") { move(-1); handled = true; }
    else if (key === "Enter" && !(target && ["BUTTON", "A"].includes(target.tagName))) handled = press("[data-confirm]");
    else if (key === "o" || key === "O") handled = press("[data-open]");
    else if (/^[0-9a-z]$/i.test(key)) handled = press('[data-key="' + key.toLowerCase() + '"]');
    if (handled) event.preventDefault();
  });
})();
