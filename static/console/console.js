/* The operator console's behaviour, loaded on every admin page by
   templates/admin/base_site.html. A file, not inline script or on*="" attributes: the
   Content-Security-Policy allows neither. */
(function () {
  "use strict";

  // A graph's "Fit / actual size" button (also inside HTML the run page swaps in).
  document.addEventListener("click", function (event) {
    var button = event.target.closest(".console-fit");
    if (!button) return;
    button.closest(".console-dag").querySelector(".console-figure").classList.toggle("fit");
  });

  // The dashboard's project filter submits when it changes.
  document.addEventListener("change", function (event) {
    if (event.target.matches("select[data-autosubmit]")) event.target.form.submit();
  });

  // A run's page while the run is active: poll `live/` (204 until a new event), swap the
  // picture in, and reload once the run has finished or its approvals changed (unless the
  // operator is typing a comment).
  function followRun(box) {
    if (!box || box.dataset.finished === "1") return;
    var seq = box.dataset.seq, waiting = box.dataset.waiting;
    function typing() {
      return Array.prototype.some.call(
        document.querySelectorAll(".console-approval textarea"),
        function (t) { return t.value.trim() !== ""; });
    }
    function tick() {
      fetch(box.dataset.url + "?seq=" + encodeURIComponent(seq), {credentials: "same-origin"})
        .then(function (r) { return r.status === 200 ? r.json() : null; })
        .then(function (data) {
          if (data) {
            seq = String(data.seq);
            box.innerHTML = data.html;
            if (data.finished) {
              if (!typing()) window.location.reload();
              return;
            }
            if (data.waiting.join(",") !== waiting && !typing()) {
              window.location.reload();
              return;
            }
          }
          setTimeout(tick, 1000);
        })
        .catch(function () { setTimeout(tick, 3000); });
    }
    setTimeout(tick, 1000);
  }

  function start() { followRun(document.getElementById("run-live")); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
