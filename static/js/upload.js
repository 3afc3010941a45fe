// Upload page: drag and drop, then post the files one by one (JSON answers) with a progress bar.
// Without JavaScript the form posts every file at once and the server answers with a page.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = form.querySelector('input[type="file"]');
  const zone = document.getElementById("drop-zone");
  const summary = document.getElementById("file-summary");
  const panel = document.getElementById("upload-progress");
  const bar = document.getElementById("progress-bar");
  const text = document.getElementById("progress-text");
  const results = document.getElementById("upload-results");
  const historyLink = document.getElementById("progress-history");
  const submit = document.getElementById("upload-submit");
  const detailUrl = (id) => form.dataset.detailUrl.replace(/0\/$/, id + "/");

  function describe(files) {
    summary.textContent = files.length ? files.length + " file" + (files.length === 1 ? "" : "s") + " chosen" : "";
  }
  input.addEventListener("change", () => describe(input.files));

  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.add("drag-over");
  }));
  ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.remove("drag-over");
  }));
  zone.addEventListener("drop", (event) => {
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      describe(input.files);
    }
  });

  function addResult(file, ok, html) {
    const item = document.createElement("li");
    item.className = "list-group-item d-flex align-items-center gap-2 " + (ok ? "" : "list-group-item-danger");
    const name = document.createElement("span");
    name.className = "text-truncate me-auto";
    name.textContent = file.name;
    item.appendChild(name);
    item.appendChild(html);
    results.appendChild(item);
  }

  function setProgress(done, total) {
    const percent = Math.round((100 * done) / total);
    bar.style.width = percent + "%";
    bar.textContent = percent + "%";
    bar.parentElement.setAttribute("aria-valuenow", String(percent));
    text.textContent = "Uploaded " + done + " of " + total;
  }

  async function sendOne(file) {
    const data = new FormData();
    data.append("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
    data.append("accession", form.querySelector("[name=accession]").value);
    data.append(input.name, file, file.name);
    const response = await fetch(form.action || window.location.href, {
      method: "POST", body: data, headers: { Accept: "application/json" }, credentials: "same-origin",
    });
    let body = {};
    try { body = await response.json(); } catch (e) { body = { error: "The server answered " + response.status + "." }; }
    return { ok: response.ok, body: body };
  }

  form.addEventListener("submit", async (event) => {
    const files = Array.from(input.files || []);
    if (!files.length || !window.fetch || !window.FormData) return; // let the server say what is missing
    event.preventDefault();
    submit.disabled = true;
    panel.hidden = false;
    results.textContent = "";
    bar.classList.remove("bg-danger", "bg-warning", "bg-success");
    setProgress(0, files.length);
    const created = [];
    let failed = 0;
    for (let i = 0; i < files.length; i++) {
      let answer;
      try { answer = await sendOne(files[i]); } catch (e) { answer = { ok: false, body: { error: "Network error: " + e.message } }; }
      if (answer.ok) {
        created.push(answer.body);
        const link = document.createElement("a");
        link.href = answer.body.url;
        link.className = "upload-ok";
        link.textContent = "#" + answer.body.id + " " + (answer.body.status === "unidentified"
          ? "Unidentified (needs review" + (answer.body.top_guess ? "; top guess " + answer.body.top_guess + ", not trusted" : "") + ")"
          : (answer.body.label || answer.body.status));
        addResult(files[i], true, link);
      } else {
        failed += 1;
        const message = document.createElement("span");
        message.className = "upload-error small";
        message.textContent = answer.body.error || "Upload failed.";
        addResult(files[i], false, message);
      }
      setProgress(i + 1, files.length);
    }
    bar.classList.remove("progress-bar-animated", "progress-bar-striped");
    bar.classList.add(failed ? (created.length ? "bg-warning" : "bg-danger") : "bg-success");
    text.textContent = created.length + " classified" + (failed ? ", " + failed + " rejected (nothing stored for those)" : "");
    submit.disabled = false;
    input.value = "";
    describe([]);
    if (created.length === 1 && files.length === 1) {
      window.location.assign(detailUrl(created[0].id));
    } else {
      historyLink.hidden = created.length === 0;
    }
  });
})();
