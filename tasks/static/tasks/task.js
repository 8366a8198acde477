// Keeps a task's status current without reloading: polls the page's JSON
// (/tasks/<id>/status) while the task is unfinished; once it is final,
// fetches the page once more and swaps in its details (attempts, result),
// which the server renders. Text only goes in through textContent.
// Also drives the trigger pages' lists of new tasks (li[data-task-id]).
(function () {
  "use strict";
  if (!window.fetch) return;

  function poll(url, period, onStatus) {
    function once() {
      fetch(url, { headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (status) {
          if (status && onStatus(status)) return;  // final: stop
          setTimeout(once, period);
        })
        .catch(function () { setTimeout(once, period * 2); });
    }
    setTimeout(once, period);
  }

  function showStatus(el, status) {
    el.dataset.status = status.status;
    el.className = el.className.replace(/status-\w+/, "status-" + status.status.toLowerCase());
    el.textContent = status.label;
  }

  var live = document.getElementById("task-live");
  if (live && !live.hasAttribute("data-final")) {
    var badge = document.getElementById("task-status");
    poll(live.dataset.statusUrl, Number(live.dataset.pollMs) || 1500, function (status) {
      showStatus(badge, status);
      var p = status.progress;
      if (p) {
        document.getElementById("task-progress").hidden = false;
        var bar = document.getElementById("task-progress-bar");
        bar.max = p.total || 1;
        bar.value = p.done || 0;
        document.getElementById("task-progress-text").textContent =
          (p.total ? p.done + " / " + p.total : String(p.done)) + (p.text ? " — " + p.text : "");
      }
      if (!status.final) return false;
      var hint = document.getElementById("task-live-hint");
      if (hint) hint.remove();
      fetch(location.href, { cache: "no-store", credentials: "same-origin" })
        .then(function (response) { return response.text(); })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("task-details");
          if (fresh) document.getElementById("task-details").replaceWith(fresh);
          if (window.mqsiteAges) window.mqsiteAges.refresh();
        });
      return true;
    });
  }

  document.querySelectorAll("li[data-task-id] [data-task-status]").forEach(function (el) {
    var url = el.closest("li").dataset.statusUrl;
    if (!url || el.hasAttribute("data-final")) return;
    poll(url, 1500, function (status) {
      el.dataset.taskStatus = status.status;
      el.className = "status status-" + status.status.toLowerCase();
      el.textContent = status.label;
      return status.final;
    });
  });
})();
