"""Fairness computations (audit.measure.fairness), the `report` stage, and the page agreeing with it.

Hand-computed numbers first, then independent cross-checks (scipy's Wilson interval, numpy's polyfit,
scikit-learn's kappa), then the simulated pool's ground truth: expected inclusion rates from the hidden
score means must fall inside the observed intervals, and a pool without injected gaps shows no amplification.
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from audit.measure.fairness import SEP, amplification_regression, combine_labels, confusion, flag_rates, group_table, is_labelled
from audit.measure.metrics import wilson
from audit.store import Store
from audit.store.labels import label_frame

SCORE = "clip_l14_similarity_score"


# ---- hand-computed ----------------------------------------------------------------------------------
def test_wilson_hand_computed_and_scipy():
    lo, hi = wilson(3, 10)
    # z² = 3.841459: centre = (3 + z²/2)/(10 + z²) = 0.355506, half = z/(10+z²)·sqrt(3·7/10 + z²/4) = 0.247716
    assert lo == pytest.approx(0.107791, abs=2e-6) and hi == pytest.approx(0.603222, abs=2e-6)
    from scipy.stats import binomtest

    for k, n in [(0, 20), (3, 10), (50, 100), (20, 20), (1, 1000)]:
        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        lo, hi = wilson(k, n)
        assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_group_table_hand_computed():
    keep = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0], bool)
    labels = np.array(["a"] * 4 + ["b"] * 6 + ["unknown"] * 2)
    t = group_table(keep, labels, min_n=5).set_index("group")
    assert t.attrs["overall"] == pytest.approx(4 / 12)
    assert t.loc["a", ["n", "kept"]].tolist() == [4, 2] and t.loc["b", ["n", "kept"]].tolist() == [6, 1]
    assert t.loc["a", "rate"] == 0.5 and t.loc["b", "rate"] == pytest.approx(1 / 6)
    assert t.loc["a", "diff_to_overall"] == pytest.approx(0.5 - 1 / 3) and t.loc["a", "ratio_to_overall"] == pytest.approx(1.5)
    assert t.loc["a", "pool_share"] == pytest.approx(4 / 12) and t.loc["a", "kept_share"] == pytest.approx(2 / 4)
    assert t.loc["b", "ci_low"] == pytest.approx(wilson(1, 6)[0])
    assert bool(t.loc["a", "small"]) and not bool(t.loc["b", "small"])      # greyed, still present
    assert not bool(t.loc["unknown", "labelled"]) and bool(t.loc["a", "labelled"])


def test_amplification_hand_example():
    # x, y: 100 each, 50 kept; z: 20, none kept. overall = 100/220; z's share 20/220 < 0.8/3.
    keep = np.r_[np.ones(50), np.zeros(50), np.ones(50), np.zeros(50), np.zeros(20)].astype(bool)
    labels = np.array(["x"] * 100 + ["y"] * 100 + ["z"] * 20)
    t = group_table(keep, labels, min_n=10).set_index("group")
    assert t.loc["z", "ci_high"] == pytest.approx(1.959964 ** 2 / (20 + 1.959964 ** 2), abs=1e-6)  # 0.16112
    assert t["under_represented"].tolist() == [False, False, True]
    assert t["amplified"].tolist() == [False, False, True]
    # same group, 9 of 20 kept: its interval crosses the overall rate -> not amplified
    keep2 = keep.copy()
    keep2[200:209] = True
    t2 = group_table(keep2, labels, min_n=10).set_index("group")
    assert bool(t2.loc["z", "under_represented"]) and not bool(t2.loc["z", "amplified"])
    # below the minimum n it is not tested (greyed)
    assert not group_table(keep, labels, min_n=21).set_index("group").loc["z", "amplified"]


def test_regression_hand_computed_and_polyfit():
    # n = 10, 100, 1000 with rates 0.1, 0.2, 0.3: exactly +0.1 per decade, intercept 0
    sizes, rates = [10, 100, 1000], [0.1, 0.2, 0.3]
    keep = np.concatenate([np.r_[np.ones(int(n * r)), np.zeros(n - int(n * r))] for n, r in zip(sizes, rates)]).astype(bool)
    labels = np.concatenate([[f"g{n}"] * n for n in sizes])
    reg = amplification_regression(group_table(keep, labels, min_n=1))
    assert reg.slope == pytest.approx(0.1) and reg.intercept == pytest.approx(0.0, abs=1e-12)
    assert reg.rvalue == pytest.approx(1.0) and reg.n_groups == 3
    # unequal spacing, cross-checked against numpy
    sizes, rates = [40, 90, 500, 2000], [0.45, 0.2, 0.3, 0.35]
    keep = np.concatenate([np.r_[np.ones(int(n * r)), np.zeros(n - int(n * r))] for n, r in zip(sizes, rates)]).astype(bool)
    labels = np.concatenate([[f"g{n}"] * n for n in sizes])
    reg = amplification_regression(group_table(keep, labels, min_n=30))
    slope, icpt = np.polyfit(np.log10(sizes), rates, 1)
    assert reg.slope == pytest.approx(slope) and reg.intercept == pytest.approx(icpt)
    assert amplification_regression(group_table(keep, labels, min_n=600)) is None   # < 3 groups


@pytest.mark.parametrize("seed", range(5))
def test_line_fit_equals_scipy_linregress(seed):
    from scipy.stats import linregress

    from audit.measure.fairness import line_fit

    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 40))
    x = rng.normal(size=n) * 3
    y = 0.2 * x + rng.normal(size=n) * float(rng.uniform(0.01, 2))
    want = linregress(x, y)
    got = line_fit(x, y)
    np.testing.assert_allclose(got, [want.slope, want.intercept, want.rvalue, want.pvalue, want.stderr],
                               rtol=1e-9, atol=1e-12)
    exact = line_fit(np.array([1.0, 2, 3]), np.array([2.0, 4, 6]))   # a perfect line: r = 1, p = 0, no error
    assert exact == pytest.approx((2.0, 0.0, 1.0, 0.0, 0.0))


def test_flag_rates_hand_computed():
    keep = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    flagged = np.array([1, 0, 0, 0, 1, 1, 1, 1, 0, 0], bool)
    fr = flag_rates(keep, flagged)
    assert (fr["pool_count"], fr["kept_count"]) == (5, 1)
    assert fr["pool_rate"] == 0.5 and fr["kept_rate"] == 0.25 and fr["inclusion_rate"] == 0.2
    assert fr["concentration"] == 0.5 and fr["overall_rate"] == 0.4
    assert fr["kept_ci"] == pytest.approx(tuple(float(v) for v in wilson(1, 4)))


def test_confusion_hand_computed_and_sklearn():
    a = ["woman", "woman", "man", "man", "unknown", "multiple"]
    b = ["woman", "man", "man", "man", "woman", "man"]
    ag = confusion(a, b)
    assert ag.n_both == 4 and ag.agreement == 0.75
    assert ag.kappa == pytest.approx(0.5)   # pe = .5·.25 + .5·.75 = .5
    from sklearn.metrics import cohen_kappa_score

    assert ag.kappa == pytest.approx(cohen_kappa_score(a[:4], b[:4]))
    assert ag.table.loc["woman", "man"] == 1 and ag.raw.loc["unknown", "woman"] == 1
    # harmonised vocabularies: caption 'african' is compared as 'black'
    ag = confusion(["african", "white"], ["black", "white"], map_a={"african": "black"})
    assert ag.agreement == 1.0


def test_intersection_labels():
    got = combine_labels(np.array(["woman", "man", None], dtype=object), np.array(["older", "unknown", "young"]))
    assert got.tolist() == [f"woman{SEP}older", f"man{SEP}unknown", f"unknown{SEP}young"]
    assert is_labelled(got).tolist() == [True, False, False]


# ---- simulated ground truth --------------------------------------------------------------------------
def _truth_frame(store: str, by: list[str]) -> pd.DataFrame:
    from pathlib import Path

    p = Path(store)
    truth = pd.read_parquet(p.parent / f"{p.stem}_inputs" / "sim" / "truth.parquet")
    truth = truth[~truth["uid"].duplicated(keep=False)]          # injected duplicate uids are ambiguous
    truth = truth[truth["bad"] == "none"]
    with Store.reader(store) as st:
        frame = st.score_frame([SCORE]).merge(label_frame(st, by), on="uid")
    return frame.merge(truth[["uid", "mu", "age_gender", "lang"]], on="uid")


@pytest.mark.parametrize("columns", [["age_gender"], ["lang"], ["caption_gender", "caption_age"]])
def test_injected_gaps_recovered_within_intervals(demo_store, columns):
    from scipy.stats import norm

    from audit.demo.simulate import expected_inclusion

    t = 0.235
    d = _truth_frame(demo_store, ["caption_gender", "caption_age"])
    keep = d[SCORE].to_numpy() >= t
    labels = combine_labels(*[d[c].where(d[c] != "none", "unknown") for c in columns])
    table = group_table(keep, labels, min_n=30).set_index("group")
    expected = pd.Series(expected_inclusion(d["mu"].to_numpy(), t)).groupby(labels).mean()
    z = norm.ppf(1 - 0.025 / len(table))          # Bonferroni over the groups of this table
    lo, hi = wilson(table["kept"], table["n"], z)
    inside = (lo <= expected[table.index].to_numpy()) & (expected[table.index].to_numpy() <= hi)
    assert inside.all(), table.assign(expected=expected)[~inside]
    if columns == ["age_gender"]:       # the injected gaps: older women (small group) and young men (large)
        assert table.loc["older woman", "ci_high"] < table.attrs["overall"] and table.loc["older woman", "amplified"]
        assert table.loc["young man", "ci_high"] < table.attrs["overall"]
        assert not table.loc["young man", "under_represented"] and not table.loc["young man", "amplified"]
        assert not table.loc["middle-aged woman", "amplified"]
    if columns == ["lang"]:
        assert table.loc["non-en", "amplified"]


def test_no_injected_gap_shows_no_amplification(monkeypatch):
    from audit.demo import simulate as simulate

    monkeypatch.setattr(simulate, "SHIFTS", {})
    truth = simulate.simulate_truth(simulate.SimConfig(rows=20_000, seed=0))
    assert np.allclose(truth["mu"], simulate.MU)
    keep = truth["score_l14"].to_numpy() >= 0.235
    for col in ("age_gender", "race", "lang", "orientation", "gender"):
        t = group_table(keep, truth[col].where(truth[col] != "none", "unknown"), min_n=30)
        assert not t["amplified"].any(), (col, t[t["amplified"]])
        reg = amplification_regression(t)
        if reg is not None:
            assert abs(reg.slope) < 3 * reg.stderr + 1e-9, (col, reg)


def test_hand_made_store_equal_rates_no_amplification(make_store, tmp_path, monkeypatch, capsys):
    # three groups of very different sizes, every one with inclusion rate exactly 0.5
    sizes = {"a": 200, "b": 40, "c": 10}
    samples, values = [], []
    for g, n in sizes.items():
        for i in range(n):
            samples.append({"uid": f"{g}{i:04d}", "caption": f"a photo of {g}"})
            values.append(1.0 if i % 2 == 0 else 0.0)
    order = np.argsort([s["uid"] for s in samples])
    path = make_store(samples, scores={"s": np.asarray(values)[order]})
    with Store.writer(path) as st:
        run = st.start_run("annotate", "hand", params={})
        st.write_annotations(pd.DataFrame({"uid": [s["uid"] for s in samples], "attribute": "grp",
                                           "label": [s["uid"][0] for s in samples], "confidence": 1.0, "method": "hand"}),
                             run_id=run, method="hand")
    out = tmp_path / "r.csv"
    assert _cli(monkeypatch, ["report", "--store", path, "--keep", "s>=0.5", "--by", "grp", "--min-n", "5",
                              "--out", str(out)]) == 0
    t = pd.read_csv(out)
    assert t.columns[:8].tolist() == ["group", "n", "kept", "rate", "ci_low", "ci_high", "pool_share", "kept_share"]
    assert t["rate"].tolist() == [0.5, 0.5, 0.5] and t["n"].tolist() == [200, 40, 10]
    assert not t["amplified"].any()
    assert t["under_represented"].tolist() == [False, True, True]
    out_text = capsys.readouterr().out
    assert "exclusion amplification: none" in out_text
    # all three groups have n >= 5 and rate 0.5: the between-group (fairlearn) gap is 0 and the ratio 1
    assert "difference max − min rate = 0.0000, ratio min / max rate = 1.0000" in out_text


def test_report_csv_renames_to_overall_columns_and_keeps_the_old_names(make_store, tmp_path, monkeypatch):
    # group a: 3 of 4 kept (0.75), group b: 1 of 4 kept (0.25); overall 4 / 8 = 0.5
    samples = [{"uid": f"{g}{i}", "caption": "x"} for g in "ab" for i in range(4)]
    values = [1, 1, 1, 0, 1, 0, 0, 0]   # uid order: a0..a3, b0..b3
    path = make_store(samples, scores={"s": np.asarray(values, float)})
    with Store.writer(path) as st:
        run = st.start_run("annotate", "hand", params={})
        st.write_annotations(pd.DataFrame({"uid": [s["uid"] for s in samples], "attribute": "grp",
                                           "label": [s["uid"][0] for s in samples], "confidence": 1.0,
                                           "method": "hand"}), run_id=run, method="hand")
    out = tmp_path / "r.csv"
    assert _cli(monkeypatch, ["report", "--store", path, "--keep", "s>=0.5", "--by", "grp", "--min-n", "1",
                              "--out", str(out)]) == 0
    t = pd.read_csv(out).set_index("group")
    assert t["diff_to_overall"].tolist() == [0.25, -0.25] and t["ratio_to_overall"].tolist() == [1.5, 0.5]
    assert (t["difference"] == t["diff_to_overall"]).all() and (t["ratio"] == t["ratio_to_overall"]).all()
    # the new names sit where the old ones were; the old ones follow the contract columns
    assert list(t.reset_index().columns[8:10]) == ["diff_to_overall", "ratio_to_overall"]
    assert list(t.columns[-2:]) == ["difference", "ratio"]


# ---- the report stage ----------------------------------------------------------------------------------
def _cli(monkeypatch, argv):
    from audit.cli import main

    monkeypatch.setattr(sys, "argv", ["audit", *argv])
    return main(argv)


def test_report_matches_direct_computation(demo_store, tmp_path, monkeypatch):
    from audit.decide.selection import Rule, select

    out = tmp_path / "t.csv"
    assert _cli(monkeypatch, ["report", "--store", demo_store, "--keep", f"{SCORE}:top=0.3",
                              "--by", "caption_gender", "--by", "caption_age", "--out", str(out)]) == 0
    got = pd.read_csv(out, keep_default_na=False).set_index("group")
    with Store.reader(demo_store) as st:
        v = st.score_frame([SCORE])[SCORE].to_numpy(float)
        lab = label_frame(st, ["caption_gender", "caption_age"])
    keep = select([Rule.parse(f"{SCORE}:top=0.3")], {SCORE: v}).keep
    assert keep.sum() >= int(len(v) * 0.3) + 1
    grp = lab["caption_gender"] + " × " + lab["caption_age"]
    for g, sub in pd.DataFrame({"g": grp, "k": keep}).groupby("g"):
        assert got.loc[g, "n"] == len(sub) and got.loc[g, "kept"] == sub["k"].sum()
        assert got.loc[g, "rate"] == pytest.approx(sub["k"].mean())
        assert got.loc[g, "ci_low"] == pytest.approx(wilson(sub["k"].sum(), len(sub))[0])
    assert got["n"].sum() == len(v) and got["pool_share"].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("argv, message", [
    (["--keep", "nope>=1", "--by", "caption_gender"], "unknown score"),
    (["--keep", f"{SCORE}>>1", "--by", "caption_gender"], "cannot read keep rule"),
    (["--keep", f"{SCORE}:top=0.3", "--by", "no_such_attribute"], "unknown attribute"),
    (["--keep", f"{SCORE}:top=0.3", "--by", "caption_age", "--by", "caption_age"], "must differ"),
])
def test_report_bad_input_gives_a_clear_message(demo_store, tmp_path, monkeypatch, capsys, argv, message):
    rc = _cli(monkeypatch, ["report", "--store", demo_store, *argv, "--out", str(tmp_path / "x.csv")])
    assert rc == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


# ---- the page agrees with `report` ----------------------------------------------------------------------------
@pytest.mark.slow
def test_page_agrees_with_report(demo_store, tmp_path, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("AUDIT_STORE", demo_store)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/fairness.py").run()
    assert not at.exception
    cases = [(("fz_top", 0.3), None, f"{SCORE}:top=0.3", ["caption_gender"]),
             (("fz_top", 0.5), "caption_age", f"{SCORE}:top=0.5", ["caption_gender", "caption_age"])]
    for (slider, value), by2, spec, by in cases:
        at.slider(key=slider).set_value(value)
        if by2:
            at.selectbox(key="fz_by2").set_value(by2)
        at.run()
        assert not at.exception
        page = at.dataframe[0].value.set_index("group")
        out = tmp_path / "r.csv"
        assert _cli(monkeypatch, ["report", "--store", demo_store, "--keep", spec, *sum([["--by", b] for b in by], []),
                                  "--out", str(out)]) == 0
        cli = pd.read_csv(out, keep_default_na=False).set_index("group")
        assert sorted(page.index) == sorted(cli.index)
        for col in ("n", "kept"):
            assert (page.loc[cli.index, col].astype(int) == cli[col]).all()
        for col in ("rate", "ci_low", "ci_high", "pool_share", "kept_share", "diff_to_overall", "ratio_to_overall"):
            np.testing.assert_allclose(page.loc[cli.index, col].astype(float), cli[col], rtol=1e-9)
        assert (page.loc[cli.index, "amplified"].astype(bool) == cli["amplified"]).all()
    # threshold mode: the page's rule is the CLI's absolute threshold
    at.radio(key="fz_mode").set_value("threshold").run()
    at.slider(key="fz_threshold").set_value(0.24).run()
    assert not at.exception
    page = at.dataframe[0].value.set_index("group")
    _cli(monkeypatch, ["report", "--store", demo_store, "--keep", f"{SCORE}>=0.24", "--by", "caption_gender",
                       "--by", "caption_age", "--out", str(tmp_path / "t.csv")])
    cli = pd.read_csv(tmp_path / "t.csv", keep_default_na=False).set_index("group")
    assert (page.loc[cli.index, "kept"].astype(int) == cli["kept"]).all()
    # the other sections render with their numbers
    labels = {m.label for m in at.metric}
    assert {"Kept", "Overall inclusion rate", "Amplified groups", "Agreement", "Cohen's κ"} <= labels
    flags = next(d.value for d in at.dataframe if "category" in d.value.columns)
    assert flags["category"].tolist() == ["NSFW (combined evidence)", "copyright-relevant"]
    assert flags["in pool"].sum() > 0
    # a bad extra rule is an on-page message, not a traceback
    at.text_input(key="fz_extra").set_value("nope>=1").run()
    assert not at.exception and any("unknown score" in e.value for e in at.error)


@pytest.mark.slow
def test_page_on_a_store_without_annotations(make_store, monkeypatch):
    """Only sample columns to group by, no NSFW/copyright/agreement inputs: messages, no traceback."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    samples = [{"uid": f"u{i:03d}", "caption": "a photo", "source": ["a", "b", "c"][i % 3]} for i in range(60)]
    path = make_store(samples, scores={"s": np.linspace(0, 1, 60)})
    monkeypatch.setenv("AUDIT_STORE", path)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/fairness.py").run()
    assert not at.exception
    table = at.dataframe[0].value.set_index("group")
    assert table["n"].tolist() == [20, 20, 20] and table["kept"].sum() == int(60 * 0.3) + 1
    infos = " ".join(i.value for i in at.info)
    assert "annotate nsfw" in infos and "caption attribute" in infos and "regression needs at least 3" not in infos
