"""Screenshot every dashboard page in headless Chromium: python scripts/screenshots.py [OUT_DIR] [PORT].

Starts `streamlit run app.py` on $AUDIT_STORE (default: the demo store), visits each page, waits for it to
render and saves OUT_DIR/<page>.png. Used to look at the dashboard as a user does.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = ["", "preview", "who", "duplicates", "dataset-origin", "map", "balance", "download"]  # url paths (app.py)


def main(out: str = "bench/out/screens", port: int = 8601, pages=None) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                        args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": int(os.environ.get("SHOT_HEIGHT", "2400"))})
            for name in pages or PAGES:
                for _ in range(60):
                    try:
                        page.goto(f"http://localhost:{port}/{name}", timeout=5000)
                        break
                    except Exception:
                        time.sleep(1)
                page.wait_for_selector("[data-testid='stMain']", timeout=60000)
                time.sleep(2)   # let the rerun start, so the checks below see its running state
                page.wait_for_function(
                    "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120000)
                page.wait_for_function(   # no spinner of a cached computation left (Balancing's first solve)
                    "() => !document.querySelector('[data-testid=\"stSpinner\"]')", timeout=240000)
                # every Plotly chart drawn (a cold Plotly load takes several seconds; a 3 s wait caught blank charts)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
                    ".every(c => c.querySelector('.main-svg'))", timeout=60000)
                time.sleep(6)   # markdown/HTML cards and images draw after the charts
                page.screenshot(path=str(out_dir / f"{name or 'overview'}.png"), full_page=True)
                print("saved", out_dir / f"{name or 'overview'}.png")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main(*(sys.argv[1:2] or []), *(map(int, sys.argv[2:3])))
