"""Export: formats, spreadsheet-safe CSV, DataComp uid .npy, manifest, and CLI == dashboard bytes."""
import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from audit.export.writer import datacomp_uid_array, export, render, selection_frame
from audit.export.csvsafe import neutralise_cell
from audit.decide.selection import Rule
from audit.store import Store
from conftest import ROOT


def test_neutralise_cells():
    assert neutralise_cell("=HYPERLINK(\"x\")") == "'=HYPERLINK(\"x\")"
    for s in ("+1", "-cmd", "@SUM(A1)", "\tx"):
        assert neutralise_cell(s).startswith("'")
    assert neutralise_cell("a = b") == "a = b" and neutralise_cell(-0.5) == -0.5


def test_datacomp_uid_array_by_hand():
    uids = ["ffffffffffffffff0000000000000001", "00000000000000010000000000000002"]
    arr = datacomp_uid_array(uids)
    assert arr.dtype == np.dtype("u8,u8")
    assert arr.tolist() == [(1, 2), (2**64 - 1, 1)]  # sorted lexicographically
    with pytest.raises(ValueError, match="32 hex"):
        datacomp_uid_array(["not-a-uid"])


def test_export_files_and_manifest(make_store, tmp_path):
    uids = [f"{i:032x}" for i in range(6)]
    store = make_store(
        [{"uid": u, "caption": c, "url": f"https://x.org/{i}"} for i, (u, c) in
         enumerate(zip(uids, ["=cmd()", "+plus", "-minus", "@at", "fine caption", "ok"]))],
        scores={"s": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "t": [1, 1, 1, 0, 1, 1]})
    out = tmp_path / "kept.csv"
    man = export(store, str(out), ["s:top=0.5", "t>=1"], echo=lambda s: None)
    # s top 0.5: n=int(3)=3 -> tau = 4th largest = 0.3 -> rows 2..5; t>=1 drops row 3 -> rows 2, 4, 5
    csv = pd.read_csv(out, dtype={"uid": str})
    assert csv["uid"].tolist() == [uids[2], uids[4], uids[5]]
    assert csv["caption"].tolist() == ["'-minus", "fine caption", "ok"]
    assert {"s", "t"} <= set(csv.columns)
    assert man["kept"] == 3 and man["pool"] == 6 and man["thresholds"]["s:top=0.5"] == 0.3
    assert man["excluded_by_reason"] == {"s not in top 0.5": 2, "t < 1": 1}
    assert json.loads((tmp_path / "kept.csv.manifest.json").read_text())["rules"] == ["s:top=0.5", "t>=1"]
    export(store, str(tmp_path / "kept.npy"), ["s:top=0.5", "t>=1"], echo=lambda s: None)
    arr = np.load(tmp_path / "kept.npy")
    assert arr.tolist() == sorted((int(u[:16], 16), int(u[16:], 16)) for u in (uids[2], uids[4], uids[5]))
    export(store, str(tmp_path / "kept.parquet"), ["s:top=0.5", "t>=1"], echo=lambda s: None)
    pq = pd.read_parquet(tmp_path / "kept.parquet")
    assert pq["caption"].tolist() == ["-minus", "fine caption", "ok"]  # only CSV is neutralised
    assert pq["s"].tolist() == [0.3, 0.5, 0.6]


