// The enrolment link carries its one-time token in the fragment (/enrol#token=...), which
// a browser never sends to a server (so it is in no access log). This copies it into the
// form, then drops it from the address bar and the history.
(function () {
  var match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  var field = document.getElementById("token");
  if (match && field) {
    field.value = decodeURIComponent(match[1]);
    history.replaceState(null, "", window.location.pathname);
  }
})();
