/* onco-exercise SMART app: a thin client of /smart/api/prescription (no build step, no framework).
   Everything shown comes from the JSON API; text is inserted with textContent only (no HTML parsing). */
(function () {
  "use strict";

  var sid = document.querySelector('meta[name="smart-session"]').content;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var api = "/smart/api/prescription?s=" + encodeURIComponent(sid);
  var view = null;
  var signing = false;
  var baseline = null;  // the form as last rendered from the server: anything else is an unsaved change

  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function status(text, kind) {
    var s = $("status");
    s.textContent = text;
    s.className = "status" + (kind ? " " + kind : "");
  }
  function day(iso) { return iso ? String(iso).slice(0, 10) : "—"; }
  function num(v) { return typeof v === "number" ? (Math.round(v * 10) / 10).toString() : String(v); }
  function withUnit(text, m) {
    var u = m.unitLabel !== undefined && m.unitLabel !== null ? m.unitLabel : (m.unit || "");
    return u ? text + " " + u : text;
  }
  // Panels (blood pressure) are shown in a fixed order, whichever component the row is about.
  var PANEL_ORDER = ["bp-systolic", "bp-diastolic"];
  function panelText(m) {
    var parts = [{ measure: m.measure, value: m.value }].concat(m.components || []);
    var rank = function (p, i) { var r = PANEL_ORDER.indexOf(p.measure); return r < 0 ? 100 + i : r; };
    return parts.map(function (p, i) { return { p: p, r: rank(p, i) }; })
      .sort(function (a, b) { return a.r - b.r; })
      .map(function (x) { return num(x.p.value); }).join("/");
  }
  function errorText(body, fallback) {
    if (body && body.issue && body.issue.length) {
      return body.issue.map(function (i) { return i.diagnostics || i.code; }).join(" ");
    }
    return fallback;
  }

  function request(method, url, body) {
    var opts = { method: method, credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = csrf;
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (b) { return { status: r.status, body: b }; });
    });
  }

  // -- rendering -------------------------------------------------------------------------------------------

  function renderBanner(v) {
    var b = $("patient-banner");
    b.hidden = !v.needPatientBanner;
    var p = v.patient || {};
    $("banner-name").textContent = p.name || ("Patient " + p.id);
    var bits = [];
    if (p.birthDate) bits.push("Born " + p.birthDate + (v.age !== null && v.age !== undefined ? " (" + v.age + " y)" : ""));
    if (p.gender) bits.push(p.gender);
    if (p.identifier) bits.push("ID " + p.identifier);
    $("banner-details").textContent = bits.join(" · ");
  }

  function renderDecision(v) {
    var rx = v.prescription;
    $("setting").textContent = v.settingName || rx.setting;
    var cl = $("clearance");
    if (rx.clearance) {
      cl.textContent = "Cleared by " + (rx.clearance.byDisplay || rx.clearance.by) + " on " + day(rx.clearance.at) +
        ": " + rx.clearance.note;
      cl.className = "ok-text";
    } else if (rx.setting === "defer") {
      cl.textContent = "Exercise is deferred: signing records the plan pending medical clearance (the exercise " +
        "service gets nothing to start until a clinician records the clearance).";
      cl.className = "warning-text";
    } else {
      cl.textContent = rx.clearanceRequired
        ? "Medical clearance is needed before starting." : "No medical clearance needed before starting.";
      cl.className = rx.clearanceRequired ? "warning-text" : "";
    }
    var flags = rx.redFlags || [];
    $("red-flags").hidden = flags.length === 0;
    var fl = clear($("red-flag-list"));
    flags.forEach(function (f) { fl.appendChild(el("li", f.finding)); });
    var tb = clear($("fitt").tBodies[0]);
    (rx.components || []).forEach(function (c) {
      var tr = el("tr");
      var it = c.intensity || {};
      tr.appendChild(el("th", TYPE_LABELS[c.type] || c.type));
      tr.lastChild.scope = "row";
      tr.appendChild(el("td", c.frequencyPerWeek + (c.frequencyPerWeek === 1 ? " day" : " days") + " a week"));
      tr.appendChild(el("td", (it.label || "") + (it.low !== null && it.low !== undefined
        ? " (RPE " + num(it.low) + "-" + num(it.high) + ")" : "")));
      tr.appendChild(el("td", c.minutesPerSession + " min" + (c.sets ? ", " + c.sets + (c.sets === 1 ? " set" : " sets") +
        (c.repetitions ? " of " + c.repetitions : "") : "")));
      tr.appendChild(el("td", (c.activities || []).join(", ")));
      tb.appendChild(tr);
    });
    $("fitt").hidden = !(rx.components || []).length;
    var tp = clear($("top-precautions"));
    (rx.precautions || []).slice(0, 3).forEach(function (p) { tp.appendChild(el("li", p.text)); });
    var more = (rx.precautions || []).length - 3;
    if (more > 0) tp.appendChild(el("li", "and " + more + " more (see Edit the plan)", "source"));
    $("top-precautions-box").hidden = !(rx.precautions || []).length;
    var rl = clear($("rationale"));
    (rx.rationale || []).forEach(function (r) {
      var li = el("li");
      li.appendChild(el("span", r.finding, "finding"));
      li.appendChild(document.createTextNode(" → " + r.effect + " "));
      li.appendChild(el("span", "(" + r.rule + (r.source ? "; " + r.source : "") + ")", "source"));
      rl.appendChild(li);
    });
    var notes = (v.notes || []).concat(v.launch && v.launch.fromCard ? ["Opened from the exercise referral card."] : []);
    $("notes-from-launch").hidden = notes.length === 0;
    $("notes-from-launch").textContent = notes.join(" ");
  }

  var STATE_WORDS = { "pending-clearance": "on hold, pending medical clearance", draft: "a draft (from the card)",
    sent: "sent to the exercise service", "in-progress": "in progress with the exercise service", "on-hold": "on hold" };

  function renderOpenReferrals(v) {
    var box = clear($("open-referrals"));
    var refs = v.openReferrals || [];
    box.hidden = refs.length === 0;
    refs.forEach(function (o) {
      var p = el("p");
      var words = "Exercise referral " + (STATE_WORDS[o.state] || o.state) + (o.authoredOn ? ", signed " + day(o.authoredOn) : "") +
        (o.requester ? " by " + o.requester : "") + ".";
      if (o.task && o.task.status) words += " Exercise service task: " + o.task.status + (o.task.businessStatus ? " (" + o.task.businessStatus + ")" : "") + ".";
      p.appendChild(el("strong", words));
      box.appendChild(p);
      if (o.toResolve && o.toResolve.length) {
        box.appendChild(el("p", "To resolve: " + o.toResolve.join(" ")));
      }
      if (!o.ours) box.appendChild(el("p", "It was not written by onco-exercise and is not changed by signing.", "hint"));
    });
  }

  // What the exercise service reported back on the referral in place: status, attendance, before -> after.
  function renderProgramme(v) {
    var box = clear($("programme"));
    var p = v.exerciseProgramme;
    var shown = !!(p && (p.taskStatus || p.attendance || (p.changes || []).length));
    box.hidden = !shown;
    if (!shown) return;
    box.appendChild(el("h3", "From the exercise service"));
    var ul = el("ul", null, "tight");
    if (p.taskStatus) ul.appendChild(el("li", "Task " + p.taskStatus + (p.businessStatus ? ": " + p.businessStatus : "") +
      (p.reason ? " (reason: " + p.reason + ")" : "")));
    if (p.attendance) ul.appendChild(el("li", "Attendance: " + p.attendance.attended +
      (p.attendance.offered != null ? " of " + p.attendance.offered : "") + " sessions (" + day(p.attendance.date) + ")"));
    (p.changes || []).forEach(function (c) {
      ul.appendChild(el("li", c.label + ": " + c.before.value + " → " + c.after.value + " " + (c.after.unitLabel || "") +
        " (" + day(c.before.date) + " → " + day(c.after.date) + ")"));
    });
    if (p.latestNote) ul.appendChild(el("li", "Latest report: " + p.latestNote));
    if (p.report) ul.appendChild(el("li", "Programme report: " + p.report));
    box.appendChild(ul);
  }

  // The patient companion's side: open Flags first, the weeks logged against the plan as bars (the planned
  // minutes as a dashed line), and the proposed next step, which the clinician can put into the plan below.
  function renderHome(v) {
    var box = clear($("at-home"));
    var h = v.atHome;
    box.hidden = !h;
    if (!h) return;
    box.appendChild(el("h3", "At home (patient companion)")).id = "at-home-h";
    (h.alerts || []).forEach(function (a) {
      var p = el("p", null, "home-alert");
      p.appendChild(el("strong", "Reported by the patient: "));
      p.appendChild(document.createTextNode(a.text + (a.reported ? " (" + day(a.reported) + ")" : "") + " "));
      p.appendChild(el("code", a.rule));
      box.appendChild(p);
    });
    if (!h.line) return;
    box.appendChild(el("p", h.line, "home-line"));
    var weeks = h.weeks || [];
    if (weeks.length) {
      var w = 176, ht = 56, pad = 4, bw = (w - 2 * pad) / weeks.length;
      var top = Math.max.apply(null, weeks.map(function (x) { return Math.max(x.minutes, x.planned || 0); })) || 1;
      var s = svg("svg", { viewBox: "0 0 " + w + " " + ht, role: "img", id: "home-chart",
        "aria-label": "Minutes per week: " + weeks.map(function (x) { return num(x.minutes) + (x.planned ? " of " + num(x.planned) : ""); }).join(", ") });
      weeks.forEach(function (x, i) {
        var bh = (ht - 2 * pad) * x.minutes / top;
        s.appendChild(svg("rect", { "class": x.atGoal ? "bar at-goal" : "bar", x: (pad + i * bw + 2).toFixed(1),
          y: (ht - pad - bh).toFixed(1), width: (bw - 4).toFixed(1), height: bh.toFixed(1) }));
        if (x.planned) {
          var py = (ht - pad - (ht - 2 * pad) * x.planned / top).toFixed(1);
          s.appendChild(svg("line", { "class": "planned", x1: (pad + i * bw).toFixed(1), x2: (pad + (i + 1) * bw).toFixed(1), y1: py, y2: py }));
        }
      });
      var fig = el("figure", undefined, "trend");
      fig.appendChild(s);
      fig.appendChild(el("figcaption", "Minutes per week, last " + weeks.length + " weeks (dashed: planned): " +
        weeks.map(function (x) { return num(x.minutes); }).join(", ")));
      box.appendChild(fig);
    }
    var p = el("p", null, "home-proposal");
    p.id = "home-proposal";
    p.appendChild(el("strong", (h.step === "none" ? "Next step: " : "Proposed: ") + h.proposal + ". "));
    p.appendChild(document.createTextNode(h.reason + " "));
    p.appendChild(el("code", h.rule));
    box.appendChild(p);
    if ((h.step === "progress" || h.step === "step-down") && h.proposed && h.planned && !v.signed) {
      var b = el("button", "Put this step into the plan below", "secondary");
      b.type = "button"; b.id = "apply-step";
      b.addEventListener("click", function () {
        // the draft may already differ from the signed plan (new data): aim its weekly total at the proposal
        var total = (v.prescription.components || []).reduce(function (t, c) {
          return t + (c.frequencyPerWeek || 0) * (c.minutesPerSession || 0); }, 0);
        applyStep(total ? h.proposed / total : h.proposed / h.planned);
      });
      box.appendChild(b);
    }
  }
  // Scales every component's minutes per session (same days) so that the plan's weekly total is the proposal's;
  // the edit then goes through the usual limits on Update (a step beyond a rule's cap needs a clinical reason).
  function applyStep(factor) {
    (view.prescription.components || []).forEach(function (c, i) {
      if (!c.minutesPerSession) return;
      var input = $("component-" + i + "-minutes");
      input.value = Math.max(5, Math.min(120, Math.round(c.minutesPerSession * factor)));
      input.dataset.dirty = "1";
      input.dispatchEvent(new Event("input", { bubbles: true }));
    });
    markUnsaved();
    $("update-button").disabled = false;
    status("The proposed step is in the plan below: press Update prescription, then Sign & send (it replaces the open referral).");
  }

  // More than one configured exercise service: the clinician picks where the referral goes (the first by default).
  function renderServices(v) {
    var list = v.exerciseServices || [];
    var sel = $("exercise-service");
    $("service-field").hidden = list.length < 2;
    if (sel.options.length === list.length) return;  // keep the clinician's choice across re-renders
    clear(sel);
    list.forEach(function (x) {
      var o = document.createElement("option");
      o.value = x.reference; o.textContent = x.name + (x.kind === "full" ? " (notified)" : " (inbox)");
      sel.appendChild(o);
    });
  }

  function renderClearance(v) {
    var c = v.clearance || {};
    var form = $("clearance-form");
    form.hidden = !c.canRecord;
    var ul = clear($("clearance-items"));
    (c.toResolve || []).forEach(function (text, i) {
      var li = el("li"); var lab = el("label"); var cb = document.createElement("input");
      cb.type = "checkbox"; cb.id = "clearance-item-" + i; cb.value = text; cb.name = "reviewed";
      lab.htmlFor = cb.id; lab.appendChild(cb); lab.appendChild(el("span", text));
      li.appendChild(lab); ul.appendChild(li);
    });
    var rec = $("clearance-recorded");
    rec.hidden = !c.recorded;
    if (c.recorded) rec.textContent = "Clearance recorded by " + (c.recorded.byDisplay || c.recorded.by) + ": the plan " +
      "starts supervised. Review it, then Sign & send to release the referral.";
    var rx = v.prescription;
    $("sign-hint").textContent = rx.setting === "defer"
      ? "Sign & send records the plan pending medical clearance: CarePlan and referral on hold, a to-do for you, nothing for the exercise service."
      : ((v.openReferrals || []).some(function (o) { return o.ours; })
        ? "Sign & send replaces the open referral with this plan: the old one is revoked and its task cancelled, so there is one open referral."
        : "Sign & send writes the plan and the referral to the EHR.");
  }

  $("clearance-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var reviewed = Array.prototype.filter.call(document.querySelectorAll('#clearance-items input:checked'),
      function (cb) { return true; }).map(function (cb) { return cb.value; });
    var body = collect();
    body.clearance = { reviewed: reviewed, note: $("clearance-note").value };
    $("clearance-problems").hidden = true;
    $("clearance-button").disabled = true;
    status("Recording the clearance…");
    request("POST", api, body).then(function (r) {
      $("clearance-button").disabled = false;
      if (r.status === 200) { render(r.body); status("Clearance recorded: review the plan, then Sign & send.", "ok"); return; }
      var box = clear($("clearance-problems"));
      box.hidden = false;
      var items = (r.body && r.body.problems) || [];
      box.appendChild(el("p", items.length ? items.map(function (p) { return p.message; }).join(" ") : errorText(r.body, "Not recorded.")));
      status("The clearance was not recorded.", "error");
    }, function () { $("clearance-button").disabled = false; status("The service could not be reached.", "error"); });
  });

  function renderData(v) {
    var d = v.data;
    var fp = $("fetch-problems");
    var problems = (d.failures || []).concat(d.truncated || []);
    fp.hidden = problems.length === 0;
    fp.textContent = problems.length ? "Some data could not be read from the EHR: " + problems.join("; ") : "";
    var ur = clear($("unreadable-data"));
    (d.unreadable || []).forEach(function (u) {
      ur.appendChild(el("li", u.what + " (" + u.source + (u.date ? ", " + day(u.date) : "") + "): " + u.problem +
        (u.requires === "defer" ? " — exercise deferred until a clinician checks it" : " — clearance required")));
    });
    $("unreadable-box").hidden = !(d.unreadable || []).length;
    var tb = clear($("data-used").tBodies[0]);
    if (!d.measurements.length) {
      var tr0 = el("tr"); var td0 = el("td", "No relevant measurements found."); td0.colSpan = 4;
      tr0.appendChild(td0); tb.appendChild(tr0);
    }
    d.measurements.forEach(function (m) {
      var abnormal = !!(m.flag || m.triggered);
      var tr = el("tr", undefined, (m.stale ? "stale" : "") + (abnormal ? " abnormal" : ""));
      tr.appendChild(el("td", m.label + (m.stale ? " (out of date)" : "") +
        (m.newerUnreadable ? " (a newer result could not be read: see above)" : "")));
      var val = withUnit((m.comparator ? m.comparator + " " : "") + num(m.value), m);  // the row's own value first
      if (m.flag) val += " (lab flag " + m.flag + ")";
      if (m.components && m.components.length) val += " (panel " + panelText(m) + ")";
      var cell = el("td");
      if (abnormal) cell.appendChild(el("span", "⚑ ", "flag-mark"));
      cell.appendChild(document.createTextNode(val));
      if (m.triggered) cell.appendChild(el("span", " — " + m.triggered, "source"));
      tr.appendChild(cell);
      tr.appendChild(el("td", day(m.date)));
      tr.appendChild(el("td", m.source, "source"));
      tb.appendChild(tr);
    });
    renderTrends(d.trends || []);
    var cl = clear($("conditions"));
    function fact(prefix, f) { cl.appendChild(el("li", prefix + f.display + (f.onset ? " (since " + day(f.onset) + ")" : "") + " — " + f.source)); }
    d.cancers.forEach(function (f) { fact("Cancer: ", f); });
    (d.cancerHistory || []).forEach(function (f) { fact("History of cancer: ", f); });
    (d.regionalNodes || []).forEach(function (f) { fact("Regional lymph nodes: ", f); });
    d.metastases.forEach(function (f) { fact("Metastasis: ", f); });
    d.boneMetastases.forEach(function (f) { fact("Bone metastasis: ", f); });
    (d.brainMetastases || []).forEach(function (f) { fact("Brain metastasis: ", f); });
    d.comorbidities.forEach(function (f) { fact("Comorbidity (" + f.group + "): ", f); });
    d.treatments.forEach(function (t) {
      cl.appendChild(el("li", "Treatment: " + t.display + " (" + t.kind + (t.active ? ", active" : "") +
        (t.staleOrder ? ", old open order: not counted as current" : "") +
        (t.start ? ", from " + day(t.start) : "") + (t.end ? " to " + day(t.end) : "") + ") — " + t.source));
    });
    if (!cl.firstChild) cl.appendChild(el("li", "None found."));
    var md = clear($("missing-data"));
    (v.prescription.missingData || []).forEach(function (m) {
      md.appendChild(el("li", m.text + (m.recommendation ? " — " + m.recommendation : "")));
    });
    if (!md.firstChild) md.appendChild(el("li", "Nothing missing."));
  }

  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  // Small line charts (no library): oldest to newest, scaled to their own range; the numbers are in the caption.
  function renderTrends(trends) {
    var box = clear($("trends"));
    trends.forEach(function (tr) {
      var pts = tr.points, w = 176, h = 48, pad = 4;
      var vals = pts.map(function (p) { return p.value; });
      var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals), span = hi - lo || 1;
      var xy = pts.map(function (p, i) {
        return [pad + i * (w - 2 * pad) / (pts.length - 1), h - pad - (p.value - lo) * (h - 2 * pad) / span];
      });
      var fig = el("figure", undefined, "trend");
      var s = svg("svg", { viewBox: "0 0 " + w + " " + h, role: "img",
        "aria-label": tr.label + " trend: " + pts.map(function (p) { return num(p.value); }).join(", ") });
      s.appendChild(svg("polyline", { "class": "line", points: xy.map(function (q) { return q[0].toFixed(1) + "," + q[1].toFixed(1); }).join(" ") }));
      xy.forEach(function (q) { s.appendChild(svg("circle", { "class": "dot", cx: q[0].toFixed(1), cy: q[1].toFixed(1), r: 2.5 })); });
      fig.appendChild(s);
      var first = pts[0], last = pts[pts.length - 1];
      fig.appendChild(el("figcaption", tr.label + ": " + num(first.value) + " (" + day(first.date) + ") → " +
        num(last.value) + (tr.unitLabel ? " " + tr.unitLabel : "") + " (" + day(last.date) + ")"));
      box.appendChild(fig);
    });
  }

  function reasonText(r) {
    if (!r || typeof r !== "object") return String(r || "");
    var label = ((view && view.overrideReasons) || []).filter(function (x) { return x.code === r.code; })
      .map(function (x) { return x.display; })[0] || r.code;
    return label + (r.text ? ": " + r.text : "");
  }

  function field(id, label, input) {
    var wrap = el("div", undefined, "field");
    var l = el("label", label); l.htmlFor = id;
    input.id = id;
    input.addEventListener("input", function () { input.dataset.dirty = "1"; });
    input.addEventListener("change", function () { input.dataset.dirty = "1"; });
    wrap.appendChild(l); wrap.appendChild(input);
    return wrap;
  }
  function numberInput(value, min, max) {
    var i = document.createElement("input");
    i.type = "number"; i.inputMode = "numeric"; i.step = "1"; i.min = min; i.max = max;
    i.value = value === null || value === undefined ? "" : value;
    return i;
  }
  function selectInput(options, value) {
    var s = document.createElement("select");
    options.forEach(function (o) { var op = el("option", o[1]); op.value = o[0]; s.appendChild(op); });
    s.value = value;
    return s;
  }
  function textInput(value) {
    var i = document.createElement("input");
    i.type = "text"; i.autocomplete = "off"; i.value = value || "";
    return i;
  }

  var LEVELS = [["light", "Light"], ["moderate", "Moderate"], ["vigorous", "Vigorous"]];
  var TYPE_LABELS = { aerobic: "Aerobic", resistance: "Resistance (strength)", flexibility: "Flexibility", balance: "Balance" };

  function renderForm(v) {
    var rx = v.prescription;
    var edits = v.edits || {};
    var setting = $("edit-setting");
    setting.value = rx.setting;
    delete setting.dataset.dirty;
    if (!setting.dataset.bound) {
      setting.dataset.bound = "1";
      setting.addEventListener("change", function () { setting.dataset.dirty = "1"; });
    }
    var box = clear($("components"));
    (rx.components || []).forEach(function (c, i) {
      var p = "component-" + i;
      var fs = el("fieldset", undefined, "component");
      fs.id = p;
      fs.dataset.type = c.type;
      fs.appendChild(el("legend", TYPE_LABELS[c.type] || c.type));
      var grid = el("div", undefined, "grid");
      grid.appendChild(field(p + "-frequency", "Sessions per week", numberInput(c.frequencyPerWeek, 1, 7)));
      grid.appendChild(field(p + "-minutes", "Minutes per session", numberInput(c.minutesPerSession, 5, 120)));
      var it = c.intensity || {};
      grid.appendChild(field(p + "-intensity", "Intensity", selectInput(LEVELS, it.label)));
      fs.appendChild(grid);
      fs.appendChild(field(p + "-activities", "Activities (comma separated)", textInput((c.activities || []).join(", "))));
      var desc = [it.scale && it.low !== null && it.low !== undefined ? it.scale + " " + num(it.low) + "-" + num(it.high) : null,
        it.hrrLowPct ? "heart-rate reserve " + it.hrrLowPct + "-" + it.hrrHighPct + "%" : null,
        c.sets ? c.sets + " sets" + (c.repetitions ? " of " + c.repetitions : "") : null].filter(Boolean).join(" · ");
      if (desc) fs.appendChild(el("p", desc, "hint"));
      (c.notes || []).forEach(function (n) { fs.appendChild(el("p", n, "hint")); });
      box.appendChild(fs);
    });
    var pl = clear($("precautions"));
    (rx.precautions || []).forEach(function (p) {
      var li = el("li");
      li.appendChild(el("strong", p.text));
      li.appendChild(el("span", " (" + p.rule + (p.source ? "; " + p.source : "") + ")", "source"));
      var lab = el("label", undefined, "day");
      var cb = document.createElement("input");
      cb.type = "checkbox"; cb.name = "removePrecaution"; cb.value = p.code; cb.id = "remove-precaution-" + p.code;
      lab.appendChild(cb); lab.appendChild(document.createTextNode(" Remove this precaution"));
      li.appendChild(lab);
      pl.appendChild(li);
    });
    if (!pl.firstChild) pl.appendChild(el("li", "None."));
    $("notes").value = typeof edits.notes === "string" ? edits.notes : "";
    var prefs = v.preferences || {};
    $("pref-setting").value = prefs.preferredSetting || "";
    $("pref-activities").value = (prefs.activities || []).join(", ");
    $("pref-equipment").value = (prefs.equipment || []).join(", ");
    Array.prototype.forEach.call(document.querySelectorAll('input[name="days"]'), function (cb) {
      cb.checked = (prefs.daysAvailable || []).indexOf(cb.value) >= 0;
    });
    var ov = edits.overrideReasons || {};
    var ol = clear($("override-list"));
    Object.keys(ov).forEach(function (k) { ol.appendChild(el("li", reasonText(ov[k]))); });
    $("overrides").hidden = !ol.firstChild;
    var locked = !!v.signed;
    lockForm(locked);
  }

  function renderSend(v) {
    var wb = v.writeBack;
    renderOpenReferrals(v);
    renderProgramme(v);
    renderServices(v);
    renderClearance(v);
    var r = v.requester || {};
    $("requester").textContent = r.reference
      ? "Signing as " + (r.display && r.display !== r.reference ? r.display + " (" + r.reference + ")" : r.reference)
      : "The EHR did not identify the signed-in clinician.";
    $("strategy").textContent = wb.strategy ? "Write-back: " + wb.strategy + " (what and why)"
      : "Write-back: not possible in this session.";
    var ul = clear($("strategy-why"));
    if (wb.target) ul.appendChild(el("li", "Target: " + wb.target));
    (wb.why || []).forEach(function (w) { ul.appendChild(el("li", w)); });
    if (wb.missingScopes && wb.missingScopes.length) {
      ul.appendChild(el("li", "Permissions asked for but not granted: " + wb.missingScopes.join(" ")));
    }
    $("sign-button").disabled = !wb.canSign;
    if (v.signed) renderResult(v.signed);
  }

  function renderResult(res) {
    var box = $("sign-result");
    box.hidden = false;
    var st = res.status === "sent" ? "Sent." : res.status === "partial" ? "Partly sent: some parts failed (see below)."
      : "Not sent.";
    $("sign-status").textContent = st + " Strategy: " + res.strategy + "." + (res.replayed ? " (Already signed: this is the first result.)" : "");
    $("sign-status").className = res.status === "sent" ? "ok-text" : "warning-text";
    var tb = clear($("written").tBodies[0]);
    (res.written || []).forEach(function (w) {
      var tr = el("tr");
      tr.appendChild(el("td", w.resourceType));
      tr.appendChild(el("td", w.id));
      tr.appendChild(el("td", w.server));
      tr.appendChild(el("td", w.status));
      tb.appendChild(tr);
    });
    var fl = clear($("sign-failed"));
    (res.failed || []).forEach(function (f) { fl.appendChild(el("li", "Failed: " + f, "warning-text")); });
    var nl = clear($("sign-notes"));
    (res.notes || []).forEach(function (n) { nl.appendChild(el("li", n)); });
    if ((res.written || []).length) {  // signed: the draft is frozen (the server refuses further edits too)
      var partial = res.status === "partial";
      $("sign-button").disabled = !partial;  // a partial result may be completed by signing again
      $("sign-button").textContent = partial ? "Retry sending the failed parts" : "Sign & send";
      lockForm(true);
    }
  }

  function lockForm(locked) {
    var form = $("prescription-form");
    Array.prototype.forEach.call(form.elements, function (e) { e.disabled = locked; });
    form.classList.toggle("locked", locked);
  }

  function render(v) {
    view = v;
    renderBanner(v);
    renderDecision(v);
    renderHome(v);
    renderData(v);
    renderForm(v);
    renderSend(v);
    $("app").hidden = false;
    baseline = JSON.stringify(collect());
    $("unsaved").hidden = true;
  }

  // -- actions ---------------------------------------------------------------------------------------------

  function list(value) {
    return value.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
  }
  function numberOrNull(id) {
    var v = $(id).value.trim();
    return v === "" ? null : Number(v);
  }

  function dirty(id) { var e = $(id); return !!(e && e.dataset.dirty); }

  function collectEdits() {
    var prev = view.edits || {};
    var edits = {};
    var prevComps = {};
    (prev.components || []).forEach(function (c) { prevComps[c.type] = c; });
    var changed = !!prev.components;
    var comps = (view.prescription.components || []).map(function (c, i) {
      var p = "component-" + i;
      var e = Object.assign({}, prevComps[c.type] || { type: c.type });
      if (dirty(p + "-frequency")) { e.frequencyPerWeek = numberOrNull(p + "-frequency"); changed = true; }
      if (dirty(p + "-minutes")) { e.minutesPerSession = numberOrNull(p + "-minutes"); changed = true; }
      if (dirty(p + "-intensity")) { e.intensity = $(p + "-intensity").value; changed = true; }
      if (dirty(p + "-activities")) { e.activities = list($(p + "-activities").value); changed = true; }
      return e;
    });
    if (changed) edits.components = comps;
    if (dirty("edit-setting") || prev.setting) edits.setting = dirty("edit-setting") ? $("edit-setting").value : prev.setting;
    var note = $("notes").value.trim();
    if (note) edits.notes = note;
    var remove = (prev.removePrecautions || []).slice();
    Array.prototype.forEach.call(document.querySelectorAll('input[name="removePrecaution"]:checked'), function (cb) {
      if (remove.indexOf(cb.value) < 0) remove.push(cb.value);
    });
    if (remove.length) edits.removePrecautions = remove;
    var reasons = Object.assign({}, prev.overrideReasons || {});
    Array.prototype.forEach.call(document.querySelectorAll("#problems input[data-path]"), function (i) {
      var code = $(i.id + "-code");
      if (code && code.value) reasons[i.dataset.path] = { code: code.value, text: i.value.trim() };
    });
    if (Object.keys(reasons).length) edits.overrideReasons = reasons;
    return edits;
  }

  function collect() {
    var days = Array.prototype.filter.call(document.querySelectorAll('input[name="days"]'), function (cb) { return cb.checked; })
      .map(function (cb) { return cb.value; });
    var prefs = {
      preferredSetting: $("pref-setting").value || null,
      activities: list($("pref-activities").value),
      daysAvailable: days,
      equipment: list($("pref-equipment").value)
    };
    return { preferences: prefs, edits: collectEdits(), draftVersion: view.draftVersion };
  }

  function showProblems(body) {
    var box = clear($("problems"));
    var items = (body && body.problems) || [];
    box.hidden = false;
    box.appendChild(el("p", "The changes were not accepted:"));
    var ul = el("ul");
    if (!items.length) ul.appendChild(el("li", errorText(body, "Unknown error.")));
    items.forEach(function (p, n) {
      var li = el("li");
      li.appendChild(el("span", p.message));
      if (p.path && p.override) {
        var id = "override-" + n;
        var reasons = [["", "Choose a clinical reason…"]].concat((view.overrideReasons || []).map(function (r) { return [r.code, r.display]; }));
        var sel = selectInput(reasons, "");
        li.appendChild(field(id + "-code", "Clinical reason for overriding this limit", sel));
        var input = textInput("");
        input.dataset.path = p.path;
        li.appendChild(field(id, "Details (required for “Other clinical reason”)", input));
      }
      ul.appendChild(li);
    });
    box.appendChild(ul);
    box.setAttribute("tabindex", "-1");
    box.focus();
  }

  $("prescription-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    $("problems").hidden = true;
    $("update-button").disabled = true;
    status("Updating the prescription…");
    request("POST", api, collect()).then(function (r) {
      $("update-button").disabled = false;
      if (r.status === 200) { render(r.body); status("Prescription updated.", "ok"); return; }
      showProblems(r.body);
      status(errorText(r.body, "The update failed."), "error");
    }, function () { $("update-button").disabled = false; status("The service could not be reached.", "error"); });
  });

  function unsaved() {
    return !!view && !view.signed && baseline !== null && JSON.stringify(collect()) !== baseline;
  }
  // Unsaved changes: said beside the form as they happen, and the browser asks before the page is left.
  function markUnsaved() { $("unsaved").hidden = !unsaved(); }
  $("prescription-form").addEventListener("input", markUnsaved);
  $("prescription-form").addEventListener("change", markUnsaved);
  window.addEventListener("beforeunload", function (ev) {
    if (!unsaved() || signing) return undefined;
    ev.preventDefault();
    ev.returnValue = "";
    return "";
  });

  function signFailed(text) {
    signing = false;
    if (!view.signed) lockForm(false);
    $("sign-button").disabled = !view.writeBack.canSign;
    status(text, "error");
  }

  // Sign exactly the draft shown: the version the server last returned (and rendered into the form).
  function signShownDraft() {
    status("Signing and sending…");
    request("POST", "/smart/api/prescription/sign?s=" + encodeURIComponent(sid), { draftVersion: view.draftVersion,
      exerciseService: $("exercise-service").value || undefined })
      .then(function (r) {
        if (r.body && (r.body.written || r.body.failed)) {
          signing = false;
          var ok = r.status < 300;
          var done = function () {
            renderResult(r.body);
            $("sign-result").focus();
            status(ok ? "Signed and sent." : errorText(r.body, "Sending failed."), ok ? "ok" : "error");
            if (r.status >= 400 && !(r.body.written || []).length) {
              lockForm(false);
              // 401: the EHR session is over; signing again cannot work until the app is launched again
              $("sign-button").disabled = r.status === 401 || !view.writeBack.canSign;
            }
          };
          if (!(r.body.written || []).length) { done(); return; }
          // Written: show the stored (signed) draft in the locked form, not whatever the inputs hold.
          request("GET", api).then(function (g) { if (g.status === 200) render(g.body); done(); }, done);
          return;
        }
        signFailed(errorText(r.body, "Signing failed."));
      }, function () { signFailed("The service could not be reached."); });
  }

  $("sign-button").addEventListener("click", function () {
    if (signing) return;  // the server is idempotent too; this only spares a second request
    signing = true;
    $("sign-button").disabled = true;
    var pending = unsaved() ? collect() : null;
    lockForm(true);  // nothing may change between what is validated and what is signed
    if (!pending) { signShownDraft(); return; }
    // Unsaved edits: validate and save them through the edit API first; sign only if they are accepted.
    $("problems").hidden = true;
    status("Saving your changes before signing…");
    request("POST", api, pending).then(function (r) {
      if (r.status === 200) { render(r.body); lockForm(true); signShownDraft(); return; }
      signing = false;
      lockForm(false);
      $("sign-button").disabled = !view.writeBack.canSign;
      showProblems(r.body);
      status("Not signed: your changes were not accepted. " + errorText(r.body, "") + " Correct them, then sign again.",
             "error");
    }, function () { signFailed("The service could not be reached; nothing was signed."); });
  });

  function load() {
    // Framed by the EHR: the session cookie is partitioned under the EHR's site, so a new top-level tab would
    // not have it. Open the handout in this frame instead (it links back here).
    if (window.self !== window.top) $("handout-link").target = "_self";
    var embedded = $("initial-data");
    if (embedded) {
      try { render(JSON.parse(embedded.textContent)); status("Ready.", "ok"); return; } catch (e) { /* fall through */ }
    }
    request("GET", api).then(function (r) {
      if (r.status === 200) { render(r.body); status("Ready.", "ok"); return; }
      status(errorText(r.body, "The prescription could not be loaded."), "error");
    }, function () { status("The service could not be reached.", "error"); });
  }
  load();
})();