def test_cli_export_equals_dashboard_bytes(demo_store, tmp_path):
    out = tmp_path / "sub.csv"
    res = subprocess.run([sys.executable, "-m", "audit", "export", "--store", demo_store, "--out", str(out),
                          "--keep", "clip_l14_similarity_score:top=0.3"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with Store.reader(demo_store) as st:
        frame, sel, names = selection_frame(st, [Rule.parse("clip_l14_similarity_score:top=0.3")])
    assert out.read_bytes() == render(frame, "csv")
    from audit import ui   # the Export page's download builds the same bytes, on click

    with Store.reader(demo_store) as st:
        assert ui.render_export(st, ("clip_l14_similarity_score:top=0.3",), (), "csv", False) == out.read_bytes()
    kept = pd.read_csv(io.BytesIO(out.read_bytes()))
    assert len(kept) == int(sel.keep.sum()) and set(names) <= set(kept.columns)
    bad = subprocess.run([sys.executable, "-m", "audit", "export", "--store", demo_store, "--out", str(out),
                          "--keep", "nope:top=0.3"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown score 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_all_rows_export_with_group_columns_re_tabulates_the_report(demo_store, tmp_path, monkeypatch):
    """An auditor can redo the Who's-in table from the file alone: every row, its decision, its imputed group
    and confidence; per-group n and kept equal `report` (which equals the page, tests/test_fairness.py)."""
    import json
    import sys

    import pandas as pd

    from audit.cli import main

    spec = "clip_l14_similarity_score:top=0.3"
    monkeypatch.setattr(sys, "argv", ["audit", "export"])
    out = tmp_path / "all.csv"
    assert main(["export", "--store", demo_store, "--out", str(out), "--keep", spec, "--by", "caption_gender",
                 "--by", "source", "--all-rows"]) == 0
    monkeypatch.setattr(sys, "argv", ["audit", "report"])
    rep = tmp_path / "r.csv"
    assert main(["report", "--store", demo_store, "--keep", spec, "--by", "caption_gender", "--out", str(rep)]) == 0
    frame = pd.read_csv(out, keep_default_na=False)
    table = pd.read_csv(rep, keep_default_na=False).set_index("group")
    got = frame.groupby("caption_gender").agg(n=("keep", "size"), kept=("keep", "sum"))
    assert got.index.sort_values().tolist() == table.index.sort_values().tolist()
    assert (got.loc[table.index, "n"] == table["n"]).all() and (got.loc[table.index, "kept"] == table["kept"]).all()
    assert set(frame["keep"]) == {0, 1} and (frame.loc[frame["keep"] == 0, "excluded_by"] != "").all()
    assert frame["caption_gender__conf"].between(0, 1).all() and "source__conf" in frame.columns
    man = json.loads((tmp_path / "all.csv.manifest.json").read_text())
    assert man["all_rows"] and man["file"]["rows"] == len(frame) == man["pool"]
    assert man["group_columns"]["caption_gender"]["imputed"] is True
    assert man["group_columns"]["source"] == {"method": "sample column", "imputed": False}


def test_streamed_export_does_not_depend_on_batches(make_store, tmp_path):
    """The export is written a batch at a time: the bytes must not depend on where the batches break (an integer
    column with a null in one batch stays an integer), and every sample's reasons are the rules it failed."""
    from audit.export.writer import decide, selection_reader, write_rows

    uids = [f"{i:032x}" for i in range(7)]
    widths = [640, None, 320, 800, None, 1024, 96]
    store = make_store([{"uid": u, "caption": f"c{i}", "width": w} for i, (u, w) in enumerate(zip(uids, widths))],
                       scores={"s": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, float("nan")], "t": [0, 1, 1, 0, 1, 1, 1]})
    rules = [Rule.parse("s:top=0.5"), Rule.parse("t>=1")]
    with Store.reader(store) as st:
        sel = decide(st, rules)
        files = {}
        for fmt in ("csv", "parquet"):
            for batch_rows in (1, 2, 100):
                with selection_reader(st, sel, all_rows=True, batch_rows=batch_rows) as reader:
                    buf = io.BytesIO()
                    assert write_rows(reader, fmt, buf) == 7
                    files[fmt, batch_rows] = buf.getvalue()
    assert files["csv", 1] == files["csv", 2] == files["csv", 100]
    frames = [pd.read_parquet(io.BytesIO(files["parquet", b])) for b in (1, 2, 100)]
    pd.testing.assert_frame_equal(frames[0], frames[2])
    pd.testing.assert_frame_equal(frames[1], frames[2])
    csv = pd.read_csv(io.BytesIO(files["csv", 2]), dtype={"uid": str}, keep_default_na=False)
    assert csv["width"].astype(str).tolist() == ["640", "", "320", "800", "", "1024", "96"]
    # 7 rows, top 0.5 -> int(3.5) = 3 -> tau = the 4th largest finite value = 0.3; NaN fails the top rule
    assert csv["keep"].tolist() == [0, 0, 1, 0, 1, 1, 0]
    assert csv["excluded_by"].tolist() == ["s not in top 0.5; t < 1", "s not in top 0.5", "", "t < 1", "", "",
                                           "s not in top 0.5"]
    assert frames[2]["s"].isna().tolist() == [False] * 6 + [True]
