"""Issue 6 "Accessible (labels, keyboard, contrast) and works on a tablet-sized screen", checked in headless
Chromium on every page a person uses: the SMART app after an EHR launch (as loaded, with the server's edit
problems and their override inputs, and signed), its handout, the sandbox EHR screen, a chart with a CDS card
(override form open), the exercise-service inbox (list and task) and the authorization server's patient picker.

Per page: every form control and link has an accessible name, images have alt, the page has a `lang`, a title,
one `h1` and one `main`; Tab reaches the page's main actions and every tab stop shows a focus indicator that
differs from its unfocused look and stands out from its surroundings (>= 3:1, WCAG 1.4.11); visible text has a
contrast ratio >= 4.5:1 (3:1 for large text) against its effective background (relative luminance computed
here, in Python, from the computed colours); at 768x1024 and 1024x768 nothing scrolls sideways and the main
actions lie inside the viewport and are at least 44 px touch targets. Problems are collected per test and
reported together; screenshots (full pages, and the first main action focused) go to tests/artifacts/a11y/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.e2e.conftest import Sandbox, ehr_launch_page
from tests.support.browser import inbox_sign_in

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "a11y"
TABLETS = [(768, 1024), (1024, 768)]
DESKTOP = {"width": 1280, "height": 900}
MIN_TARGET_PX = 44  # the main actions are touch targets on a tablet (WCAG 2.5.5; docs/smart-app.md promises it)
MAX_TAB_STOPS = 160  # more than any of our pages has; a page with more would be a keyboard problem anyway

CARD_PATIENT = "onc-25"  # breast cancer after lumpectomy, radiotherapy week 3: an info card with a suggestion
APP_PATIENT = "onc-07"   # prostate cancer, radiotherapy week 5 of 8: fit; signed here, so the inbox has a task

# -- contrast (WCAG 2.2, 1.4.3): computed here, not by the browser --------------------------------------------

RGBA = tuple[float, float, float, float]
_COLOR = re.compile(r"rgba?\(\s*([\d.]+)[,\s]+([\d.]+)[,\s]+([\d.]+)(?:\s*[,/]\s*([\d.]+%?))?\s*\)")


def parse_color(css: str) -> RGBA:
    """A computed CSS colour ("rgb(r, g, b)" / "rgba(r, g, b, a)") as floats 0..255 and alpha 0..1."""
    m = _COLOR.fullmatch(css.strip())
    if not m:
        raise ValueError(f"unexpected computed colour {css!r}")
    a = m.group(4)
    alpha = 1.0 if a is None else (float(a[:-1]) / 100 if a.endswith("%") else float(a))
    return float(m.group(1)), float(m.group(2)), float(m.group(3)), alpha


def over(top: RGBA, below: RGBA) -> RGBA:
    """Source-over compositing of `top` on an opaque `below`."""
    a = top[3]
    return (top[0] * a + below[0] * (1 - a), top[1] * a + below[1] * (1 - a), top[2] * a + below[2] * (1 - a), 1.0)


def relative_luminance(c: RGBA) -> float:
    def lin(v: float) -> float:
        v /= 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])


def contrast_ratio(a: RGBA, b: RGBA) -> float:
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def rendered(layers: list[dict[str, Any]], fg: RGBA | None) -> RGBA:
    """The colour of one pixel: each layer (outermost first) paints its background over what is behind it and
    its `opacity` fades its whole subtree (text included) into that backdrop; the text is painted last."""
    def paint(i: int, backdrop: RGBA) -> RGBA:
        if i == len(layers):
            return over(fg, backdrop) if fg else backdrop
        inner = paint(i + 1, over(parse_color(layers[i]["bg"]), backdrop))
        o = layers[i]["opacity"]
        return over((inner[0], inner[1], inner[2], o), backdrop)

    return paint(0, (255.0, 255.0, 255.0, 1.0))  # the canvas behind an unpainted root is white


def text_contrast(sample: dict[str, Any]) -> float:
    fg = parse_color(sample["fg"])
    return contrast_ratio(rendered(sample["layers"], fg), rendered(sample["layers"], None))


def is_large_text(sample: dict[str, Any]) -> bool:
    """WCAG large text: at least 18 pt (24 px), or 14 pt (18.66 px) bold."""
    return sample["size"] >= 24 or (sample["size"] >= 18.66 and sample["weight"] >= 700)


def test_contrast_formula_matches_wcag_reference_values() -> None:
    white, black = (255.0, 255.0, 255.0, 1.0), (0.0, 0.0, 0.0, 1.0)
    assert contrast_ratio(black, white) == pytest.approx(21.0)
    assert contrast_ratio(white, white) == pytest.approx(1.0)
    assert contrast_ratio(parse_color("rgb(118, 118, 118)"), white) == pytest.approx(4.54, abs=0.01)  # #767676
    assert contrast_ratio(parse_color("rgb(119, 119, 119)"), white) < 4.5  # #777 fails
    # Half-transparent black text on white renders as #808080 (3.95:1); opacity fades into the backdrop.
    sample = {"fg": "rgba(0, 0, 0, 0.5)", "layers": [{"bg": "rgba(0, 0, 0, 0)", "opacity": 1.0}]}
    assert text_contrast(sample) == pytest.approx(contrast_ratio((127.5, 127.5, 127.5, 1), white), abs=0.01)
    faded = {"fg": "rgb(0, 0, 0)", "layers": [{"bg": "rgb(255, 255, 255)", "opacity": 0.5}]}
    assert text_contrast(faded) == pytest.approx(text_contrast(sample), abs=0.01)
    with pytest.raises(ValueError):
        parse_color("color(srgb 1 0 0)")
    # A focus ring: GOV.UK yellow alone on white is too faint (1.7:1); with a dark second colour it stands out.
    plain = [{"bg": "rgb(255, 255, 255)", "opacity": 1.0}]
    yellow = {"outlineStyle": "solid", "outlineWidth": 3.0, "outlineColor": "rgb(255, 191, 71)", "boxShadow": "none"}
    assert focus_indicator_contrast(yellow, plain) < 3
    assert focus_indicator_contrast({**yellow, "boxShadow": "rgb(11, 12, 12) 0px 0px 0px 5px"}, plain) > 3
    assert focus_indicator_contrast(yellow, [{"bg": "rgb(11, 79, 113)", "opacity": 1.0}]) > 3  # on a dark bar


# -- in-page scripts (function expressions: Playwright calls them, so the SMART app's CSP allows them) --------

STRUCTURE_JS = """() => {
  const t = s => (s || '').replace(/\\s+/g, ' ').trim();
  const name = el => {
    const aria = t(el.getAttribute('aria-label'));
    if (aria) return aria;
    const ids = el.getAttribute('aria-labelledby');
    if (ids) {
      const s = t(ids.split(/\\s+/).map(id => (document.getElementById(id) || {}).textContent || '').join(' '));
      if (s) return s;
    }
    if (el.labels && el.labels.length) {
      const s = t([...el.labels].map(l => l.textContent).join(' '));
      if (s) return s;
    }
    if (el.tagName === 'BUTTON' || el.tagName === 'A' || el.tagName === 'SUMMARY') {
      const s = t(el.textContent);
      if (s) return s;
    }
    if (el.tagName === 'INPUT' && ['submit', 'button', 'reset'].includes(el.type)) return t(el.value);
    if (el.tagName === 'INPUT' && el.type === 'image') return t(el.alt);
    return t(el.getAttribute('title'));
  };
  const describe = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.name ? '[name=' + el.name + ']' : '') + (el.type ? '[type=' + el.type + ']' : '');
  const controls = [...document.querySelectorAll('input, select, textarea, button, summary, a[href]')]
    .filter(el => !(el.tagName === 'INPUT' && el.type === 'hidden'));
  return {
    lang: document.documentElement.getAttribute('lang') || '',
    title: t(document.title),
    h1: [...document.querySelectorAll('h1')].map(h => t(h.textContent)),
    main: document.querySelectorAll('main, [role=main]').length,
    unnamed: controls.filter(el => !name(el)).map(describe),
    controls: controls.length,
    imagesWithoutAlt: [...document.querySelectorAll('img:not([alt]), [role=img]:not([aria-label]):not([aria-labelledby])')]
      .map(el => el.outerHTML.slice(0, 120)),
  };
}"""

TEXT_JS = """() => {
  const samples = [];
  const layersOf = el => {
    const chain = [];
    for (let e = el; e; e = e.parentElement) chain.unshift(e);
    return chain.map(e => {
      const cs = getComputedStyle(e);
      return { bg: cs.backgroundColor, opacity: parseFloat(cs.opacity), image: cs.backgroundImage !== 'none' };
    });
  };
  const fieldTypes = ['text', 'number', 'url', 'email', 'search', 'tel', 'date'];
  for (const el of document.body.querySelectorAll('*')) {
    if (['SCRIPT', 'STYLE', 'NOSCRIPT', 'OPTION', 'TEMPLATE'].includes(el.tagName)) continue;
    const field = (el.tagName === 'INPUT' && fieldTypes.includes(el.type) && el.value) ||
                  (el.tagName === 'TEXTAREA' && el.value) || el.tagName === 'SELECT';
    const own = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join(' ').trim();
    if (!own && !field) continue;
    if (!el.checkVisibility({ opacityProperty: true, visibilityProperty: true })) continue;
    const r = el.getBoundingClientRect();
    if (r.width <= 1 || r.height <= 1 || r.right <= 0 || r.bottom <= 0) continue;  // sr-only, off-screen skip links
    if (el.closest(':disabled, [aria-disabled=true]')) continue;  // WCAG exempts inactive controls
    const cs = getComputedStyle(el);
    const text = own || (el.tagName === 'SELECT' ? (el.selectedOptions[0] || {}).textContent || '' : el.value);
    samples.push({
      where: el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\\s+/).join('.') : ''),
      text: text.replace(/\\s+/g, ' ').trim().slice(0, 60),
      fg: cs.color, size: parseFloat(cs.fontSize), weight: parseInt(cs.fontWeight, 10) || 400,
      layers: layersOf(el),
    });
  }
  return samples;
}"""

TAB_STEP_JS = """() => {
  const a = document.activeElement;
  if (!a || a === document.body || a === document.documentElement) return null;
  window.__a11yStops = window.__a11yStops || [];
  const seen = window.__a11yStops.indexOf(a);
  if (seen >= 0) return { repeat: seen };
  window.__a11yStops.push(a);
  const cs = getComputedStyle(a);
  const t = s => (s || '').replace(/\\s+/g, ' ').trim();
  const layersOf = el => {
    const chain = [];
    for (let e = el; e; e = e.parentElement) chain.unshift(e);
    return chain.map(e => {
      const s = getComputedStyle(e);
      return { bg: s.backgroundColor, opacity: parseFloat(s.opacity), image: s.backgroundImage !== 'none' };
    });
  };
  return {
    around: layersOf(a.parentElement),
    desc: a.tagName.toLowerCase() + (a.id ? '#' + a.id : '') + ' "' + t(a.textContent || a.value || '').slice(0, 40) + '"',
    target: a.dataset.a11yTarget || null,
    focused: { outlineStyle: cs.outlineStyle, outlineWidth: parseFloat(cs.outlineWidth), outlineColor: cs.outlineColor,
               boxShadow: cs.boxShadow },
  };
}"""

UNFOCUSED_JS = """() => {
  if (document.activeElement) document.activeElement.blur();
  return (window.__a11yStops || []).map(el => {
    const cs = getComputedStyle(el);
    return { outlineStyle: cs.outlineStyle, outlineWidth: parseFloat(cs.outlineWidth), outlineColor: cs.outlineColor,
             boxShadow: cs.boxShadow };
  });
}"""

WIDTH_JS = "() => ({ scroll: document.documentElement.scrollWidth, inner: window.innerWidth })"


# -- checks ---------------------------------------------------------------------------------------------------

def check_structure(page: Page, where: str, problems: list[str]) -> None:
    s = page.evaluate(STRUCTURE_JS)
    if not s["lang"]:
        problems.append(f"{where}: <html> has no lang")
    if not s["title"]:
        problems.append(f"{where}: the page has no <title>")
    if len(s["h1"]) != 1:
        problems.append(f"{where}: {len(s['h1'])} h1 elements {s['h1']} (want exactly one)")
    if s["main"] != 1:
        problems.append(f"{where}: {s['main']} main landmarks (want one)")
    if s["unnamed"]:
        problems.append(f"{where}: controls without an accessible name: {s['unnamed']}")
    if s["imagesWithoutAlt"]:
        problems.append(f"{where}: images without alt: {s['imagesWithoutAlt']}")
    assert s["controls"] > 0, f"{where}: no controls found: the page did not render"


def check_contrast(page: Page, where: str, problems: list[str]) -> None:
    samples = page.evaluate(TEXT_JS)
    assert len(samples) >= 5, f"{where}: hardly any visible text ({len(samples)}): the page did not render"
    low = []
    for s in samples:
        if any(layer["image"] for layer in s["layers"]):
            low.append(f"{s['where']} {s['text']!r}: background image, contrast not computable")
            continue
        ratio, need = text_contrast(s), (3.0 if is_large_text(s) else 4.5)
        if ratio < need:
            low.append(f"{s['where']} {s['text']!r}: {ratio:.2f}:1 < {need}:1 ({s['fg']} on "
                       f"{[layer['bg'] for layer in s['layers'] if not layer['bg'].endswith(', 0)')][-1:]})")
    if low:
        problems.append(f"{where}: low text contrast:\n    " + "\n    ".join(low))


def _indicator_colors(style: dict[str, Any]) -> list[RGBA]:
    """The colours a focus indicator paints: the outline's and every box-shadow's (transparent ones dropped)."""
    colors = []
    if style["outlineStyle"] != "none" and style["outlineWidth"] > 0:
        colors.append(parse_color(style["outlineColor"]))
    if style["boxShadow"] != "none":
        colors += [parse_color(m.group(0)) for m in _COLOR.finditer(style["boxShadow"])]
    return [c for c in colors if c[3] > 0]


def focus_indicator_contrast(style: dict[str, Any], around: list[dict[str, Any]]) -> float:
    """WCAG 1.4.11: the best contrast of the indicator's colours against what surrounds the element (a
    two-colour indicator passes where either colour stands out)."""
    backdrop = rendered(around, None)
    return max((contrast_ratio(rendered(around, c), backdrop) for c in _indicator_colors(style)), default=1.0)


def check_keyboard(page: Page, where: str, targets: dict[str, Locator], problems: list[str],
                   shot: str | None = None) -> list[str]:
    """Tab through the page from wherever focus is; every main action must be reached, and every tab stop must
    show a focus indicator that its unfocused state does not have. Returns the tab order (descriptions)."""
    for name, loc in targets.items():
        expect(loc).to_be_visible()
        loc.evaluate("(el, name) => { el.dataset.a11yTarget = name; }", name)
    page.evaluate("() => { window.__a11yStops = []; }")
    stops: list[dict[str, Any]] = []
    blanks = 0
    for _ in range(MAX_TAB_STOPS):
        page.keyboard.press("Tab")
        step = page.evaluate(TAB_STEP_JS)
        if step is None:  # focus went to the document or browser chrome between cycles
            blanks += 1
            if blanks > 2:
                break
            continue
        if "repeat" in step:  # back at a stop already seen: one full cycle
            break
        stops.append(step)
        if shot and step["target"] == next(iter(targets), None):  # how the focus ring looks, for a person
            page.screenshot(path=str(ARTIFACTS / f"{shot}-focus.png"))
    else:
        problems.append(f"{where}: more than {MAX_TAB_STOPS} tab stops without cycling")
    unfocused = page.evaluate(UNFOCUSED_JS)
    reached = {s["target"] for s in stops if s["target"]}
    for name in targets:
        if name not in reached:
            problems.append(f"{where}: Tab never reaches {name!r} (order: {[s['desc'] for s in stops]})")
    found: dict[str, list[str]] = {}
    for step, before in zip(stops, unfocused):
        focused = step["focused"]
        if not _indicator_colors(focused):
            found.setdefault("no visible focus indicator", []).append(f"{step['desc']} {focused}")
        elif focused == before:
            found.setdefault("looks the same focused and unfocused", []).append(f"{step['desc']} {focused}")
        elif (ratio := focus_indicator_contrast(focused, step["around"])) < 3.0:
            found.setdefault("focus indicator below 3:1 against its surroundings", []).append(
                f"{step['desc']} {ratio:.2f}:1 ({focused['outlineColor']}; shadow {focused['boxShadow']})")
    for what, items in found.items():  # one line per kind of problem: a page-wide style fails on every stop
        problems.append(f"{where}: {what} on {len(items)} of {len(stops)} tab stops, e.g. " + "; ".join(items[:4]))
    return [s["desc"] for s in stops]


def check_tablet(page: Page, where: str, slug: str, targets: dict[str, Locator], problems: list[str],
                 sizes: list[tuple[int, int]] = TABLETS) -> None:
    for width, height in sizes:
        page.set_viewport_size({"width": width, "height": height})
        expect(page.locator("main")).to_be_visible()
        size = page.evaluate(WIDTH_JS)
        if size["scroll"] > size["inner"]:
            problems.append(f"{where} at {width}x{height}: scrolls sideways (scrollWidth {size['scroll']} > "
                            f"{size['inner']})")
        for name, loc in targets.items():
            box = loc.bounding_box()
            if box is None or box["width"] < 1:
                problems.append(f"{where} at {width}x{height}: {name!r} is not shown")
            elif box["x"] < 0 or box["x"] + box["width"] > size["inner"] + 0.5:
                problems.append(f"{where} at {width}x{height}: {name!r} lies outside the viewport ({box})")
            elif min(box["width"], box["height"]) < MIN_TARGET_PX - 0.5:
                problems.append(f"{where} at {width}x{height}: {name!r} is too small to tap "
                                f"({box['width']:.0f}x{box['height']:.0f} px < {MIN_TARGET_PX} px)")
        page.screenshot(path=str(ARTIFACTS / f"{slug}-{width}x{height}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)


def audit(page: Page, where: str, slug: str, targets: dict[str, Locator], problems: list[str],
          tablet: bool = True, sizes: list[tuple[int, int]] = TABLETS) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{slug}-1280.png"), full_page=True)
    check_structure(page, where, problems)
    check_contrast(page, where, problems)
    check_keyboard(page, where, targets, problems, shot=slug)
    if tablet:
        check_tablet(page, where, slug, targets, problems, sizes)


def report(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} accessibility problem(s):\n- " + "\n- ".join(problems)


@pytest.fixture(scope="module", autouse=True)
def artifacts() -> Iterator[None]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    yield


# -- the pages ------------------------------------------------------------------------------------------------

def test_ehr_screen_and_chart_with_card(page: Page, sandbox: Sandbox) -> None:
    problems: list[str] = []
    page.goto(f"{sandbox.url}/sandbox/")
    expect(page.get_by_role("heading", name="Today's clinic")).to_be_visible()
    row = page.locator("li.patient").filter(has=page.locator("code", has_text=re.compile(f"^{CARD_PATIENT}$")))
    audit(page, "EHR screen", "ehr-screen", {
        "first Open encounter": page.get_by_role("link", name="Open encounter").first,
        f"Open encounter ({CARD_PATIENT})": row.get_by_role("link", name="Open encounter"),
    }, problems)

    page.goto(f"{sandbox.url}/sandbox/patients/{CARD_PATIENT}?encounter=enc-{CARD_PATIENT}")
    card = page.locator("article.card.info").first
    expect(card).to_be_visible()
    # The override form opens from the keyboard (Enter on its summary); its controls are then audited too.
    summary = card.locator("details.override summary")
    summary.focus()
    page.keyboard.press("Enter")
    expect(card.locator("details.override")).to_have_attribute("open", "")
    audit(page, "Chart with a card", "chart-card", {
        "card Accept": card.get_by_role("button", name=re.compile(r"^Accept: ")),
        "card launch": card.get_by_role("button", name=re.compile(r"Review and sign")),
        "card Dismiss summary": summary,
        "card Dismiss": card.get_by_role("button", name="Dismiss", exact=True),
    }, problems)
    report(problems)


def test_smart_app_handout_and_inbox(page: Page, sandbox: Sandbox) -> None:
    problems: list[str] = []
    ehr_launch_page(page, sandbox, APP_PATIENT)
    targets = {"Update prescription": page.locator("#update-button"), "Patient handout": page.locator("#handout-link"),
               "Sign & send": page.locator("#sign-button")}
    audit(page, "SMART app", "app", targets, problems)

    # An unsafe edit (swimming during radiotherapy): the server's problems come back with override inputs the
    # page builds itself; they need names, contrast and a place in the tab order too. Nothing is saved.
    page.locator("#component-0-activities").fill("swimming")
    page.locator("#update-button").click()
    expect(page.locator("#problems")).to_be_visible()
    audit(page, "SMART app, edit problems", "app-problems", {
        "override reason": page.locator("#problems select").first,
        "override explanation": page.locator("#problems input").first,
        "Update prescription": page.locator("#update-button"),
    }, problems, tablet=False)
    page.reload()
    expect(page.locator("#status")).to_have_text("Ready.")
    expect(page.locator("#component-0-activities")).not_to_have_value("swimming")

    handout = page.context.new_page()
    handout.goto(f"{sandbox.url}{page.locator('#handout-link').get_attribute('href')}")
    expect(handout.locator("#handout-title")).to_be_visible()
    audit(handout, "Handout", "handout", {"Print": handout.locator("#print-button")}, problems)
    handout.close()

    # Sign & send from the keyboard; the signed page (result table, locked form) is audited too.
    page.locator("#sign-button").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text("Signed and sent.")
    expect(page.locator("#written tbody tr").first).to_be_visible()
    audit(page, "SMART app, signed", "app-signed", {"Patient handout": page.locator("#handout-link")}, problems)

    [task_id] = [r.locator("td").nth(1).inner_text().strip() for r in page.locator("#written tbody tr").all()
                 if r.locator("td").first.inner_text().strip() == "Task"]
    page.goto(f"{sandbox.url}/sandbox/exercise-service/")
    inbox_sign_in(page)
    expect(page.get_by_role("heading", name="Referrals")).to_be_visible()
    open_link = page.locator(f"a[href='/sandbox/exercise-service/tasks/{task_id}']")
    audit(page, "Inbox list", "inbox-list", {"Open referral": open_link}, problems)

    open_link.click()
    expect(page.locator("section.banner .status")).to_have_text("requested")
    audit(page, "Inbox task", "inbox-task", {
        "Accept": page.get_by_role("button", name="Accept", exact=True),
        "Reject": page.get_by_role("button", name=re.compile("^Reject")),
    }, problems)
    report(problems)


def test_auth_server_patient_picker(page: Page, sandbox: Sandbox) -> None:
    """A standalone launch: the sandbox authorization server asks who signs in and for which patient."""
    problems: list[str] = []
    page.goto(f"{sandbox.url}/smart/launch?" + urlencode({"iss": sandbox.fhir_base}))
    page.wait_for_url(re.compile(r"/sandbox/auth/authorize"))
    expect(page.get_by_label("Patient")).to_be_visible()
    audit(page, "Patient picker", "auth-picker", {
        "Sign in as": page.get_by_label("Sign in as"), "Patient": page.get_by_label("Patient"),
        "Allow": page.get_by_role("button", name="Allow"), "Deny": page.get_by_role("button", name="Deny"),
    }, problems)
    report(problems)


PHONE = (360, 740)
COMPANION_PATIENT = "onc-20"


def test_patient_companion_at_phone_and_tablet_sizes(page: Page, sandbox: Sandbox) -> None:
    """Issue 15: the patient's own page, as the patient opens it (the sandbox's patient login), after a red-flag
    answer (the advice box is audited too): names, contrast, keyboard, and at 360 px nothing scrolls sideways and
    the buttons are touch targets."""
    import httpx

    from tests.notify.conftest import sign

    problems: list[str] = []
    with httpx.Client(base_url=sandbox.url, timeout=60) as clinician:
        assert sign(clinician, COMPANION_PATIENT, service=None)["status"] == "sent"
    page.goto(f"{sandbox.url}/patient/launch")
    page.locator("#patient").select_option(COMPANION_PATIENT)
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(re.compile(r"/patient/app\?s="))
    page.locator("#check-form input[name=fever]").check()
    page.locator("#check-form button[type=submit]").click()
    expect(page.locator("#answer")).to_contain_text("24-hour cancer helpline")
    audit(page, "Patient companion", "companion", {
        "Save": page.locator("#log-form button[type=submit]"),
        "Send check-in": page.locator("#check-form button[type=submit]"),
        "minutes": page.locator("#minutes"),
    }, problems, sizes=[PHONE, *TABLETS])
    report(problems)
