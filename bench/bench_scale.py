"""The scale ladder: build a simulated DataComp pool of N rows, run every stage on it, open the dashboard in headless
Chromium, visit every page, move the Filter preview slider, and print one table.

    .venv/bin/python bench/bench_scale.py --rows 1000000,12800000 [--work DIR] [--stages ...] [--no-browser]

Per rung: pool build time; per stage rows/s and peak RSS (each stage is its own `python -m audit` process, timed by
/usr/bin/time); store size on disk and the size of the file the dashboard copies; per page first render and the
server's RSS after each page. A first render runs from the navigation to the last change of the page's content, once
the script has finished and nothing has changed for 0.5 s. Then --presses slider key presses → "Kept" changed and →
rerun finished (median, p95), with Streamlit's own floor (a one-slider app, same browser, same run) side by side: one
press on the floor, one on the dashboard, in turn. Then the same again with the Filter preview's two closed sections
(Compare two filters, Samples of a group) opened.

The pool is written in shards of --shard-rows, each simulated on its own (audit/demo/simulate.py with its own seed;
the shards differ in their latent directions, which no measurement here depends on). Pools above --vectors-max rows
are written without the npz embeddings and ingested with --no-vectors: a 12.8M-row pool's npz are 64 GB (and the
store's vectors as much again), more than this machine's disk; the stages that need vectors (map, origin) are then
skipped and say so. Nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = [("overview", "Overview"), ("preview", "Filter preview"), ("who", "Who's in, who's out"),
         ("duplicates", "Duplicates"), ("dataset-origin", "Dataset origin"), ("map", "Embedding map"),
         ("balance", "Balancing"), ("download", "Export")]
SCORE = "clip_l14_similarity_score"
ROWS: list[tuple[str, str, str, str]] = []


def row(rung: str, what: str, value: str, note: str = "") -> None:
    ROWS.append((rung, what, value, note))
    print(f"  [{rung}] {what}: {value} {note}", flush=True)


# ---- the pool -------------------------------------------------------------------------------------------------
def _shard(args) -> int:
    out, i, rows, vectors = args
    from audit.demo.simulate import SimConfig, write_pool

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        info = write_pool(tmp, SimConfig(rows=rows, seed=10_000 + i, shards=1, vectors=vectors))
        src = Path(info["files"][0])
        os.replace(src, Path(out) / f"{i:05d}.parquet")
        if vectors:
            os.replace(src.with_suffix(".npz"), Path(out) / f"{i:05d}.npz")
    return rows


def build_pool(out: Path, n: int, shard_rows: int, vectors: bool, workers: int) -> float:
    """Shards 00000.parquet (+ .npz) … of n rows in all; reused when complete. Returns seconds (0 when reused)."""
    sizes = [shard_rows] * (n // shard_rows) + ([n % shard_rows] if n % shard_rows else [])
    done = out / "COMPLETE.json"
    if done.exists() and json.loads(done.read_text()) == {"rows": n, "shards": len(sizes), "vectors": vectors}:
        return 0.0
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with ProcessPoolExecutor(workers) as ex:
            for k, _ in enumerate(ex.map(_shard, [(str(out), i, r, vectors) for i, r in enumerate(sizes)]), 1):
                print(f"    shard {k}/{len(sizes)}", flush=True)
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    done.write_text(json.dumps({"rows": n, "shards": len(sizes), "vectors": vectors}))
    return time.perf_counter() - t


def io_floor(pool: Path, vectors: bool, distinct: bool = True) -> float:
    """rows/s of reading every parquet (+ np.load of its npz + writing the float16 vectors as .npy), side by side
    with ingest in the same run: what ingest cannot beat. ``distinct``: every shard's arrays go to files of their
    own, kept until the end, as ingest keeps its parts (5 GB of new files at 1M rows); the earlier form rewrote the
    same four files for every shard, which the page cache makes cheaper than any real ingest can be. Both start
    after a sync, with no dirty pages of an earlier step left to write back."""
    import numpy as np
    import pyarrow.parquet as pq

    os.sync()
    rows, t = 0, time.perf_counter()
    with tempfile.TemporaryDirectory(dir=pool) as tmp:
        for p in sorted(pool.glob("*.parquet")):
            rows += pq.read_table(p).num_rows
            if vectors:
                with np.load(p.with_suffix(".npz")) as z:
                    for k in z.files:
                        name = f"{p.stem}-{k}.npy" if distinct else f"{k}.npy"
                        np.save(Path(tmp) / name, z[k].astype(np.float16))
        secs = time.perf_counter() - t
    os.sync()
    return rows / secs


# ---- stages ---------------------------------------------------------------------------------------------------
def stage(rung: str, name: str, args: list[str], rows: int) -> None:
    os.sync()   # no stage pays for writing back an earlier one's files
    t = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", PY, "-m", "audit", *args], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    secs = time.perf_counter() - t
    peak_kb = int(res.stderr.strip().splitlines()[-1]) if res.stderr.strip().splitlines()[-1].isdigit() else 0
    if res.returncode:
        row(rung, f"stage {name}", "FAILED", (res.stderr or res.stdout)[-300:].replace("\n", " "))
        return
    row(rung, f"stage {name}", f"{rows / secs:,.0f} rows/s", f"{secs:.1f} s, peak RSS {peak_kb / 1e6:.2f} GB")


def stages(rung: str, store: Path, pool: Path, n: int, vectors: bool, only: set[str] | None) -> None:
    s = ["--store", str(store)]
    out = store.parent / "out"
    out.mkdir(exist_ok=True)
    plan = [
        ("ingest", ["ingest", "datacomp", str(pool), *s, "--simulated"] + ([] if vectors else ["--no-vectors"])),
        ("annotate caption", ["annotate", "caption", *s, "--force"]),
        ("annotate domain", ["annotate", "domain", *s, "--force"]),
        ("score basic", ["score", "basic", *s, "--force"]),
        ("report", ["report", *s, "--keep", f"{SCORE}:top=0.3", "--by", "caption_gender", "--out",
                    str(out / "report.csv")]),
        ("export", ["export", *s, "--keep", f"{SCORE}:top=0.3", "--out", str(out / "kept.parquet")]),
        ("balance m4", ["balance", "m4", *s, "--attribute", "caption_gender", "--budget", "0.5", "--stream", "--save",
                        "--out", str(out / "m4.parquet")]),
    ]
    if vectors:
        plan += [("map", ["map", *s, "--model", "datacomp_l14"]), ("origin", ["origin", *s, "--by", "tld"])]
    else:
        row(rung, "stages map, origin", "skipped", "the pool has no vectors (see --vectors-max)")
    for name, args in plan:
        if only is None or name.split()[0] in only:
            stage(rung, name, args, n)


def store_size(rung: str, store: Path) -> None:
    from audit.store import parts_dir, vectors_dir

    def du(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0
    db = store.stat().st_size + (Path(str(store) + ".wal").stat().st_size if Path(str(store) + ".wal").exists() else 0)
    row(rung, "store on disk", f"{(db + du(parts_dir(store)) + du(vectors_dir(store))) / 1e9:.2f} GB",
        f"parts {du(parts_dir(store)) / 1e9:.2f} GB, vectors {du(vectors_dir(store)) / 1e9:.2f} GB")
    row(rung, "file the dashboard copies", f"{db / 1e6:.1f} MB", "the DuckDB catalogue (rows live in parts)")


# ---- the dashboard --------------------------------------------------------------------------------------------
def _rss(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in GB of a process and its children."""
    def one(p: str) -> tuple[int, int]:
        try:
            st = Path(f"/proc/{p}/status").read_text()
        except OSError:
            return 0, 0
        get = {ln.split(":")[0]: ln.split()[1] for ln in st.splitlines() if ln.startswith(("VmRSS", "VmHWM"))}
        return int(get.get("VmRSS", 0)), int(get.get("VmHWM", 0))
    pids = [str(pid)] + subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    vals = [one(p) for p in pids]
    return sum(v[0] for v in vals) / 1e6, sum(v[1] for v in vals) / 1e6


