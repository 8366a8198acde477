// Keeps the index current: every few seconds it fetches the page itself and
// swaps in the server-rendered parts (charts, running tasks, dead letters,
// the figures), so the page reads the same with JavaScript off, only frozen.
// Nothing is built from strings here: the server escaped what it rendered.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch || !window.DOMParser) return;
  var PERIOD_MS = Number(live.dataset.refreshMs) || 5000;
  var PARTS = ["live", "figures"];

  function poll() {
    if (document.hidden) return;
    // A form being used (a re-enqueue button focused) is not swapped away under the user.
    if (document.activeElement && live.contains(document.activeElement) && document.activeElement.tagName === "BUTTON") return;
    fetch(location.pathname, { headers: { Accept: "text/html" }, cache: "no-store", credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        PARTS.forEach(function (id) {
          var now = document.getElementById(id), next = fresh.getElementById(id);
          if (now && next) now.replaceWith(document.importNode(next, true));
        });
        if (window.mqsiteAges) window.mqsiteAges.refresh();
      })
      .catch(function () { /* the site itself is unreachable: keep the last figures */ });
  }

  setInterval(poll, PERIOD_MS);
})();
