"""The README's "Your own pool" block, run verbatim by bash on a folder of real photos (the ones the wheels ship),
with PRETRAINED=none (no model hub here); its last line serves the dashboard, which headless Chromium then visits
page by page: no error box, no exception."""
from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import CHROMIUM, ROOT, free_port
from conftest import CHROMIUM_ARGS as ARGS

PAGES = ["", "preview", "who", "duplicates", "dataset-origin", "map", "balance", "download"]


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own pool"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
def test_readme_own_pool_recipe_runs_verbatim_and_serves_a_clean_dashboard(tmp_path):
    from playwright.sync_api import sync_playwright

    from audit.demo.builder import write_photos

    block = readme_block()
    assert block.strip().splitlines()[-1].startswith('AUDIT_STORE="$S" streamlit run app.py')
    write_photos(tmp_path / "photos")          # 25 real photos + a corrupt one, a blank caption, a missing file
    work = tmp_path / "work"
    work.mkdir()
    for name in ("app.py", "pages", ".streamlit"):   # `streamlit run app.py` as from a checkout
        (work / name).symlink_to(ROOT / name)
    (tmp_path / "recipe.sh").write_text("set -euo pipefail\n" + block)
    port = free_port()
    env = {**os.environ, "S": str(tmp_path / "mypool.duckdb"), "PHOTOS": str(tmp_path / "photos"),
           "PRETRAINED": "none", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "STREAMLIT_SERVER_PORT": str(port), "STREAMLIT_SERVER_ADDRESS": "127.0.0.1",
           "STREAMLIT_SERVER_HEADLESS": "true"}
    env.pop("AUDIT_STORE", None)
    log = open(tmp_path / "recipe.log", "w")
    proc = subprocess.Popen(["bash", str(tmp_path / "recipe.sh")], cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)   # its own group: see finally
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "recipe.log").read_text()[-4000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the dashboard never came up: " + (tmp_path / "recipe.log").read_text()[-4000:])
        out = (tmp_path / "recipe.log").read_text()
        assert "RANDOM" in out or "random" in out          # the random-weight model says so
        report = pd.read_csv(work / "report.csv")
        kept = pd.read_csv(work / "kept.csv")
        assert report["n"].sum() == len(kept) == 25          # every accepted photo; --all-rows keeps them all
        assert set(kept["caption_gender"]) <= set(report["group"])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            for name in PAGES:
                page.goto(f"http://127.0.0.1:{port}/{name}", timeout=60_000)
                page.wait_for_selector("[data-testid='stMain']", timeout=120_000)
                time.sleep(2)
                page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')",
                                       timeout=180_000)
                errors = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
                assert errors.count() == 0, (name, errors.all_inner_texts())
            browser.close()
    finally:
        # the recipe's last line starts streamlit as a child of bash: end the whole group, or the server outlives
        # the test (one was found still serving after a CI run)
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        log.close()
