// Small progressive enhancements; every page works without them.
(function () {
  "use strict";
  // Focus the first field with a server-side error so keyboard and screen-reader users land on it.
  document.addEventListener("DOMContentLoaded", function () {
    var invalid = document.querySelector(".has-error input, .has-error select, .has-error textarea");
    if (invalid) { invalid.focus(); }
  });
})();
