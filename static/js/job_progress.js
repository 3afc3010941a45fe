// Batch job page: poll the job's JSON status and update the progress bar and the file rows.
// Loaded as a static file (the Content-Security-Policy forbids inline script).
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root || root.dataset.finished === "true") { return; }
  var url = root.dataset.statusUrl;
  var bar = document.getElementById("job-progress-bar");
  var counts = document.getElementById("job-counts");
  var stateBadge = document.getElementById("job-state");

  function update(job) {
    bar.style.width = job.percent + "%";
    bar.textContent = job.processed + " / " + job.total;
    document.getElementById("job-progress").setAttribute("aria-valuenow", job.percent);
    counts.textContent = job.counts.done + " done · " + job.counts.failed + " failed · " +
      job.counts.skipped + " skipped · " + job.counts.pending + " waiting";
    stateBadge.textContent = job.state.replace(/_/g, " ");
    job.items.forEach(function (item) {
      var row = root.querySelector('[data-position="' + item.position + '"]');
      if (!row) { return; }
      var state = row.classList.contains("item-state") ? row : row.querySelector(".item-state");
      if (state) { state.textContent = item.state; }
      var result = row.querySelector ? row.querySelector(".item-result") : null;
      if (result && !result.textContent.trim()) {
        result.textContent = item.error || item.label || item.status || "";
        if (item.error) { result.className = "item-result text-danger"; }
      }
    });
  }

  function poll() {
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : Promise.reject(response.status); })
      .then(function (job) {
        update(job);
        if (job.finished) { window.location.reload(); } else { window.setTimeout(poll, 1500); }
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 1000);
}());
