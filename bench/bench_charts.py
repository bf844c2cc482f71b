"""What a slider move costs the browser, per kind of element: the Filter preview's live charts as Plotly figures and
as Vega-Lite specs, its example cards as a grid of Streamlit elements and as one HTML element, each beside
Streamlit's own floor (a one-slider app), in the same browser and the same run.

    .venv/bin/python bench/bench_charts.py [--presses 20] [--rounds 2]

Each app is a slider and a "Kept" metric plus the elements under test, redrawn from data that change with the slider
(the project's own builders in audit/charts.py and audit/ui.py, on a made-up table of 8 groups). For each key press
on the slider it measures, on the browser's clock: → rerun finished (Streamlit's script state back to notRunning, as
bench_scale.py measures it) and → settled (the first idle moment of the page after that, so drawing that goes on
after the rerun counts). The apps run in turn, round after round, so a busy moment of the machine hits every app.
Nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale as b  # noqa: E402  (the browser helpers of the scale ladder)

HEAD = '''import sys
sys.path.insert(0, {root!r})
import numpy as np, pandas as pd, streamlit as st
from audit import charts, ui
from audit.measure.metrics import rates_from_counts
st.set_page_config(layout="wide")
v = st.slider("value", 0, 1000, 300)
st.metric("Kept", f"{{v:,}}")
rng = np.random.default_rng(v)
n = np.array([9000, 7000, 5000, 3000, 2000, 900, 400, 20])
table = rates_from_counts(n, (n * rng.uniform(0.2, 0.4, 8)).astype(int), np.array([f"group {{i}}" for i in range(8)]))
other = rates_from_counts(n, (n * rng.uniform(0.3, 0.5, 8)).astype(int), table["group"].to_numpy())
counts, edges = np.histogram(np.random.default_rng(0).normal(size=20_000), bins=100)
tau = -2 + 4 * v / 1000
frame = pd.DataFrame({{"uid": [f"u{{i}}" for i in range(16)], "image_ref": None, "domain": "example.com",
                      "caption": [f"a caption of sample {{i + v}}, long enough to wrap once or twice" for i in range(16)]}})
'''
APPS = {
    "floor": "",
    "plotly charts": '''
st.plotly_chart(charts.rate_chart(table, title="rate"), width="stretch")
st.plotly_chart(charts.histogram_bins(counts, edges, title="score", tau=tau), width="stretch")
st.plotly_chart(charts.compare_chart(table, other, title="A vs B", label_a=f"A {v}", label_b="B"), width="stretch")
''',
    "vega-lite charts": '''
st.vega_lite_chart(*charts.rate_spec(table, title="rate"), width="stretch")
st.vega_lite_chart(*charts.histogram_spec(counts, edges, title="score", tau=tau), width="stretch")
st.vega_lite_chart(*charts.compare_spec(table, other, title="A vs B", label_a=f"A {v}", label_b="B"), width="stretch")
''',
    # the example cards as the Filter preview drew them before: columns, a card and a caption per sample
    "16 cards as elements": '''
for half in (frame.head(8), frame.tail(8)):
    cols = st.columns(4)
    for i, r in enumerate(half.itertuples()):
        with cols[i % 4]:
            st.markdown("<div style='background:#f1f3f5;border-radius:6px;padding:6px;font-size:0.8em;"
                        f"color:#495057'>no image stored<br>{r.domain}</div>", unsafe_allow_html=True)
            st.caption(ui.md(r.caption))
''',
    "16 cards, one HTML grid": '''
for half in (frame.head(8), frame.tail(8)):
    ui.show_samples(None, half, reveal=False)
''',
}

# the first idle moment after a frame: drawing that continues after the rerun (Plotly's) is counted
SETTLED = "() => new Promise(r => requestAnimationFrame(() => requestIdleCallback(() => r(performance.now()))))"
# finished: the observer's running → notRunning after t0, or -1 when the rerun was too short to show 'running'
FINISHED = ("(t0) => { const d = (" + b.DONE_AFTER + ")([t0, Infinity]); if (d !== null) return d;"
            " const s = document.querySelector('[data-testid=stApp]').getAttribute('data-test-script-state');"
            " return s === 'notRunning' ? -1 : null; }")


def moves(page, presses: int) -> tuple[list[float], list[float]]:
    page.evaluate(b.WATCH)
    thumb = page.locator("input[type='range'][aria-label='value']")
    finished, settled = [], []
    for _ in range(presses):
        before = page.evaluate(b.KEPT)
        thumb.focus()
        t0 = page.evaluate("performance.now()")
        thumb.press("ArrowRight")
        t_kept = page.wait_for_function(
            f"(b) => {{ const v = ({b.KEPT})(); return v !== null && v !== b ? performance.now() : null; }}",
            arg=before, polling="raf", timeout=60_000).json_value()
        t_done = page.wait_for_function(FINISHED, arg=t0, polling=20, timeout=60_000).json_value()
        t_done = max(t_done, t_kept)
        t_set = page.evaluate(SETTLED)
        finished.append(t_done - t0)
        settled.append(max(t_set, t_done) - t0)
        page.wait_for_timeout(250)
    return finished, settled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presses", type=int, default=20, help="key presses per app and round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over every app (interleaved)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    res: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in APPS}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        files = {}
        for i, (name, body) in enumerate(APPS.items()):
            files[name] = Path(tmp) / f"app{i}.py"
            files[name].write_text(HEAD.format(root=str(b.ROOT)) + body)
        browser = p.chromium.launch(executable_path=b.CHROMIUM, args=b.CHROMIUM_ARGS)
        for _ in range(args.rounds):
            for name, app in files.items():
                port = b._free_port()
                srv = b._server(app, None, port)
                try:
                    page = b._new_page(browser)
                    page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
                    b._loaded(page, 120_000)
                    moves(page, 3)   # warm: the chart libraries load on first use
                    fin, setl = moves(page, args.presses)
                    res[name][0].extend(fin)
                    res[name][1].extend(setl)
                    page.close()
                finally:
                    srv.terminate()
                    srv.wait(30)
        browser.close()
    floor_fin, floor_set = res["floor"]
    print(f"\n{args.rounds} rounds × {args.presses} key presses per app; ms on the browser's clock\n")
    print("| app | → rerun finished, median / p95 | → settled, median / p95 | settled median − floor's |")
    print("|---|---|---|---|")
    for name, (fin, setl) in res.items():
        extra = statistics.median(setl) - statistics.median(floor_set)
        print(f"| {name} | {statistics.median(fin):,.0f} / {b.p95(fin):,.0f} | {statistics.median(setl):,.0f} / "
              f"{b.p95(setl):,.0f} | {'—' if name == 'floor' else f'{extra:+,.0f}'} |")


if __name__ == "__main__":
    main()