def _server(app: Path, store: Path | None, port: int) -> subprocess.Popen:
    import socket

    env = {**os.environ, **({"AUDIT_STORE": str(store)} if store else {})}
    proc = subprocess.Popen([PY, "-m", "streamlit", "run", str(app), "--server.port", str(port), "--server.headless",
                             "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("streamlit did not start")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Streamlit marks its root element with the script's state (data-test-script-state: running / notRunning); an
# observer records every change with the browser's clock, so a rerun shorter than a poll is still seen
WATCH = """() => { const app = document.querySelector('[data-testid=stApp]');
  window.__st = [[app.getAttribute('data-test-script-state'), performance.now()]];
  new MutationObserver(() => window.__st.push([app.getAttribute('data-test-script-state'), performance.now()]))
    .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']}); }"""
# the time of the first notRunning that follows a running state after t0 (null until then); -1 when no running state
# was seen within a second of Kept changing (a rerun too short for the DOM to show it)
DONE_AFTER = """([t0, tk]) => { let ran = false; for (const [s, t] of (window.__st || [])) { if (t < t0) continue;
  if (s === 'running') ran = true; else if (ran && s === 'notRunning') return t; }
  return !ran && performance.now() - tk > 1000 ? -1 : null; }"""
KEPT = ("() => { const m = [...document.querySelectorAll('[data-testid=stMetric]')].find(e => e.innerText.includes("
        "'Kept')); return m ? m.querySelector('[data-testid=stMetricValue]').innerText : null; }")


# Installed in every page before its scripts run: the browser-clock time of the last change to the page's content
# (elements added or removed, text changed) in window.__lastChange.
LAST_CHANGE = """(() => { window.__lastChange = 0; const watch = () => {
  if (!document.body) { requestAnimationFrame(watch); return; }
  new MutationObserver(() => { window.__lastChange = performance.now(); })
    .observe(document.body, {childList: true, subtree: true, characterData: true}); }; watch(); })()"""
QUIET_MS = 500   # the content has not changed for this long after the script finished: the page is drawn


def _loaded(page, timeout_ms: int = 600_000) -> float:
    """Wait for the first full run of a freshly opened page (the script finished, and its content no longer changes)
    and return the seconds from the navigation's start to the last change of its content.

    The script's state alone is not enough: Streamlit loads each element type's code on first use, so a page's
    slider and metrics could appear 0.3-0.7 s after the script had finished (measured on the Filter preview at 1M
    and 12.8M). The page must have been opened with LAST_CHANGE installed (``_new_page``)."""
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout_ms)
    page.wait_for_function("() => document.querySelector('[data-testid=stApp]')"
                           ".getAttribute('data-test-script-state') === 'notRunning' && "
                           "document.querySelector('[data-testid=stMain] h1, [data-testid=stMetric]')",
                           timeout=timeout_ms, polling=50)
    done = page.wait_for_function(f"() => performance.now() - window.__lastChange > {QUIET_MS} ? window.__lastChange : null",
                                  timeout=timeout_ms, polling=50).json_value()
    return done / 1000


def _new_page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(LAST_CHANGE)
    return page


def _press(page, label: str, key: str) -> tuple[float, float]:
    """One key press on the slider ``label``: (ms to the Kept value changing, ms to the rerun finishing), both on the
    browser's clock. The page's WATCH observer must be installed."""
    thumb = page.locator(f"input[type='range'][aria-label='{label}']")
    before = page.evaluate(KEPT)
    thumb.focus()
    t0 = page.evaluate("performance.now()")
    thumb.press(key)
    t_kept = page.wait_for_function(
        f"(b) => {{ const v = ({KEPT})(); return v !== null && v !== b ? performance.now() : null; }}", arg=before,
        polling="raf", timeout=300_000).json_value()
    t_done = page.wait_for_function(DONE_AFTER, arg=[t0, t_kept], polling=20, timeout=60_000).json_value()
    if t_done < 0:   # no 'running' state was seen (a rerun too short for the DOM to show it): Kept changed
        t_done = t_kept
        MISSED[label] = MISSED.get(label, 0) + 1
    page.wait_for_timeout(100)
    return t_kept - t0, max(t_done, t_kept) - t0


def _open_sections(page) -> float:
    """Open the Filter preview's closed sections (Compare two filters, Samples of a group), wait for their contents
    (the Spearman metric, the examples' grid) and return the seconds from the first click to the page's last change.
    The clicks are DOM events on the expanders' headers, not clicks at a position on the screen."""
    t0 = page.evaluate("performance.now()")
    page.locator("[data-testid=stExpander] summary", has_text="Compare two filters:").dispatch_event("click")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stMetric]')]"
                           ".some(e => e.innerText.includes('Spearman'))", timeout=600_000, polling=100)
    _loaded(page)
    page.locator("[data-testid=stExpander] summary", has_text="Samples of a group:").dispatch_event("click")
    page.wait_for_selector("[data-testid=stExpander] [data-testid=stHtml]", timeout=600_000)
    return _loaded(page) - t0 / 1000


