// The specimen review page (templates/classifier/review/gallery.html): a gallery grouped by class.
//
// Select: click one, Ctrl/Cmd-click to add or remove, Shift-click (or Shift+arrows) for a range,
// Space toggles the focused cell. Act: a class's key (from the cell-class table), a palette chip, or
// dropping the cells on a class reclassifies the selection; Enter accepts the model's class for it;
// Shift+Enter or a section's button accepts the rest of that class. Z zooms, Esc clears.
//
// Every change is one POST of {"cells": {id: review_version}, "label": code or null} to the
// specimen's cells.json; the answer moves the tiles and brings the differential (as the server drew
// it) and the progress, so the page never reloads. A cell another reviewer changed first answers 409:
// nothing is changed, the page re-reads every cell and says so.
(function () {
  "use strict";
  const app = document.getElementById("review-app");
  if (!app) return;
  const classTable = JSON.parse(document.getElementById("class-table").textContent);
  const byCode = {};
  const byKey = {};
  classTable.forEach((c) => { byCode[c.code] = c; byKey[c.key] = c; });
  const csrf = app.querySelector("input[name=csrfmiddlewaretoken]").value;
  const gallery = document.getElementById("gallery");
  const errorBox = document.getElementById("review-error");
  const statusBox = document.getElementById("review-status");
  const selected = new Set();
  let focused = null;
  let anchor = null;
  let busy = false;
  // The specimen check raised the alarm (data-bulk-accept="off"): the model's class is accepted one
  // cell at a time; the server refuses more (code specimen_check).
  const bulkAcceptOff = app.dataset.bulkAccept === "off";
  const ONE_AT_A_TIME = "Specimen check: review every cell one by one; accepting cells in bulk is off for this specimen.";

  const tiles = () => Array.from(gallery.querySelectorAll(".cell-tile"));
  const tileById = (id) => gallery.querySelector('.cell-tile[data-id="' + id + '"]');
  const sectionOf = (group) => gallery.querySelector('.gallery-section[data-group="' + group + '"]');
  const name = (code) => (byCode[code] ? byCode[code].name : code);

  function paint() {
    tiles().forEach((t) => {
      const on = selected.has(t);
      t.classList.toggle("selected", on);
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.classList.toggle("focused", t === focused);
    });
  }

  function focusTile(tile, scroll) {
    focused = tile;
    if (tile) {
      tile.focus({ preventScroll: true });
      if (scroll !== false) tile.scrollIntoView({ block: "nearest" });
      showJudge(tile);
    }
    paint();
  }

  function range(a, b) {
    const list = tiles();
    const i = list.indexOf(a);
    const j = list.indexOf(b);
    if (i < 0 || j < 0) return [b];
    return list.slice(Math.min(i, j), Math.max(i, j) + 1);
  }

  function pick(tile, how) {
    if (how === "range" && anchor) {
      selected.clear();
      range(anchor, tile).forEach((t) => selected.add(t));
    } else if (how === "toggle") {
      if (selected.has(tile)) selected.delete(tile); else selected.add(tile);
      anchor = tile;
    } else {
      selected.clear();
      selected.add(tile);
      anchor = tile;
    }
    focusTile(tile);
  }

  // The cells an action applies to: the selection, else the focused cell.
  function targets() {
    if (selected.size) return Array.from(selected);
    return focused ? [focused] : [];
  }

  // ---- the cell being judged, its reference cells, zoom ----
  function topClasses(tile) {
    return (tile.dataset.top || "").split(",").filter(Boolean).map((item) => {
      const [code, permille] = item.split(":");
      return { code: code, percent: Number(permille) / 10 };
    });
  }

  function showJudge(tile) {
    document.getElementById("judge-id").textContent = "#" + tile.dataset.id;
    document.getElementById("judge-open").href = tile.dataset.detail;
    const image = document.getElementById("judge-image");
    image.src = tile.dataset.image;
    const top = topClasses(tile);
    const group = tile.closest(".gallery-section").dataset.group;
    const model = document.getElementById("judge-model");
    const first = top[0];
    let text;
    if (tile.dataset.status === "unidentified") {
      text = "Model: unidentified" + (first ? " (top guess " + name(first.code) + " " + first.percent + " %, not trusted)" : "");
    } else if (tile.dataset.status === "pending") {
      text = "Model: not run yet";
    } else {
      text = "Model: " + name(tile.dataset.predicted) + (first ? " " + first.percent + " % (calibrated)" : "");
    }
    const state = tile.dataset.state;
    text += " · now " + (byCode[group] ? name(group) : "no class") + " (" + state + ")";
    model.textContent = text;
    document.getElementById("judge-flag").textContent = tile.dataset.flag || "";
    // Reference cells: the class it has now and the model's candidates.
    const candidates = [];
    if (byCode[group]) candidates.push(group);
    top.forEach((t) => { if (byCode[t.code] && !candidates.includes(t.code)) candidates.push(t.code); });
    const box = document.getElementById("reference-cells");
    box.replaceChildren();
    candidates.slice(0, 3).forEach((code) => {
      const row = document.createElement("div");
      row.className = "reference-row mb-1";
      row.dataset.class = code;
      const label = document.createElement("div");
      label.className = "fw-semibold";
      label.textContent = name(code);
      row.appendChild(label);
      const refs = byCode[code].references;
      if (refs.length) {
        refs.forEach((url) => {
          const img = document.createElement("img");
          img.src = url;
          img.width = 88;
          img.height = 88;
          img.alt = "Reference " + name(code);
          img.className = "reference-img";
          row.appendChild(img);
        });
      } else {
        const none = document.createElement("div");
        none.className = "reference-none";
        none.textContent = "No reference image for " + name(code) + " (none licensed here).";
        row.appendChild(none);
      }
      box.appendChild(row);
    });
  }

  const overlay = document.getElementById("zoom-overlay");
  const zoomButton = document.getElementById("zoom-button");
  function zoom(on) {
    const show = on === undefined ? overlay.hidden : on;
    if (show && !focused) return;
    if (show) document.getElementById("zoom-image").src = focused.dataset.image;
    overlay.hidden = !show;
    zoomButton.setAttribute("aria-pressed", show ? "true" : "false");
  }
  zoomButton.addEventListener("click", () => zoom());
  document.getElementById("judge-image").addEventListener("click", () => zoom(true));
  overlay.addEventListener("click", () => zoom(false));

  // ---- talking to the server ----
  function say(message, isError) {
    if (isError) {
      errorBox.textContent = message;
      errorBox.classList.remove("d-none");
    } else {
      errorBox.classList.add("d-none");
    }
    statusBox.textContent = message;
  }

  async function send(cells, label) {
    if (busy || !cells.length) return;
    busy = true;
    const body = { cells: {}, label: label || null };
    cells.forEach((t) => { body.cells[t.dataset.id] = t.dataset.version; });
    const list = tiles();
    const after = list.slice(list.indexOf(focused) + 1).find((t) => !cells.includes(t)) ||
      list.slice(0, list.indexOf(focused)).reverse().find((t) => !cells.includes(t)) || null;
    try {
      const response = await fetch(app.dataset.cellsUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: "application/json" },
        credentials: "same-origin",
        body: JSON.stringify(body),
      });
      const data = await response.json();
      if (!response.ok) {
        say(data.error || "The change was refused.", true);
        if (response.status === 409) await refresh();
        return;
      }
      apply(data);
      const moved = cells.length + (cells.length === 1 ? " cell " : " cells ");
      say(moved + (label ? "reclassified as " + name(label) : "accepted") + ".", false);
      selected.clear();
      anchor = null;
      focusTile(after && after.isConnected ? after : focused);
    } catch (err) {
      say("The server could not be reached; nothing was changed (" + err + ").", true);
    } finally {
      busy = false;
    }
  }

  async function refresh() {
    const response = await fetch(app.dataset.stateUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (response.ok) apply(await response.json());
  }

  function place(tile, group) {
    const section = sectionOf(group);
    if (!section) return;
    const grid = section.querySelector(".gallery-grid");
    const id = Number(tile.dataset.id);
    const before = Array.from(grid.children).find((t) => Number(t.dataset.id) > id);
    if (tile.parentElement !== grid || tile.nextElementSibling !== before) grid.insertBefore(tile, before || null);
  }

  function apply(data) {
    data.cells.forEach((cell) => {
      const tile = tileById(cell.id);
      if (!tile) return;
      tile.dataset.version = cell.version;
      tile.dataset.state = cell.review_state;
      tile.dataset.status = cell.status;
      tile.className = tile.className.replace(/\bstate-tile-\S+/, "state-tile-" + cell.review_state);
      const mark = tile.querySelector(".tile-state");
      mark.title = cell.review_state_name;
      mark.replaceChildren();
      if (cell.review_state !== "unreviewed") {
        const icon = document.createElement("i");
        icon.className = "bi bi-check-circle-fill text-success";
        mark.appendChild(icon);
      }
      place(tile, cell.group);
    });
    gallery.querySelectorAll(".gallery-section").forEach((section) => {
      const members = section.querySelectorAll(".cell-tile");
      section.hidden = members.length === 0;
      section.querySelector(".group-count").textContent = members.length;
      const rest = section.querySelector(".rest-count");
      if (rest) {
        const n = section.querySelectorAll('.cell-tile[data-state="unreviewed"]').length;
        rest.textContent = n;
        section.querySelector(".accept-rest").disabled = n === 0;
      }
    });
    document.getElementById("differential-box").innerHTML = data.differential_html; // drawn by Django
    const percent = data.total ? Math.round((100 * data.reviewed) / data.total) : 0;
    document.getElementById("progress-bar").style.width = percent + "%";
    document.getElementById("progress-bar").parentElement.setAttribute("aria-valuenow", data.reviewed);
    document.getElementById("progress-text").textContent = data.reviewed + " of " + data.total + " reviewed";
    const sign = document.getElementById("sign-button");
    const ready = data.differential.ready_to_sign;
    sign.classList.toggle("disabled", !ready);
    sign.setAttribute("aria-disabled", ready ? "false" : "true");
    if (focused && focused.isConnected) showJudge(focused);
  }

  function accept(cells) {
    if (bulkAcceptOff && cells.length > 1) {
      say(ONE_AT_A_TIME, true);
      return;
    }
    send(cells, null);
  }

  function acceptRest(group) {
    const section = sectionOf(group);
    if (!section) return;
    accept(Array.from(section.querySelectorAll('.cell-tile[data-state="unreviewed"]')));
  }

  // ---- mouse ----
  gallery.addEventListener("click", (event) => {
    const tile = event.target.closest(".cell-tile");
    if (tile) {
      pick(tile, event.shiftKey ? "range" : event.ctrlKey || event.metaKey ? "toggle" : "one");
      return;
    }
    const accept = event.target.closest("[data-accept]");
    if (accept) acceptRest(accept.dataset.accept);
  });
  document.getElementById("class-palette").addEventListener("click", (event) => {
    const chip = event.target.closest("[data-drop]");
    if (chip) send(targets(), chip.dataset.drop);
  });

  // ---- drag and drop onto a class section or a palette chip ----
  gallery.addEventListener("dragstart", (event) => {
    const tile = event.target.closest(".cell-tile");
    if (!tile) return;
    if (!selected.has(tile)) {
      selected.clear();
      selected.add(tile);
      anchor = tile;
      focused = tile;
      paint();
    }
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", targets().map((t) => t.dataset.id).join(","));
  });
  function dropTarget(event) {
    const target = event.target.closest("[data-drop]");
    return target && target.dataset.drop ? target : null;
  }
  document.addEventListener("dragover", (event) => {
    const target = dropTarget(event);
    if (!target) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    target.classList.add("drag-over");
  });
  document.addEventListener("dragleave", (event) => {
    const target = dropTarget(event);
    if (target) target.classList.remove("drag-over");
  });
  document.addEventListener("drop", (event) => {
    const target = dropTarget(event);
    if (!target) return;
    event.preventDefault();
    target.classList.remove("drag-over");
    send(targets(), target.dataset.drop);
  });

  // ---- keys ----
  function vertical(direction) {
    const here = focused.getBoundingClientRect();
    let rows = tiles().filter((t) => {
      const box = t.getBoundingClientRect();
      return direction > 0 ? box.top > here.top + 4 : box.top < here.top - 4;
    });
    if (!rows.length) return null;
    const tops = rows.map((t) => t.getBoundingClientRect().top);
    const row = direction > 0 ? Math.min(...tops) : Math.max(...tops);
    rows = rows.filter((t) => Math.abs(t.getBoundingClientRect().top - row) < 4);
    const dist = (t) => Math.abs(t.getBoundingClientRect().left - here.left);
    return rows.reduce((best, t) => (dist(t) < dist(best) ? t : best));
  }

  function step(key) {
    const list = tiles();
    const at = list.indexOf(focused);
    if (key === "ArrowRight" || key === "j") return list[Math.min(at + 1, list.length - 1)];
    if (key === "ArrowLeft" || key === "k") return list[Math.max(at - 1, 0)];
    return vertical(key === "ArrowDown" ? 1 : -1);
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const key = event.key;
    let handled = true;
    if (["ArrowRight", "ArrowLeft", "ArrowDown", "ArrowUp", "j", "k"].includes(key)) {
      if (!focused) { const first = tiles()[0]; if (first) focusTile(first); }
      else {
        const next = step(key);
        if (next) {
          if (event.shiftKey) {
            if (!anchor) anchor = focused;
            selected.clear();
            range(anchor, next).forEach((t) => selected.add(t));
            focusTile(next);
          } else {
            pick(next, "one");
          }
        }
      }
    } else if (key === " ") {
      if (focused) pick(focused, "toggle");
    } else if (key === "Enter") {
      if (target && ["BUTTON", "A"].includes(target.tagName)) return;
      if (event.shiftKey) {
        if (focused) acceptRest(focused.closest(".gallery-section").dataset.group);
      } else {
        accept(targets());
      }
    } else if (key === "Escape") {
      zoom(false);
      selected.clear();
      anchor = null;
      paint();
    } else if (key === "z" || key === "Z") {
      zoom();
    } else if (/^[0-9a-z]$/i.test(key) && byKey[key.toLowerCase()]) {
      send(targets(), byKey[key.toLowerCase()].code);
    } else {
      handled = false;
    }
    if (handled) event.preventDefault();
  });

  // ---- start: the accept-rest counts, the first cell (unidentified ones come first) in the panel ----
  apply({
    cells: [],
    differential_html: document.getElementById("differential-box").innerHTML,
    differential: { ready_to_sign: !document.getElementById("sign-button").classList.contains("disabled") },
    reviewed: Number(document.getElementById("progress-bar").parentElement.getAttribute("aria-valuenow")),
    total: Number(document.getElementById("progress-bar").parentElement.getAttribute("aria-valuemax")),
  });
  const first = tiles()[0];
  if (first) focusTile(first, false);
})();
