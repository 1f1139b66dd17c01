// The patient companion: entries are queued on this phone (localStorage) and sent when online; every entry
// carries its own id, so one sent twice is recorded once. Warning answers get their advice at once, even offline.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("companion-data").textContent);
  var csrf = document.getElementById("csrf").value;
  var KEY = "onco-exercise-companion-queue";
  var answer = document.getElementById("answer");
  var queueStatus = document.getElementById("queue-status");

  function newId() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    return "e-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }
  function queue() { try { return JSON.parse(localStorage.getItem(KEY) || "[]"); } catch (e) { return []; } }
  function saveQueue(q) { localStorage.setItem(KEY, JSON.stringify(q)); showQueue(); }
  function showQueue() {
    var n = queue().length;
    queueStatus.hidden = n === 0;
    queueStatus.textContent = n === 0 ? "" : n + (n === 1 ? " entry is" : " entries are") +
      " saved on this phone and will be sent when you are back online.";
  }
  function say(lines, urgent) {
    answer.hidden = lines.length === 0;
    answer.className = "answer" + (urgent ? " urgent" : "");
    answer.textContent = "";
    lines.forEach(function (t) { var p = document.createElement("p"); p.textContent = t; answer.appendChild(p); });
    if (lines.length) { answer.scrollIntoView({block: "start"}); }
  }
  function warnings(form) {
    var w = {};
    ["chest_pain", "fainting", "fever", "bone_pain"].forEach(function (k) { if (form.elements[k].checked) { w[k] = true; } });
    return w;
  }
  function entryOf(form) {
    var e = {entryId: newId(), warnings: warnings(form)};
    if (form.dataset.kind === "session") {
      e.day = form.elements.day.value;
      var effort = form.querySelector("input[name=effort]:checked");
      e.session = {activity: form.elements.activity.value, minutes: form.elements.minutes.value,
                   effort: effort ? effort.value : null};
      if (form.elements.steps.value !== "") { e.steps = form.elements.steps.value; }
    } else {
      e.symptoms = {};
      ["fatigue", "pain", "breathlessness"].forEach(function (k) {
        if (form.elements[k].value !== "") { e.symptoms[k] = form.elements[k].value; }
      });
      if (form.elements.evs_days.value !== "" || form.elements.evs_minutes.value !== "") {
        e.recall = {days: form.elements.evs_days.value, minutesPerDay: form.elements.evs_minutes.value};
      }
    }
    return e;
  }
  function problem(form, text) {
    var p = form.querySelector(".form-problem");
    p.hidden = !text; p.textContent = text || "";
  }
  function check(form, e) {
    if (e.session) {
      if (!e.session.minutes) { return "Please say for how many minutes."; }
      if (!e.session.effort) { return "Please choose how hard it felt."; }
    } else if (Object.keys(e.symptoms).length === 0 && Object.keys(e.warnings).length === 0 && !e.recall) {
      return "Please answer at least one question.";
    }
    return "";
  }
  function send(e) {
    return fetch("/patient/api/entries?s=" + encodeURIComponent(data.sid), {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(e)
    }).then(function (r) { return r.json().then(function (body) { return {status: r.status, body: body}; }); });
  }
  function flush() {
    var q = queue();
    if (!q.length || !navigator.onLine) { showQueue(); return Promise.resolve(); }
    var e = q[0];
    return send(e).then(function (res) {
      if (res.status === 201 || res.status === 422) {  // recorded, or refused for good: never resend a bad one
        saveQueue(queue().filter(function (x) { return x.entryId !== e.entryId; }));
        return flush();
      }
      showQueue();
    }, function () { showQueue(); });
  }
  function onSubmit(ev) {
    ev.preventDefault();
    var form = ev.target, e = entryOf(form), bad = check(form, e);
    problem(form, bad);
    if (bad) { return; }
    // advice for a warning answer is shown now, whatever the network does
    var local = Object.keys(e.warnings).map(function (k) { return data.advice[k]; });
    say(local, local.length > 0);
    saveQueue(queue().concat([e]));
    var q = queue();
    if (q[0].entryId !== e.entryId) { return flush(); }  // older ones first
    send(e).then(function (res) {
      if (res.status === 201) {
        saveQueue(queue().filter(function (x) { return x.entryId !== e.entryId; }));
        var lines = (res.body.alerts || []).map(function (a) { return a.text; });
        if (res.body.flagged) { lines.push("Your care team has been told."); }
        say(lines.length ? lines : ["Saved. Well done."], lines.length > 1);
        form.reset();
        if (form.elements.day) { form.elements.day.value = form.elements.day.max; }
        return flush();
      }
      if (res.status === 422 || res.status === 413) {
        saveQueue(queue().filter(function (x) { return x.entryId !== e.entryId; }));
        var issue = (res.body.issue || [])[0] || {};
        problem(form, issue.diagnostics || "Please check the form.");
        return;
      }
      if (res.status === 401) { problem(form, "Please sign in again: your entry is kept on this phone."); return; }
      showQueue();
    }, function () { showQueue(); });
  }
  document.getElementById("log-form").addEventListener("submit", onSubmit);
  document.getElementById("check-form").addEventListener("submit", onSubmit);
  window.addEventListener("online", flush);
  flush();
})();
