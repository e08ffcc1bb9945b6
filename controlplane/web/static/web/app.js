// Small progressive enhancements; every page works without them.
(function () {
  "use strict";
  // Focus the first field with a server-side error so keyboard and screen-reader users land on it.
  document.addEventListener("DOMContentLoaded", function () {
    var invalid = document.querySelector(".has-error input, .has-error select, .has-error textarea");
    if (invalid) { invalid.focus(); }
  });

  // A filter that applies itself (no inline onchange handler: the CSP forbids inline code).
  document.addEventListener("change", function (event) {
    var el = event.target;
    if (el && el.hasAttribute && el.hasAttribute("data-submit-on-change") && el.form) { el.form.requestSubmit(); }
  });

  // Charts arrive as data (<script type="application/json" data-plotly-figure="div id">), never as
  // inline code, so the Content-Security-Policy can forbid inline scripts (controlplane/web/charts.py).
  function drawFigures(root) {
    if (!window.Plotly || !root || !root.querySelectorAll) { return; }
    var blocks = root.querySelectorAll('script[type="application/json"][data-plotly-figure]');
    Array.prototype.forEach.call(blocks, function (block) {
      var target = document.getElementById(block.getAttribute("data-plotly-figure"));
      if (!target || target.getAttribute("data-plotted") === "1") { return; }
      var spec = JSON.parse(block.textContent);
      target.setAttribute("data-plotted", "1");
      window.Plotly.newPlot(target, spec.figure.data || [], spec.figure.layout || {}, spec.config || {});
    });
  }
  document.addEventListener("DOMContentLoaded", function () { drawFigures(document); });
  document.addEventListener("htmx:afterSettle", function (event) { drawFigures(event.target); });
})();
