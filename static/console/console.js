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
  // operator is typing a comment). The run's event stream (`stream/`) takes over while it is
  // open: a stored event on it refreshes the picture at once (the poll then only runs every
  // 30 s, in case something between buffers the stream), and each running agent step's model
  // text shows as it streams (`llm.delta`). Without a stream (no EventSource, a 404 or 429)
  // the page polls every second as before.
  var STORED = ["run.status", "step.status", "llm.call", "tool.call", "approval.requested",
                "approval.decided", "policy.decision", "log"];
  var FINAL = ["succeeded", "failed", "skipped", "cancelled"];
  var POLL = 1000, POLL_STREAMING = 30000;

  function followRun(box) {
    if (!box || box.dataset.finished === "1") return;
    var seq = box.dataset.seq, waiting = box.dataset.waiting;
    var text = liveText(box, document.getElementById("run-deltas"));
    var source = null, timer = null, busy = false, again = false;
    function typing() {
      return Array.prototype.some.call(
        document.querySelectorAll(".console-approval textarea"),
        function (t) { return t.value.trim() !== ""; });
    }
    function streaming() { return source !== null && source.readyState === 1; }
    function schedule(ms) {
      clearTimeout(timer);
      timer = setTimeout(refresh, ms);
    }
    function stop() {
      if (source) source.close();
      source = null;
      text.state("off");
    }
    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      clearTimeout(timer);
      fetch(box.dataset.url + "?seq=" + encodeURIComponent(seq), {credentials: "same-origin"})
        .then(function (r) { return r.status === 200 ? r.json() : null; })
        .then(function (data) {
          busy = false;
          if (data) {
            seq = String(data.seq);
            box.innerHTML = data.html;
            text.prune();
            if (data.finished) {
              stop();
              if (!typing()) window.location.reload();
              return;
            }
            if (data.waiting.join(",") !== waiting && !typing()) {
              stop();
              window.location.reload();
              return;
            }
          }
          if (again) { again = false; schedule(0); }
          else schedule(streaming() ? POLL_STREAMING : POLL);
        })
        .catch(function () { busy = false; schedule(3000); });
    }
    function listen() {
      if (!box.dataset.stream || typeof window.EventSource !== "function") return;
      try {
        source = new EventSource(box.dataset.stream + "?after=" + encodeURIComponent(seq));
      } catch (e) {
        source = null;
        return;
      }
      text.state("connecting");
      source.addEventListener("open", function () {
        text.state("open");
        if (!busy) schedule(POLL_STREAMING);
      });
      source.addEventListener("error", function () {
        if (source && source.readyState === 2) stop();  // refused (404, 429): poll alone
        else text.state("connecting");  // dropped or its lifetime over: it reconnects
        if (!busy) schedule(POLL);
      });
      source.addEventListener("llm.delta", function (event) {
        try { text.add(JSON.parse(event.data)); } catch (e) { /* a piece is a courtesy */ }
      });
      STORED.forEach(function (type) {
        source.addEventListener(type, function (event) {
          if (Number(event.lastEventId) > Number(seq)) refresh();
        });
      });
      source.addEventListener("end", function () {
        stop();
        refresh();
      });
    }
    listen();
    schedule(POLL);
  }

  // The panels of model text in `holder`, one per running agent step (map items each have
  // their own), built with textContent only: the text is the model's, never markup. A new
  // model call of the step (the next iteration or attempt) starts its panel afresh; a panel
  // goes once the picture in `box` shows its node finished or not running (its output stored).
  function liveText(box, holder) {
    var panels = {};
    function nodeStatus(nodeId) {
      var node = Array.prototype.find.call(
        box.querySelectorAll("svg.sparkops-dag g.node"),
        function (g) { return g.getAttribute("data-node") === nodeId; });
      return node ? node.getAttribute("data-status") : null;
    }
    function panelFor(piece) {
      var key = String(piece.step), panel = panels[key];
      if (!panel) {
        var el = document.createElement("div");
        el.className = "console-delta";
        el.setAttribute("data-node", String(piece.node_id));
        el.setAttribute("data-step", key);
        var note = document.createElement("div");
        note.className = "console-note";
        var pre = document.createElement("pre");
        pre.className = "console-delta-text";
        var body = document.createTextNode("");
        pre.appendChild(body);
        el.appendChild(note);
        el.appendChild(pre);
        holder.appendChild(el);
        panel = panels[key] = {el: el, note: note, pre: pre, body: body, call: null};
      }
      return panel;
    }
    return {
      state: function (value) { if (holder) holder.setAttribute("data-state", value); },
      add: function (piece) {
        if (!holder || FINAL.indexOf(nodeStatus(String(piece.node_id))) !== -1) return;
        var panel = panelFor(piece), call = piece.attempt + "/" + piece.iteration;
        if (panel.call !== call) {
          panel.call = call;
          panel.body.data = "";
          panel.note.textContent = "Step " + piece.node_id + ": the model is writing (call " +
            piece.iteration + ", attempt " + piece.attempt + ")";
        }
        panel.body.appendData(String(piece.text));
        panel.pre.scrollTop = panel.pre.scrollHeight;
      },
      prune: function () {
        Object.keys(panels).forEach(function (key) {
          var panel = panels[key];
          if (nodeStatus(panel.el.getAttribute("data-node")) !== "running") {
            panel.el.remove();
            delete panels[key];
          }
        });
      }
    };
  }

  function start() { followRun(document.getElementById("run-live")); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
