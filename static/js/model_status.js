// The header's model badge: while the model loads, ask /model/ready.json every two seconds and show
// its state (the server warms the model up at start; the first upload would otherwise wait for it).
(function () {
  "use strict";
  const badge = document.getElementById("model-status");
  if (!badge || badge.dataset.state !== "loading") return;
  const looks = {
    ready: ["Model ready", "text-bg-success"],
    unavailable: ["Model unavailable: images are kept as pending", "text-bg-danger"],
    loading: ["Model loading…", "text-bg-warning"],
    idle: ["Model loads with the first image", "text-bg-secondary"],
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
      if (state !== "loading") clearInterval(timer);
    } catch (err) { /* the next tick tries again */ }
  }, 2000);
})();
