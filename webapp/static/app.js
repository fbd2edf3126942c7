// The worklist's live refresh, in plain JavaScript (no library): the page listens to its
// Server-Sent Events stream and, on "changed", fetches the table again and swaps it in.
// A stream the server ends (signed out, idle time-out) is not reopened: the next
// fetch answers 401 and the page goes to sign-in.
(function () {
  "use strict";
  var box = document.getElementById("worklist-rows");
  if (!box || !window.EventSource) { return; }
  var state = document.getElementById("live-state");
  var rowsUrl = box.getAttribute("data-stream").replace("/worklist/stream", "/worklist/rows");
  var source = new EventSource(box.getAttribute("data-stream"));
  function refresh() {
    fetch(rowsUrl, {credentials: "same-origin", headers: {"Accept": "text/html-fragment"}})
      .then(function (r) {
        if (r.status === 401) { window.location = "/signin?next=" + encodeURIComponent(location.pathname + location.search); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) { return; }
        box.innerHTML = html;
        if (state) { state.textContent = "Updated " + new Date().toLocaleTimeString(); }
      });
  }
  source.addEventListener("changed", refresh);
  source.addEventListener("ended", function () {
    source.close();
    refresh();
  });
  source.onerror = function () { if (state) { state.textContent = "Live updates paused; reload the page to resume."; } };
}());
