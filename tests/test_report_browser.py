r"""The published reports in a real browser: Debian's chromium, driven by Playwright through its
executable path (no `playwright install` download), opens the report that the tests' own small
run renders, and the comparison of that run with a second one (tinylab compare), and finds no
console error, every image decoded (naturalWidth > 0) and every table whole (as many rows in the
page as the table's data: `data-rows`, written by tinylab.analysis.formatting; the deviations
and steps tables also counted from the run itself).

The fixture installs chromium when it is missing (root, apt-get, as tests/test_slurm.py does);
skipped, with the reason, without root, apt-get or the playwright package.

    python -m pytest -q tests/test_report_browser.py

TINYLAB_REPORTS=LABEL=PATH[,LABEL=PATH...] opens those reports too, and with
TINYLAB_SCREENSHOTS=FOLDER the test writes PNG screenshots of them (1280 CSS pixels wide) into
FOLDER: LABEL-full.png (the whole page) and, of a run report, the clips in CLIPS. The docs'
screenshots, from the demo run (re-rendered first, so it shows the current report):

    tinylab report outputs/runs/demo
    TINYLAB_REPORTS=report=outputs/runs/demo/report.html TINYLAB_SCREENSHOTS=docs \
        python -m pytest -q tests/test_report_browser.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _analysis_fixtures import CHILD, STAGES, write_run, write_stage
from _debian import apt_install

from tinylab.analysis import deviations
from tinylab.analysis.compare import write_comparison
from tinylab.analysis.publish import render_report
from tinylab.analysis.runs import load_run
from tinylab.layout import RunLayout

pytestmark = pytest.mark.slow

SCREENSHOTS = os.environ.get("TINYLAB_SCREENSHOTS")
GIVEN = dict(
    pair.split("=", 1) for pair in os.environ.get("TINYLAB_REPORTS", "").split(",") if pair
)
WIDTH = 1280  # CSS pixels of the page the screenshots show
CLIPS = {  # LABEL-name.png: the page from one heading to the next one named (None: the top)
    "screenshot": ("Held-out bits per byte by domain", "Stage contributions"),
    "screenshot-contributions": ("Stage contributions", "Benchmarks"),
    "screenshot-variants": ("Variant effects", "Beside the paper's numbers"),
    "screenshot-provenance": (None, "Training curves"),
    "screenshot-paper": ("Beside the paper's numbers", "Deviations from the paper"),
    "screenshot-curves": ("Training curves", "Held-out bits per byte by domain"),
    "screenshot-benchmarks": ("Benchmarks", "Throughput"),
}

# what the page says about itself, read in the browser
PAGE_FACTS = """() => {
  let heading = null;
  const tables = [];
  for (const e of document.querySelectorAll("h1, h2, table")) {  // in document order
    if (e.tagName !== "TABLE") { heading = e.textContent.replace("\u00b6", "").trim(); continue; }
    const rows = e.tBodies.length ? e.tBodies[0].rows.length : 0;
    tables.push({heading, rows, data: e.getAttribute("data-rows")});
  }
  return {
    tables,
    images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth})),
    ellipsis: [...document.querySelectorAll("td, th")].some(c => c.textContent.trim() === "..."),
  };
}"""


# each h2's distance from the top of the page, by its text
HEADING_TOPS = """() => Object.fromEntries([...document.querySelectorAll("h2")].map(h => [
  h.textContent.replace("\u00b6", "").trim(), h.getBoundingClientRect().top + window.scrollY - 16
]))"""


def _chromium() -> str:
    """The system chromium's path, installed with apt-get when missing (root only)."""
    found = shutil.which("chromium")
    if found:
        return found
    apt_install(["chromium"], "chromium")
    return shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs it")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    """The analysis tests' run with a manifest as `tinylab run` leaves it while its report step
    runs: every step done but the report, which is running."""
    run = RunLayout(write_run(tmp_path_factory.mktemp("browser") / "run"))
    names = ["prepare", *(n for s in STAGES for n in (s, f"eval-{s}")), "report"]
    steps = {n: {"status": "done", "seconds": 1234.5678} for n in names}
    steps["report"] = {"status": "running"}
    pipeline = {"steps": [{"name": n, "notebook": "04_report" if n == "report" else "x"}
                          for n in names]}  # fmt: skip
    manifest = {"run_id": "run", "steps": steps, "pipeline_resolved": pipeline}
    run.manifest.write_text(json.dumps(manifest))
    render_report(run.root)
    return run


@pytest.fixture(scope="module")
def comparison(small_run: RunLayout, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """compare.html of the small run and one whose base stage trained at another learning rate
    (code bits per byte 2.5 instead of 3.0, arc_easy 0.45 instead of 0.30)."""
    other = tmp_path_factory.mktemp("browser") / "lr-5e-3"
    write_stage(other, "base", {"optim": {"lr": 5e-3}}, 2.5, 0.45, (1000, 1000), 100)
    write_stage(other, "continual-code", CHILD, 2.0, 0.40, (1000, 1000), 300)
    return write_comparison([small_run.root, other], other.parent / "compare")


def _open(browser, html: Path, *, label: str | None = None) -> tuple[dict, list[str]]:
    """The report's page facts and its console errors (and uncaught page errors); screenshots
    named after `label` when TINYLAB_SCREENSHOTS is set."""
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html.resolve().as_uri(), wait_until="load")
    facts = page.evaluate(PAGE_FACTS)
    if SCREENSHOTS and label:
        _screenshots(page, Path(SCREENSHOTS), label)
    page.close()
    return facts, errors


def _screenshots(page, folder: Path, label: str) -> None:
    full = folder / f"{label}-full.png"
    page.screenshot(path=full, full_page=True)
    _to_palette(full)  # a whole report is ~17,000 px tall: 2.6 MB in full colour, ~1 MB in 128
    tops = page.evaluate(HEADING_TOPS)
    for name, (first, after) in CLIPS.items():
        if (first is None or first in tops) and after in tops:
            top = 0 if first is None else tops[first]
            clip = {"x": 0, "y": top, "width": WIDTH, "height": tops[after] - top}
            page.screenshot(path=folder / f"{label}-{name}.png", full_page=True, clip=clip)


def _to_palette(path: Path, colors: int = 128) -> None:
    """Rewrite a PNG with `colors` colours (no dithering: flat report colours stay flat)."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def _assert_published(facts: dict, errors: list[str]) -> None:
    assert errors == []
    assert facts["images"] and all(i["complete"] and i["width"] > 0 for i in facts["images"])
    for table in facts["tables"]:
        assert table["data"] is not None, f"a table not rendered by formatting: {table}"
        assert table["rows"] == int(table["data"]), table
    assert not facts["ellipsis"]  # no row or column cut to "..."


def test_the_report_opens_whole_in_a_browser(browser, small_run: RunLayout) -> None:
    facts, errors = _open(browser, small_run.report)
    _assert_published(facts, errors)
    rows = {t["heading"]: t["rows"] for t in facts["tables"]}
    run = load_run(small_run.root)
    expected = deviations.deviation_table(deviations.run_settings(run))
    assert rows["Deviations from the paper"] == len(expected)
    assert rows["Provenance"] == len(run.manifest["steps"])  # its second table: the steps
    html = small_run.report.read_text()
    assert "this report" in html and ">running<" not in html
    assert ">1,235<" in html  # 1234.5678 seconds: four significant digits, a separator


def test_the_comparison_opens_whole_in_a_browser(browser, comparison: Path) -> None:
    facts, errors = _open(browser, comparison)
    _assert_published(facts, errors)
    assert len(facts["images"]) == 2 and len(facts["tables"]) >= 4  # runs, bpb, scores, ...


@pytest.mark.parametrize("label", GIVEN)
def test_a_given_report_opens_whole_in_a_browser(browser, label: str) -> None:
    _assert_published(*_open(browser, Path(GIVEN[label]), label=label))
