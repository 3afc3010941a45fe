// The header's model badge: while the model loads, ask /model/ready.json every two seconds and show
// its state (the server warms the model up at start; the first upload would otherwise wait for it).
(function () {
  "use strict";
  const badge = document.getElementById("model-status");
  if (!badge || badge.dataset.state !== "loading") return;
  const looks = {
    ready: ["Model ready", "text-bg-success", "The model is loaded."],
    unavailable: ["Model unavailable", "text-bg-danger", "The model could not load; images are kept as pending."],
    loading: ["Model loading…", "text-bg-warning", "The model is loading; the first image waits for it."],
    idle: ["Model idle", "text-bg-secondary", "The model loads with the first image."],
  };
  const timer = setInterval(async () => {
    try {
      const response = await fetch(badge.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const state = (await response.json()).state;
      const look = looks[state] || looks.idle;
      badge.dataset.state = state;
      badge.className = "badge " + look[1];
      badge.lastChild.textContent = " " + look[0];
      badge.title = look[2];
      if (state !== "loading") clearInterval(timer);
    } catch (err) { /* the next tick tries again */ }
  }, 2000);
})();