def _moves(sliders: list[tuple[object, str]], presses: int) -> list[tuple[list[float], list[float]]]:
    """``presses`` key presses on each (page, slider label), taken in turn: one press on the first page, one on the
    second, and so on, so that the floor app and the dashboard are measured under the same load on this 2-core
    machine (measured one after the other, a noisy minute moved the floor's p95 by 40 ms). The slider moves right
    and, after SWEEP presses, back left: every press changes the value and the page never waits at the end of the
    range. Returns (ms to Kept changed, ms to rerun finished) per slider."""
    for page, _ in sliders:
        page.evaluate(WATCH)
    out = [([], []) for _ in sliders]
    for i in range(presses):
        key = "ArrowRight" if (i // SWEEP) % 2 == 0 else "ArrowLeft"
        for (page, label), (changed, finished) in zip(sliders, out):
            ch, fin = _press(page, label, key)
            changed.append(ch)
            finished.append(fin)
    return out


def _slider(fpage, page, presses: int):
    """The Filter preview's top-fraction slider against the floor's, in turn: 3 warm-up presses, then ``presses``
    counted. Returns (floor's, dashboard's) (ms to Kept changed, ms to rerun finished), and the rerun row's note."""
    sliders = [(fpage, "floor"), (page, "Keep the top fraction of the pool")]
    _moves(sliders, 3)   # warm-up presses, not counted
    MISSED.clear()
    (fch, ffin), (ch, fin) = _moves(sliders, presses)
    missed = "".join(f"; {k}: {v} of {presses} reruns too short to show 'running'" for k, v in MISSED.items())
    note = f"Streamlit floor {_stats(ffin)}; p95 over the floor {p95(fin) - p95(ffin):+,.0f} ms{missed}"
    return (fch, ffin), (ch, fin), note


SWEEP = 60   # presses in one direction: the top-fraction slider (step 0.01) goes from 0.33 up to 0.93, then back


MISSED: dict[str, int] = {}   # key presses whose rerun showed no 'running' state (finish = Kept changed)


def p95(ms: list[float]) -> float:
    s = sorted(ms)
    return s[min(len(s) - 1, int(0.95 * len(s)))]


def _stats(ms: list[float]) -> str:
    return f"median {statistics.median(ms):,.0f} ms, p95 {p95(ms):,.0f} ms"


FLOOR_APP = '''import streamlit as st
st.title("floor")
v = st.slider("floor", 0, 1000, 300)
st.metric("Kept", f"{v:,}")
'''


def dashboard(rung: str, store: Path, presses: int, shots: Path | None) -> None:
    from playwright.sync_api import sync_playwright

    floor_app = store.parent / "floor_app.py"
    floor_app.write_text(FLOOR_APP)
    port, fport = _free_port(), _free_port()
    srv = _server(ROOT / "app.py", store, port)
    fsrv = _server(floor_app, None, fport)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = _new_page(browser)
            # the entry page first: a fresh server answers a first deep link with "page not found". Times run from
            # the navigation's start to the last change of the page's content (_loaded).
            page.goto(f"http://127.0.0.1:{port}/", timeout=600_000)
            row(rung, "dashboard opens (snapshot + Overview)", f"{_loaded(page):.1f} s")
            for url, title in PAGES:
                # the default page lives at / (Streamlit ignores its url_path: /overview answers "page not found")
                page.goto(f"http://127.0.0.1:{port}/{'' if url == PAGES[0][0] else url}", timeout=600_000)
                secs = _loaded(page)
                errors = page.locator("[data-testid='stException']").count()
                rss, peak = _rss(srv.pid)
                row(rung, f"page {title}", f"{secs:.1f} s", f"server RSS {rss:.2f} GB (peak {peak:.2f})"
                    + (f", {errors} EXCEPTION(S)" if errors else ""))
                if shots:   # _loaded has waited until the page stopped changing (Plotly draws after the script)
                    page.screenshot(path=str(shots / f"{rung}-{url}.png"), full_page=True)
            fpage = _new_page(browser)
            fpage.goto(f"http://127.0.0.1:{fport}/", timeout=60_000)
            _loaded(fpage, 60_000)
            page.goto(f"http://127.0.0.1:{port}/preview", timeout=600_000)
            _loaded(page)
            (fch, ffin), (ch, fin), rerun_note = _slider(fpage, page, presses)
            how = f"{presses} presses each, floor and dashboard in turn"
            row(rung, "slider → Kept changed", _stats(ch), f"Streamlit floor {_stats(fch)}; {how}")
            row(rung, "slider → rerun finished", _stats(fin), rerun_note)
            # the same with the page's two closed sections opened (a fresh session: the slider starts at 0.30 again)
            page.goto(f"http://127.0.0.1:{port}/preview", timeout=600_000)
            _loaded(page)
            row(rung, "Filter preview: Compare and Samples opened", f"{_open_sections(page):.1f} s")
            if shots:
                page.screenshot(path=str(shots / f"{rung}-preview-open.png"), full_page=True)
            _, (_, fin), rerun_note = _slider(fpage, page, presses)
            row(rung, "slider → rerun finished, both sections open", _stats(fin), rerun_note)
            rss, peak = _rss(srv.pid)
            row(rung, f"server RSS after every page and {2 * presses} moves", f"{rss:.2f} GB", f"peak {peak:.2f} GB")
            browser.close()
    finally:
        for s in (srv, fsrv):
            s.terminate()
            s.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1000000", help="comma-separated pool sizes (default: %(default)s)")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "scale"), help="pools and stores go here")
    ap.add_argument("--shard-rows", type=int, default=250_000)
    ap.add_argument("--vectors-max", type=int, default=2_000_000,
                    help="larger pools are written without npz (disk: 5 KB of vectors per row, twice)")
    ap.add_argument("--workers", type=int, default=2, help="processes simulating shards")
    ap.add_argument("--stages", default=None, help="comma-separated subset (ingest,annotate,score,report,export,"
                                                   "balance,map,origin); default all")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--keep-store", action="store_true", help="reuse the store of an earlier run (skip the stages); "
                    "--stages without ingest also reuses it and runs those stages on it")
    ap.add_argument("--presses", type=int, default=20)
    ap.add_argument("--screenshots", action="store_true", help="save a screenshot of every page")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    only = set(a.stages.split(",")) if a.stages else None
    for n in (int(x) for x in a.rows.split(",")):
        rung = f"{n / 1e6:g}M"
        vectors = n <= a.vectors_max
        pool = work / (f"pool-{n}" + ("" if vectors else "-meta"))
        store = work / f"store-{n}" / "pool.duckdb"
        if a.keep_store:   # the stages are skipped: the pool is not read
            if not store.exists():
                raise SystemExit(f"--keep-store: {store} does not exist; build it with a run without --keep-store")
            row(rung, "pool", f"{n:,} rows", "not needed: the kept store is measured")
        else:
            secs = build_pool(pool, n, a.shard_rows, vectors, a.workers)
            row(rung, "pool", f"{n:,} rows" + ("" if vectors else ", no vectors"),
                f"built in {secs:.0f} s" if secs else "reused")
            if only is None or "ingest" in only:   # a fresh store; without ingest the stages run on the last one
                shutil.rmtree(store.parent, ignore_errors=True)
                store.parent.mkdir(parents=True)
                if vectors:
                    row(rung, "I/O floor, the earlier form (the same four .npy rewritten per shard)",
                        f"{io_floor(pool, vectors, distinct=False):,.0f} rows/s", "cheaper than any ingest can be")
                row(rung, "I/O floor (read parquet + npz, write float16 .npy)", f"{io_floor(pool, vectors):,.0f} rows/s",
                    "each shard's vectors to files of their own, as ingest writes them")
            elif not store.exists():
                raise SystemExit(f"{store} does not exist: include the ingest stage")
            stages(rung, store, pool, n, vectors, only)
        store_size(rung, store)
        if not a.no_browser:
            shots = work / "screenshots" if a.screenshots else None
            if shots:
                shots.mkdir(exist_ok=True)
            dashboard(rung, store, a.presses, shots)
    print()
    print("| rung | measure | value | note |")
    print("|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
