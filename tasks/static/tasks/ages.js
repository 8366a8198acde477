// Recounts every <time datetime> age on the page once a second, with the
// wording the server used (data-ago-* on <body>). The exact time stays in
// the title, shown on hover.
(function () {
  "use strict";
  var formats = document.body.dataset;

  function text(moment, now) {
    var seconds = (now - moment) / 1000;
    var direction = seconds >= 0 ? "Ago" : "In";
    seconds = Math.abs(seconds);
    var unit = "S", n = Math.floor(seconds);
    if (seconds >= 7200) { unit = "H"; n = Math.floor(seconds / 3600); }
    else if (seconds >= 120) { unit = "Min"; n = Math.floor(seconds / 60); }
    var format = formats["ago" + unit + direction];
    return format ? format.replace("%(n)s", String(n)) : null;
  }

  function refresh() {
    var now = Date.now();
    document.querySelectorAll("time[datetime][title]").forEach(function (el) {
      var moment = Date.parse(el.getAttribute("datetime"));
      if (isNaN(moment)) return;
      var words = text(moment, now);
      if (words) el.textContent = words;
    });
  }

  window.mqsiteAges = { refresh: refresh };
  setInterval(refresh, 1000);
})();
