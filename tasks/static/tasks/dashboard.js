// Keeps the index page's figures current by polling /api/stats.
// Rows are built with textContent only: worker and listener ids come from
// whoever runs a process, and must never be read as HTML.
(function () {
  "use strict";
  var section = document.getElementById("figures");
  if (!section || !window.fetch) return;
  var url = section.dataset.statsUrl;
  var PERIOD_MS = 3000;

  function cell(text, className) {
    var td = document.createElement("td");
    td.textContent = text === undefined || text === null ? "" : String(text);
    if (className) td.className = className;
    return td;
  }

  function fill(id, rows, columns, emptyText) {
    var body = document.getElementById(id);
    var fresh = document.createElement("tbody");
    fresh.id = id;
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      row.forEach(function (value, i) { tr.appendChild(cell(value, columns[i])); });
      fresh.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement("tr");
      var td = cell(emptyText, "empty");
      td.colSpan = columns.length;
      tr.appendChild(td);
      fresh.appendChild(tr);
    }
    body.replaceWith(fresh);
  }

  function entries(object) {
    return Object.keys(object || {}).map(function (key) { return [key, object[key]]; });
  }

  // Soonest first, paused last, five at most: as the server renders them.
  function nextFirings(schedules) {
    function key(s) { return (s.paused || !s.next_run ? "1" : "0") + (s.next_run || ""); }
    return schedules.slice().sort(function (a, b) { return key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0; }).slice(0, 5);
  }

  function render(status) {
    fill("queues", entries(status.queues).map(function (e) {
      var q = e[1];
      return [e[0], q.key, q.pending, q.in_flight, q.delayed, q.dead];
    }), ["", "", "num", "num", "num", "num"], "unknown");
    fill("workers", (status.workers || []).map(function (w) {
      return [w.id, (w.queues || []).join(", "), w.processed, w.last_seen];
    }), ["", "", "num", ""], "none running: start manage.py listen_queue");
    fill("listeners", (status.listeners || []).map(function (l) {
      return [l.id, (l.channels || []).join(", "), l.received, l.last_seen];
    }), ["", "", "num", ""], "none running: start manage.py listen_channel");
    fill("channels", entries(status.channels), ["", "num"], "unknown");
    fill("schedules", nextFirings(status.schedules || []).map(function (s) {
      return [s.name, s.task, s.cron, s.paused ? "paused" : s.next_run, s.last_run];
    }), ["", "", "", "", ""], "no schedules");
    fill("history", entries(status.history), ["", "num"], "");
    var warnings = document.getElementById("warnings");
    warnings.textContent = "";
    (status.warnings || []).forEach(function (text) {
      var p = document.createElement("p");
      p.className = "banner warning";
      p.textContent = text;
      warnings.appendChild(p);
    });
  }

  function poll() {
    if (document.hidden) return;
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        document.getElementById("redis-down").hidden = response.status !== 503;
        return response.ok ? response.json().then(render) : null;
      })
      .catch(function () { /* the site itself is unreachable: keep the last figures */ });
  }

  setInterval(poll, PERIOD_MS);
})();
