// Dashboard chart: results per predicted class. Data comes from a json_script tag (CSP: no inline script).
(function () {
  "use strict";
  const source = document.getElementById("class-chart-data");
  const canvas = document.getElementById("class-chart");
  if (!source || !canvas || !window.Chart) return;
  const data = JSON.parse(source.textContent);
  new window.Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [{
        label: "Results",
        data: data.counts,
        backgroundColor: data.colours,  // the cell-class table's colours
      }],
    },
    options: {
      responsive: true,
      animation: false,
      plugins: { legend: { display: false } },
      scales: { y: { beginAtZero: true, ticks: { precision: 0 } } },
    },
  });
})();
