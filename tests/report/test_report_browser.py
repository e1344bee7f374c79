"""The HTML report in a real browser: headless Chromium (Debian's `chromium` package, which `make test` installs)
driven by playwright through `executable_path`, since playwright's own browser download does not work offline.

Never skipped: without chromium or playwright the tests fail and say how to install them. They load the page from a
file:// URL and check what a reviewer relies on: no console error, no request beyond the file itself, every figure
drawn, the sample table searchable, filterable and sortable, and a load under 2 s. The first saves a screenshot (the
test's tmp dir and runs/report_screenshot.png) to look at; the slow one builds a full demo and checks its report.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import missing, require_extra
from tests.report.test_report_html import make_run_dirs

ROOT = Path(__file__).resolve().parents[2]
MAX_LOAD_MS = 2000  # the acceptance: the report opens in under 2 s in the headless browser


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        missing("program chromium", "run `make browser` (it runs `apt-get install -y chromium`)")
    with require_extra("playwright.sync_api", "dev").sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe)
        yield b
        b.close()


def load(browser, path: Path):
    """Open the report; returns (page, console errors, failed requests, other-origin requests, load ms)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors, failed, foreign = [], [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith((path.as_uri(), "data:")) else None)
    page.goto(path.as_uri(), wait_until="load")
    ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    return page, errors, failed, foreign, ms


def check_figures(page) -> int:
    """Every figure container holds a drawn SVG (non-empty, with a size) or decoded images."""
    figs = page.evaluate("""() => [...document.querySelectorAll('figure.fig')].map(f => {
        const svgs = [...f.querySelectorAll('svg')], imgs = [...f.querySelectorAll('img')];
        return {id: f.dataset.figure,
                svg: svgs.every(s => s.getBoundingClientRect().width > 50 && s.getBoundingClientRect().height > 50
                                    && s.querySelectorAll('path, use, text').length > 5),
                img: imgs.every(i => i.complete && i.naturalWidth > 0),
                n: svgs.length + imgs.length};
    })""")
    assert figs, "no figure on the page"
    for f in figs:
        assert f["n"] > 0 and f["svg"] and f["img"], f
    return len(figs)


def visible_rows(page) -> int:
    return page.locator("#samples-table tbody tr").count()


def column(page, name: str) -> list[str]:
    return page.evaluate(
        """(name) => {
        const i = [...document.querySelectorAll('#samples-table thead th')].findIndex(
            th => th.textContent.replace(/ [▲▼]$/, '') === name);
        return [...document.querySelectorAll('#samples-table tbody tr')].map(tr => tr.children[i].textContent);
    }""",
        name,
    )


def test_report_in_chromium(browser, tmp_path):
    from obliviate.report.html import write_report

    dirs = make_run_dirs(tmp_path / "runs")
    out = tmp_path / "report.html"
    info = write_report(list(dirs.values()), out)
    page, errors, failed, foreign, ms = load(browser, out)
    assert not errors, errors
    assert not failed and not foreign, (failed, foreign)
    assert check_figures(page) == len(info["figures"])
    assert ms < MAX_LOAD_MS, f"load took {ms:.0f} ms"

    # search: typing narrows the rows, and the count says so
    before = visible_rows(page)
    assert before > 0
    page.fill("#q", "person3_forget")
    assert 0 < visible_rows(page) < before
    assert all("person3_forget" in t for t in column(page, "id"))
    assert "rows match" in page.inner_text("#count")
    page.fill("#q", "")
    # a value filter keeps one value of a column
    page.select_option("select[data-col='run']", "refusal_sft")
    runs = column(page, "run")
    assert runs and set(runs) == {"refusal_sft"}
    page.select_option("select[data-col='run']", "")
    # sorting: a click sorts ascending, a second click descending
    page.select_option("select[data-col='split']", "forget")
    page.click("#samples-table thead th:text-is('gt_loss')")
    up = [float(v) for v in column(page, "gt_loss") if v]
    assert up == sorted(up) and len(up) > 10
    page.click("#samples-table thead th:has-text('gt_loss')")
    down = [float(v) for v in column(page, "gt_loss") if v]
    assert down == sorted(down, reverse=True) and down[0] != up[0]
    # the hostile sample text is shown as text, not run
    page.fill("#q", "pwned")
    assert "<script>alert('pwned')</script>" in page.inner_text("#samples-table tbody")
    page.fill("#q", "")
    assert not errors, errors

    page.select_option("select[data-col='split']", "")
    page.evaluate("document.querySelector('#samples .scroll').scrollLeft = 0")  # the sort click scrolled it
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    (ROOT / "runs").mkdir(exist_ok=True)  # runs/ is git-ignored
    shutil.copyfile(shot, ROOT / "runs" / "report_screenshot.png")
    assert shot.stat().st_size > 10_000
    page.close()


@pytest.mark.slow  # builds the full demo with guards first (about 2 minutes); `make test-slow`
def test_report_of_a_real_demo_run(browser, tmp_path):
    """The acceptance measures the report of a full demo (size, load time), which the synthetic runs above do not
    reach: build one, as `make demo` does plus the guard rows, and check its page."""
    from obliviate.demos.world import run_demo
    from obliviate.report.html import write_report

    run_dir = tmp_path / "demo"
    run_demo(run_dir, progress=False, guards=True)
    out = tmp_path / "report.html"
    t0 = time.perf_counter()
    info = write_report([run_dir], out)
    built = time.perf_counter() - t0
    page, errors, failed, foreign, ms = load(browser, out)
    assert not errors and not failed and not foreign, (errors, failed, foreign)
    assert check_figures(page) == len(info["figures"]) >= 3
    assert info["bytes"] < 5_000_000 and ms < MAX_LOAD_MS
    page.fill("#q", "forget")
    assert visible_rows(page) > 0
    print(
        f"\n{run_dir}: {info['bytes'] / 1e6:.2f} MB, built in {built:.1f} s, loaded in {ms:.0f} ms, "
        f"{len(info['figures'])} figures, {info['rows']} of {info['rows_total']} sample rows"
    )
    page.close()
