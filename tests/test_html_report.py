"""The HTML validation report: one self-contained file that a real browser (Debian's chromium,
headless, driven by Playwright) opens without a console error, showing every experiment, the
maps side by side, the traces, and any difference highlighted."""
from __future__ import annotations

import copy
import os
import shutil
import sys
from html.parser import HTMLParser

import pytest

from shmkit import spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXPERIMENTS = ["mmap-private-anon", "fork-cow-private"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def validated():
    if not sys.platform.startswith("linux"):
        pytest.skip("live runs need Linux")
    from shmkit import record
    from shmkit.probe import load_or_probe
    from shmkit.validate import summary, validate_experiment

    profile, probed = load_or_probe("/nonexistent/shmkit-test-probe.json")   # probes now, stores nothing
    results = [validate_experiment(spec.load(os.path.join(ROOT, "experiments", f"{n}.toml")), profile)
               for n in EXPERIMENTS]
    doc = record.document("validate", results, profile, "test")
    doc["summary"] = summary(results)
    doc["probed"] = probed
    return doc


def _mismatched(doc: dict) -> dict:
    """The same document with one predicted fault count changed and the comparison redone."""
    from shmkit import record
    from shmkit.compare import count_fields, differences

    doc = copy.deepcopy(doc)
    r = doc["experiments"][0]
    r["predicted"]["steps"][1]["faults"]["minor"] += 1
    d = differences(record.normalise(r["live"]), record.normalise(r["predicted"]))
    r["status"] = "mismatch"
    r["comparison"].update(differences=[vars(x) for x in d], matched=count_fields(record.normalise(r["live"])) - len(d),
                           first=str(d[0]))
    return doc


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.scripts, self.external = set(), 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "script":
            self.scripts += 1
        for k in ("src", "href"):
            if a.get(k) and not a[k].startswith("#"):
                self.external.append(a[k])


@pytest.mark.live
def test_report_is_self_contained_and_shows_every_experiment(validated):
    from shmkit.html_report import render_html

    text = render_html(validated)
    p = _Ids()
    p.feed(text)
    assert {f"exp-{n}" for n in EXPERIMENTS} <= p.ids
    assert p.scripts == 0 and p.external == [], "the report must load nothing from elsewhere"
    assert text.count("<svg") >= 2 * len(EXPERIMENTS)       # faults and layout plots
    assert "why: 4 × do_anonymous_page" in text               # the model's explanation
    assert "<td>fault_around_pages</td><td>16</td><td>probed</td>" in text
    assert "<td>page_size</td><td>4096</td><td>read</td>" in text


@pytest.mark.live
def test_a_mismatch_is_highlighted(validated):
    from shmkit.html_report import render_html

    text = render_html(_mismatched(validated))
    assert "MISMATCH" in text and 'class="step bad"' in text and 'class="diff"' in text
    assert "faults.minor" in text


@pytest.mark.live
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(validated, tmp_path):
    pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from shmkit.html_report import write_html

    out = tmp_path / "report.html"
    write_html(_mismatched(validated), str(out))
    errors = []
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(out.as_uri())
            page.wait_for_load_state("load")
            assert page.title() == "shmkit validate"
            for n in EXPERIMENTS:
                sec = page.locator(f"#exp-{n}")
                assert sec.count() == 1 and n in sec.inner_text()
            assert page.locator(".maps").count() >= 9         # side-by-side maps of every step
            assert page.locator("svg").count() >= 2 * len(EXPERIMENTS)
            assert page.locator(".step.bad").count() >= 1
            shot = page.screenshot(full_page=True)
            assert len(shot) > 10_000
        finally:
            browser.close()
    assert errors == [], f"console errors: {errors}"
