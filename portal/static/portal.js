// The portal's only script (no inline JS: the pages run under a strict CSP). Everything works without it;
// it adds confirmations, double-submit protection, focus on errors, delivery-specific fields, copy buttons
// and in-place refresh of status boxes.
"use strict";
(function () {
  function each(sel, fn) { Array.prototype.forEach.call(document.querySelectorAll(sel), fn); }

  // Confirm before destructive actions; then send once (a double click does not send twice).
  each("form", function (form) {
    form.addEventListener("submit", function (ev) {
      var question = form.getAttribute("data-confirm");
      if (question && !window.confirm(question)) { ev.preventDefault(); return; }
      if (form.dataset.sent) { ev.preventDefault(); return; }
      form.dataset.sent = "1";
      Array.prototype.forEach.call(form.querySelectorAll("button"), function (b) { b.setAttribute("aria-disabled", "true"); });
    });
  });

  // After a failed submit the error summary takes the focus, so screen readers announce it first.
  var summary = document.getElementById("error-summary");
  if (summary) { summary.focus(); }

  // Show only the fields of the chosen delivery (the server ignores the others anyway).
  each("[data-shows-fields]", function (select) {
    var form = select.form;
    function sync() {
      each(".for-delivery", function (box) {
        if (!form.contains(box)) { return; }
        var on = (box.getAttribute("data-delivery") || "").split(" ").indexOf(select.value) >= 0;
        box.hidden = !on;
      });
    }
    select.addEventListener("change", sync);
    sync();
  });

  // Copy buttons: data-copy="<id of the element whose text is copied>".
  each("button.copy", function (btn) {
    btn.addEventListener("click", function () {
      var src = document.getElementById(btn.getAttribute("data-copy"));
      if (!src || !navigator.clipboard) { return; }
      navigator.clipboard.writeText(src.textContent).then(function () {
        btn.textContent = "Copied";
        setTimeout(function () { btn.textContent = "Copy"; }, 2000);
      });
    });
  });

  // Status boxes refresh in place from their JSON endpoint (same origin, cookies), every 5 s while visible.
  each("[data-refresh]", function (box) {
    var url = box.getAttribute("data-refresh");
    function text(id, value) { var el = document.getElementById(id); if (el) { el.textContent = value; } }
    function tick() {
      if (document.hidden) { return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (s) {
          if (!s) { return; }
          box.className = box.className.replace(/\bstate \w+/, "state " + s.state);
          text("state", s.state);
          text("headline", s.headline);
          text("since", s.since_text ? "since " + s.since_text : "");
          text("next-retry", s.next_retry_text ? "· next retry at " + s.next_retry_text : "");
          text("delivered", s.delivered === null ? "—" : String(s.delivered));
          text("lag", s.lag === null ? "—" : String(s.lag));
          text("last-success", s.last_success_text || "—");
          text("last-error", s.last_error ? s.last_error_at_text + ": " + s.last_error + (s.error_resolved ? " (resolved: delivered successfully since)" : "") : "none");
          var why = document.getElementById("state-reason");
          if (why) { why.textContent = s.reason ? "Why: " + s.reason : ""; why.hidden = !s.reason; }
          text("dead-letters", s.dead_letters === null ? "—" : String(s.dead_letters));
          // Controls that fit one state only (Re-enable: disabled) follow it without a reload.
          each("[data-show-in-state]", function (el) { el.hidden = el.getAttribute("data-show-in-state") !== s.state; });
          box.setAttribute("data-refreshed", String(Date.now()));
        })
        .catch(function () {});
    }
    setInterval(tick, 5000);
  });
})();
