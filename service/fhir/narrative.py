"""Human-readable renderings of a Prescription: the CarePlan narrative and the printable document.

One renderer so the EHR narrative, the DocumentReference and the exercise service all read the same words.
Output is FHIR-safe XHTML (no scripts, styles or event attributes) and every value is escaped.
"""

from __future__ import annotations

from html import escape

from service.clinical.model import Component, Intensity, PatientSnapshot, Prescription

XHTML_NS = "http://www.w3.org/1999/xhtml"


COMPONENT_LABELS: dict[str, str] = {
    "aerobic": "Aerobic",
    "resistance": "Resistance (strength)",
    "flexibility": "Flexibility",
    "balance": "Balance",
}


def setting_label(setting: str) -> str:
    from service.terminology import setting_name

    return setting_name(setting)


def intensity_text(intensity: Intensity) -> str:
    """E.g. "moderate (RPE 6-20: 12-13; 40-59% heart-rate reserve)"."""
    details: list[str] = []
    if intensity.low is not None or intensity.high is not None:
        lo = _num(intensity.low) if intensity.low is not None else ""
        hi = _num(intensity.high) if intensity.high is not None else ""
        rng = f"{lo}-{hi}" if lo and hi and lo != hi else (lo or hi)
        details.append(f"{intensity.scale}: {rng}" if intensity.scale else rng)
    elif intensity.scale:
        details.append(intensity.scale)
    if intensity.hrr_low_pct is not None and intensity.hrr_high_pct is not None:
        details.append(f"{intensity.hrr_low_pct}-{intensity.hrr_high_pct}% heart-rate reserve")
    return f"{intensity.label} ({'; '.join(details)})" if details else intensity.label


def component_summary(c: Component) -> str:
    """One line of FITT, e.g. "Aerobic: 3x/week, 30 min, moderate (RPE 6-20: 12-13): walking, cycling"."""
    text = f"{COMPONENT_LABELS.get(c.type, c.type)}: {c.frequency_per_week}x/week, {c.minutes_per_session} min"
    text += f", {intensity_text(c.intensity)}"
    if c.sets or c.repetitions:
        text += f", {c.sets or ''}{' sets' if c.sets else ''}{' of ' if c.sets and c.repetitions else ''}"
        text += f"{c.repetitions or ''}{' repetitions' if c.repetitions else ''}"
    if c.activities:
        text += ": " + ", ".join(c.activities)
    return text


def prescription_html(prescription: Prescription, snapshot: PatientSnapshot) -> str:
    """The narrative `<div>` (FHIR XHTML) of the prescription: setting, FITT, precautions, stop rules, why."""
    p = prescription
    parts: list[str] = [f'<div xmlns="{XHTML_NS}">', "<h2>Exercise prescription</h2>"]
    parts.append(f"<p><b>Setting:</b> {escape(setting_label(p.setting))}</p>")
    if p.clearance_required:
        parts.append("<p><b>Medical clearance is required before starting.</b></p>")
    if p.components:
        parts.append("<h3>What to do (FITT)</h3><table><thead><tr><th>Type</th><th>Frequency</th>"
                     "<th>Time</th><th>Intensity</th><th>Activities</th></tr></thead><tbody>")
        for c in p.components:
            extra = ""
            if c.sets or c.repetitions:
                extra = f" ({c.sets or '?'} sets of {c.repetitions or '?'} repetitions)"
            parts.append(
                "<tr>"
                f"<td>{escape(COMPONENT_LABELS.get(c.type, c.type))}</td>"
                f"<td>{c.frequency_per_week} x/week</td>"
                f"<td>{c.minutes_per_session} min{escape(extra)}</td>"
                f"<td>{escape(intensity_text(c.intensity))}</td>"
                f"<td>{escape(', '.join(c.activities + c.notes))}</td>"
                "</tr>"
            )
        parts.append("</tbody></table>")
    _list(parts, "How to progress", p.progression)
    if p.precautions:
        _list(parts, "Precautions", [f"{x.text} (rule {x.rule}; {x.source})" for x in p.precautions])
    _list(parts, "Stop exercising and seek advice if", p.stop_rules)
    if p.red_flags:
        _list(parts, "Red flags", [f"{r.finding}: {r.effect}" for r in p.red_flags])
    if p.missing_data:
        _list(parts, "Missing data", [f"{m.text} {m.recommendation}".strip() for m in p.missing_data])
    if p.rationale:
        _list(parts, "Why", [f"{r.finding} \u2192 {r.effect} (rule {r.rule}; {r.source})" for r in p.rationale])
    _list(parts, "Notes", p.notes)
    parts.append(f"<p>Rule set {escape(p.ruleset_version)}; generated {escape(p.generated_at.isoformat())}.</p>")
    parts.append("</div>")
    return "".join(parts)


def prescription_document_html(prescription: Prescription, snapshot: PatientSnapshot, *,
                               signed_by: str | None = None, signed_at: str | None = None) -> str:
    """A complete printable HTML page (the DocumentReference attachment) around the narrative."""
    body = prescription_html(prescription, snapshot)
    signed = ""
    if signed_by or signed_at:
        signed = f"<p>Signed by {escape(signed_by or 'the ordering clinician')}"
        signed += f" on {escape(signed_at)}" if signed_at else ""
        signed += ".</p>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            "<title>Exercise prescription</title></head><body>" + body + signed + "</body></html>\n")


def _list(parts: list[str], title: str, items: tuple[str, ...] | list[str]) -> None:
    if not items:
        return
    parts.append(f"<h3>{escape(title)}</h3><ul>")
    parts.extend(f"<li>{escape(item)}</li>" for item in items)
    parts.append("</ul>")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
