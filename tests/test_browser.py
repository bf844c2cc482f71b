"""End to end in a real headless browser: Debian's Chromium driven by Playwright against `streamlit run app.py`."""
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.decide.selection import Rule, apply_rule
from audit.store import Store
from conftest import CHROMIUM, ROOT, free_port
from conftest import CHROMIUM_ARGS as ARGS

ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture
def server(demo_store):
    port = free_port()
    env = {**os.environ, "AUDIT_STORE": demo_store}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.address", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(15)


def kept_value(page) -> int:
    metric = page.locator("[data-testid='stMetric']").filter(has_text="Kept").first
    return int(re.sub(r"[^0-9]", "", metric.locator("[data-testid='stMetricValue']").inner_text()))


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
def test_slider_moves_the_kept_count_in_chromium(server, demo_store):
    from playwright.sync_api import sync_playwright

    score = "clip_l14_similarity_score"
    with Store.reader(demo_store) as st:
        values = st.score_frame([score])[score].to_numpy(float)
    expect = {f: int(apply_rule(Rule(score, "top", f), values).sum()) for f in (0.30, 0.35)}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        # Open the entry page first: on a fresh server Streamlit answers the first deep link with a
        # "page not found" notice before app.py's navigation takes over.
        page.goto(server, timeout=60_000)
        page.wait_for_selector("[data-testid='stMetric']", timeout=120_000)
        page.goto(f"{server}/preview", timeout=60_000)
        page.wait_for_selector("[data-testid='stMetric']", timeout=120_000)
        page.wait_for_function("() => document.querySelectorAll('[data-testid=stMetricValue]').length >= 4",
                               timeout=120_000)
        assert kept_value(page) == expect[0.30]
        thumb = page.locator("input[type='range'][aria-label='Keep the top fraction of the pool']")
        thumb.focus()
        for _ in range(5):  # step 0.01 each: 0.30 -> 0.35
            thumb.press("ArrowRight")
        page.wait_for_function(
            f"() => [...document.querySelectorAll('[data-testid=stMetric]')].some(m => m.innerText.includes('Kept')"
            f" && m.innerText.replace(/[^0-9\\n]/g,'').includes('{expect[0.35]}'))", timeout=60_000)
        assert kept_value(page) == expect[0.35]
        page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=60_000)
        page.wait_for_timeout(1500)  # let plotly finish drawing the last rerun
        assert "top 0.35" in page.inner_text("[data-testid='stMain']")  # charts show the same selection
        assert "Filter preview" in page.inner_text("[data-testid='stSidebarNav']")  # st.navigation titles
        page.screenshot(path=str(ARTIFACTS / "filter_preview_e2e.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "filter_preview_e2e.png").stat().st_size > 10_000


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
def test_a_result_being_recomputed_is_marked_out_of_date(server):
    """Balancing recomputes for seconds after a control changes: the old numbers are soon either replaced or marked
    stale (Streamlit fades them), never shown as current. Quiet, Streamlit marks them within 0.6 s; the bound here
    is 2 s, as a loaded 2-core CI machine delays the browser too (1 s failed once beside other work)."""
    from playwright.sync_api import sync_playwright

    state = """() => { const m = [...document.querySelectorAll('[data-testid=stMetric]')].find(
        e => e.innerText.includes('Kept (M4 draw)'));
        if (!m) return null;
        const box = m.closest('[data-stale]');
        return {value: m.querySelector('[data-testid=stMetricValue]').innerText,
                stale: !!(box && box.getAttribute('data-stale') === 'true'),
                opacity: parseFloat(getComputedStyle(m.closest('[data-testid=stElementContainer]') || m).opacity)}; }"""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(server, timeout=60_000)
        page.wait_for_selector("[data-testid='stMetric']", timeout=120_000)
        page.goto(f"{server}/balance", timeout=60_000)
        page.wait_for_function(f"() => ({state})() !== null", timeout=240_000)
        page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=240_000)
        before = page.evaluate(state)["value"]
        thumb = page.locator("input[type='range'][aria-label='Budget η (kept fraction)']")
        thumb.focus()
        for _ in range(10):   # η 0.90 -> 0.80: a new M4 solve
            thumb.press("ArrowLeft")
        t0 = time.time()
        seen = []
        while time.time() - t0 < 120:
            s = page.evaluate(state)
            seen.append((time.time() - t0, s))
            if s and s["value"] != before and not s["stale"]:
                break
            time.sleep(0.1)
        browser.close()
    final = seen[-1][1]
    assert final["value"] != before, "the result never changed"
    shown_as_current = [(round(t, 2), s) for t, s in seen if t > 2.0 and s and s["value"] == before
                        and not s["stale"] and s["opacity"] > 0.9]
    assert shown_as_current == [], shown_as_current
