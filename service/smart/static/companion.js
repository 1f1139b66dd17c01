// The patient companion: entries are queued on this device (localStorage, one queue per sign-in) and sent when
// online; every entry carries its own id, so one sent twice is recorded once. Warning answers get their advice
// at once, even offline; a warning is never dropped with a bad entry (the server records it on its own).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("companion-data").textContent);
  var csrf = document.getElementById("csrf").value;
  var KEY = "onco-exercise-companion-queue-" + data.queue;
  var answer = document.getElementById("answer");
  var queueStatus = document.getElementById("queue-status");
  var notRecorded = [];

  function iso(d) {
    return d.getFullYear() + "-" + String(d.getMonth() + 1).padStart(2, "0") + "-" + String(d.getDate()).padStart(2, "0");
  }
  function localDay() { return iso(new Date()); }
  // The day is chosen from the last week in the patient's own calendar (no date picker to fight with).
  function resetDay() {
    var day = document.getElementById("day");
    while (day.firstChild) { day.removeChild(day.firstChild); }
    for (var back = 0; back < 8; back++) {
      var d = new Date(); d.setDate(d.getDate() - back);
      var label = back === 0 ? "Today" : back === 1 ? "Yesterday" :
        d.toLocaleDateString(undefined, {weekday: "long", day: "numeric", month: "long"});
      var o = document.createElement("option"); o.value = iso(d); o.textContent = label;
      day.appendChild(o);
    }
  }
  function newId() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    return "e-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }
  function queue() { try { return JSON.parse(localStorage.getItem(KEY) || "[]"); } catch (e) { return []; } }
  function saveQueue(q) {
    if (q.length) { localStorage.setItem(KEY, JSON.stringify(q)); } else { localStorage.removeItem(KEY); }
    showQueue();
  }
  function drop(id) { saveQueue(queue().filter(function (x) { return x.entryId !== id; })); }
  function showQueue() {
    var n = queue().length, lines = [];
    if (n) {
      lines.push(n + (n === 1 ? " entry is" : " entries are") + " saved on this phone and will be sent when you are back online.");
    }
    notRecorded.forEach(function (t) { lines.push("Not recorded: " + t); });
    queueStatus.hidden = lines.length === 0;
    queueStatus.textContent = lines.join(" ");
  }
  function say(lines, urgent) {
    answer.hidden = lines.length === 0;
    answer.className = "answer" + (urgent ? " urgent" : "");
    answer.textContent = "";
    lines.forEach(function (t) { var p = document.createElement("p"); p.textContent = t; answer.appendChild(p); });
    if (lines.length) { answer.scrollIntoView({block: "start"}); }
  }
  function toldLines(body) {
    var lines = (body.alerts || []).map(function (a) { return a.text; });
    if (!lines.length) { return lines; }
    if (body.toldCareTeam) { lines.push("Your care team has been told."); }
    else if (body.flagged) { lines.push("This is on your record for your care team, but the app could not message them: please call them."); }
    else { lines.push("This app could not alert your care team: please call them now."); }
    return lines;
  }
  function warnings(form) {
    var w = {};
    ["chest_pain", "fainting", "fever", "bone_pain"].forEach(function (k) { if (form.elements[k].checked) { w[k] = true; } });
    return w;
  }
  function entryOf(form) {
    var e = {entryId: newId(), queue: data.queue, warnings: warnings(form)};
    if (form.dataset.kind === "session") {
      e.day = form.elements.day.value;
      var effort = form.querySelector("input[name=effort]:checked");
      e.session = {activity: form.elements.activity.value, minutes: form.elements.minutes.value,
                   effort: effort ? effort.value : null};
      if (form.elements.steps.value !== "") { e.steps = form.elements.steps.value; }
    } else {
      e.day = localDay();
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
  function check(e) {
    var warned = Object.keys(e.warnings).length > 0;
    if (e.session && !warned) {
      if (!e.session.minutes) { return "Please say for how many minutes."; }
      if (!e.session.effort) { return "Please choose how hard it felt."; }
    } else if (e.symptoms && Object.keys(e.symptoms).length === 0 && !warned && !e.recall) {
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
  function issue(body) { return ((body.issue || [])[0] || {}).diagnostics || "Please check the entry."; }
  // Final answers leave the queue: recorded (201), refused for good (422, 409, or not accepted by the hospital's
  // system); a missing sign-in stops here (kept); anything else is tried again later, after the others.
  function settle(e, res, background) {
    if (res.status === 201) { drop(e.entryId); return "done"; }
    if (res.status === 422 || res.status === 409 || res.status === 413 || (res.body && res.body.retry === false)) {
      drop(e.entryId);
      if (background) { notRecorded.push(issue(res.body)); showQueue(); }  // else the form shows it
      return "done";
    }
    if (res.status === 401) { return "stop"; }
    return "later";
  }
  function flush() {
    if (!navigator.onLine) { showQueue(); return Promise.resolve(); }
    var pending = queue();
    return pending.reduce(function (chain, e) {
      return chain.then(function (go) {
        if (!go) { return false; }
        return send(e).then(function (res) { return settle(e, res, true) !== "stop"; }, function () { return false; });
      });
    }, Promise.resolve(true)).then(showQueue);
  }
  function onSubmit(ev) {
    ev.preventDefault();
    var form = ev.target, e = entryOf(form), bad = check(e);
    problem(form, bad);
    if (bad) { return; }
    // advice for a warning answer is shown now, whatever the network does
    var local = Object.keys(e.warnings).map(function (k) { return data.advice[k]; });
    say(local, local.length > 0);
    saveQueue(queue().concat([e]));
    send(e).then(function (res) {
      var outcome = settle(e, res, false);
      var lines = toldLines(res.body || {});
      if (res.status === 201) {
        say(lines.length ? lines : ["Saved. Well done."], lines.length > 1);
        form.reset(); resetDay();
      } else if (outcome === "done") {
        if (lines.length) { say(lines, true); }
        problem(form, issue(res.body));
      } else if (outcome === "stop") {
        problem(form, "Please sign in again: your entry is kept on this phone.");
      }
      return flush();
    }, function () { showQueue(); });
  }
  document.getElementById("log-form").addEventListener("submit", onSubmit);
  document.getElementById("check-form").addEventListener("submit", onSubmit);
  window.addEventListener("online", flush);
  resetDay();
  flush();
})();
