// paw console: copy buttons and the UTC / local-time toggle. No inline script (the CSP forbids it).
(function () {
  "use strict";
  var local = false;
  function render() {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      if (!local) { el.textContent = el.dataset.utc; return; }
      var d = new Date(el.getAttribute("datetime"));
      el.textContent = isNaN(d) ? el.dataset.utc : d.toLocaleString() + " (local)";
    });
    document.querySelectorAll("[data-tz-toggle]").forEach(function (b) {
      b.textContent = local ? "times: local" : "times: UTC";
    });
  }
  document.addEventListener("click", function (e) {
    var t = e.target;
    if (!(t instanceof HTMLElement)) { return; }
    if (t.dataset.copy !== undefined) {
      if (navigator.clipboard) { navigator.clipboard.writeText(t.dataset.copy); }
      t.textContent = "copied";
      setTimeout(function () { t.textContent = "copy"; }, 1200);
    } else if (t.hasAttribute("data-tz-toggle")) {
      local = !local;
      try { localStorage.setItem("paw-local-time", local ? "1" : "0"); } catch (err) { /* private mode */ }
      render();
    }
  });
  document.addEventListener("DOMContentLoaded", function () {
    try { local = localStorage.getItem("paw-local-time") === "1"; } catch (err) { local = false; }
    render();
  });
  document.addEventListener("htmx:afterSwap", render);
})();
