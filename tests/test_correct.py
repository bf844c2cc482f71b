"""Corrected group rates (report --correct): each estimator on a hand-computed 2-group example, a differential
check of the confusion correction against a direct simulation, the singular case, and the CLI contract."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.measure.correct import (Confusion, CorrectionError, confusion_rates, rate_bounds, soft_rates,
                                   solve_true)

# gold: true man -> imputed man 8, woman 2; true woman -> man 1, woman 9   => P = [[.8, .2], [.1, .9]]
CONF = Confusion(["man", "woman"], ["man", "woman"], np.array([[8, 2], [1, 9]]))


def pool(n_man=90, k_man=42, n_woman=110, k_woman=28, n_unk=0, k_unk=0):
    labels = np.array(["man"] * n_man + ["woman"] * n_woman + ["unknown"] * n_unk, dtype=object)
    keep = np.concatenate([np.arange(n_man) < k_man, np.arange(n_woman) < k_woman, np.arange(n_unk) < k_unk])
    return keep, labels


def test_soft_by_hand():
    got = soft_rates(np.array([1, 0, 1]), np.array(["a", "a", "b"], dtype=object), np.array([1.0, 0.5, 0.8]),
                     ["a", "b"]).set_index("group")
    assert got.loc["a", "rate"] == pytest.approx(1 / 1.5)          # (1·1 + 0.5·0) / (1 + 0.5)
    assert got.loc["a", "n_eff"] == pytest.approx(1.5 ** 2 / 1.25)  # Kish: (Σw)² / Σw²
    assert got.loc["b", "rate"] == pytest.approx(1.0)


def test_confusion_recovers_the_true_rates_by_hand():
    # true pool N = [100, 100], K = [50, 20]: observed n = Pᵀ N = [90, 110], k = Pᵀ K = [42, 28]
    keep, labels = pool()
    assert (42 / 90, 28 / 110) == pytest.approx((0.4667, 0.2545), abs=1e-4)   # the naive rates, both wrong
    got = confusion_rates(keep, labels, CONF, bootstrap=50, seed=0).set_index("group")
    np.testing.assert_allclose(got["n_true"], [100, 100], atol=1e-9)
    np.testing.assert_allclose(got["kept_true"], [50, 20], atol=1e-9)
    np.testing.assert_allclose(got["rate"], [0.5, 0.2], atol=1e-12)
    assert (got["ci_low"] <= got["rate"]).all() and (got["rate"] <= got["ci_high"]).all()


def test_bounds_by_hand():
    keep, labels = pool(n_unk=20, k_unk=5)
    got = rate_bounds(keep, labels, ["man", "woman"], 0.1).set_index("group")
    # man: m = 9 may be mislabelled; add the 15 non-kept unknowns + 11 of woman's non-kept -> low = 33 / 107;
    # drop 9 non-kept, add 5 kept unknowns + 11 of woman's kept -> high = 58 / 97
    assert got.loc["man", "bound_low"] == pytest.approx(33 / 107)
    assert got.loc["man", "bound_high"] == pytest.approx(58 / 97)
    # no unknowns and no error: the bounds close on the naive rate
    keep, labels = pool()
    tight = rate_bounds(keep, labels, ["man", "woman"], 0.0).set_index("group")
    assert tight.loc["woman", "bound_low"] == tight.loc["woman", "bound_high"] == pytest.approx(28 / 110)


def test_singular_confusion_is_reported_not_inverted():
    with pytest.raises(CorrectionError, match="singular"):
        solve_true(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([10.0, 10.0]), np.array([5.0, 5.0]))


@pytest.mark.parametrize("rates", [(0.35, 0.20), (0.30, 0.30)], ids=["gap", "no-gap"])
def test_confusion_against_a_direct_simulation(rates):
    """Simulate true groups (with a gap, then without), impute through P, correct with a gold sample drawn the same
    way: the corrected interval covers the true rate; with a gap the naive rate misses it."""
    rng = np.random.default_rng(3)
    p = np.array([[0.85, 0.10, 0.05], [0.15, 0.80, 0.05], [0.05, 0.05, 0.90]])   # true x obs (obs 3 = unknown)
    names_true, names_obs = ["man", "woman"], ["man", "woman", "unknown"]
    p2 = p[:2]
    n = 200_000
    true = rng.choice(2, size=n, p=[0.6, 0.4])
    rates = np.array(rates)
    keep = rng.random(n) < rates[true]
    obs = (rng.random(n)[:, None] < np.cumsum(p2[true], axis=1)).argmax(axis=1)   # a draw from row true of P
    labels = np.array(names_obs, dtype=object)[obs]
    gold_idx = rng.choice(n, size=3000, replace=False)
    counts = np.zeros((2, 3), dtype=np.int64)
    np.add.at(counts, (true[gold_idx], obs[gold_idx]), 1)
    got = confusion_rates(keep, labels, Confusion(names_true, names_obs, counts), bootstrap=100, seed=1)
    got = got.set_index("group")
    np.testing.assert_allclose(got["rate"], rates, atol=0.02)
    assert ((got["ci_low"] <= rates) & (rates <= got["ci_high"])).all()
    from audit.measure.metrics import wilson

    lo, hi = wilson(int(keep[labels == "woman"].sum()), int((labels == "woman").sum()))
    if rates[0] != rates[1]:
        assert not lo <= rates[1] <= hi   # misclassification mixes the groups: the naive interval misses
    else:
        overall = keep.mean()              # no gap: the corrected intervals cover the overall rate
        assert ((got["ci_low"] <= overall) & (overall <= got["ci_high"])).all()


def test_report_contract(make_store, tmp_path, capsys):
    from audit.cli import main

    keep, labels = pool(n_man=90, k_man=42, n_woman=110, k_woman=28)
    n = len(labels)
    uids = [f"u{i:03d}" for i in range(n)]
    path = make_store([{"uid": u, "caption": "c"} for u in uids], scores={"s": keep.astype(float)})
    from audit.store import Store

    with Store.writer(path) as st:
        run = st.start_run("test", "labels", params={})
        st.write_annotations(pd.DataFrame({"uid": uids, "attribute": "caption_gender", "label": labels,
                                           "confidence": 1.0, "method": "test"}), run_id=run, method="test")
        st.end_run(run)
    # the gold sample realises P exactly: 8/2 of ten true men, 1/9 of ten true women
    gold_uids = [u for u, l in zip(uids, labels) if l == "man"][:9] + [u for u, l in zip(uids, labels) if l == "woman"][:11]
    gold_lab = ["man"] * 8 + ["woman"] + ["man"] * 2 + ["woman"] * 9   # imputed man 9 = 8 men + 1 woman; ...
    pd.DataFrame({"uid": gold_uids, "label": gold_lab}).to_csv(tmp_path / "gold.csv", index=False)
    out = tmp_path / "r.csv"
    assert main(["report", "--store", path, "--keep", "s>=1", "--by", "caption_gender", "--correct", "confusion",
                 "--gold", str(tmp_path / "gold.csv"), "--bootstrap", "30", "--out", str(out)]) == 0
    t = pd.read_csv(out).set_index("group")
    for col in ["group", "rate", "ci_low", "ci_high", "method", "rate_corrected", "ci_low_corrected",
                "ci_high_corrected", "bound_low", "bound_high", "gold_n"]:
        assert col in t.reset_index().columns
    assert t.loc["man", "rate"] == pytest.approx(42 / 90)                 # the naive figure unchanged
    assert t.loc["man", "rate_corrected"] == pytest.approx(0.5, abs=1e-9)
    assert t.loc["woman", "rate_corrected"] == pytest.approx(0.2, abs=1e-9)
    assert (t["gold_n"] == 20).all() and (t["method"] == "confusion").all()
    assert main(["report", "--store", path, "--keep", "s>=1", "--by", "caption_gender", "--correct", "bounds",
                 "--max-error", "0.1", "--out", str(out)]) == 0
    t = pd.read_csv(out).set_index("group")
    assert t.loc["man", "bound_low"] <= 42 / 90 <= t.loc["man", "bound_high"]
    assert main(["report", "--store", path, "--keep", "s>=1", "--by", "caption_gender", "--correct", "confusion",
                 "--out", str(out)]) == 1
    assert "needs gold labels" in capsys.readouterr().err


def test_amplified_robust_to_label_noise():
    from audit.measure.correct import corrected_columns, verdict_changes
    from audit.measure.fairness import group_table

    keep, labels = pool(n_man=100, k_man=10, n_woman=900, k_woman=500)   # man: 0.10 vs 0.51 overall
    table = group_table(keep, labels, min_n=30)
    assert bool(table.set_index("group").loc["man", "amplified"])
    strict = corrected_columns(table, keep, labels, None, "bounds", max_error=0.0).set_index("group")
    assert bool(strict.loc["man", "amplified_robust"])          # bound_high = 0.10 < 0.51
    loose = corrected_columns(table, keep, labels, None, "bounds", max_error=0.5)
    # up to half of the 100 may be women and 450 kept women may be men: high = 460 / 500 = 0.92 > 0.51
    assert loose.set_index("group").loc["man", "bound_high"] == pytest.approx(460 / 500)
    assert not bool(loose.set_index("group").loc["man", "amplified_robust"])
    assert verdict_changes(loose) == ["man: amplified by the naive rate, not once label noise is accounted for"]


def test_whos_in_page_label_noise_control_matches_the_report(demo_store, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from audit.cli import main
    from conftest import APP

    monkeypatch.setenv("AUDIT_STORE", demo_store)
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("pages/fairness.py").run()
    assert at.radio(key="fz_noise").options == ["naive", "soft", "corrected (gold confusion)", "bounds"]
    at.radio(key="fz_noise").set_value("corrected (gold confusion)").run()
    assert not at.exception and not at.error
    sentence = next(m.value for m in at.markdown if m.value.startswith("After correcting"))
    assert "gold n = 1,000" in sentence
    rule = at.session_state["fz_score"]
    frac = at.slider(key="fz_top").value
    out = tmp_path / "c.csv"
    assert main(["report", "--store", demo_store, "--keep", f"{rule}:top={frac}", "--by", "caption_gender",
                 "--correct", "confusion", "--out", str(out)]) == 0
    t = pd.read_csv(out)
    t = t[t["group"].isin(["man", "woman"])].sort_values("rate_corrected").iloc[0]
    assert f"**{t['group']}** is kept at {t['rate_corrected']:.3f} [{t['ci_low_corrected']:.3f}, " \
           f"{t['ci_high_corrected']:.3f}]" in sentence
    for opt in ("soft", "bounds"):
        at.radio(key="fz_noise").set_value(opt).run()
        assert not at.exception and not at.error


def test_gold_without_overlap_is_a_message(make_store, tmp_path, capsys):
    from audit.cli import main
    from audit.store import Store

    uids = [f"u{i}" for i in range(6)]
    path = make_store([{"uid": u, "caption": "c"} for u in uids], scores={"s": [1, 0, 1, 0, 1, 0]})
    with Store.writer(path) as st:
        run = st.start_run("test", "labels", params={})
        st.write_annotations(pd.DataFrame({"uid": uids, "attribute": "caption_gender",
                                           "label": ["man", "woman"] * 3, "confidence": 1.0, "method": "t"}),
                             run_id=run, method="t")
        st.end_run(run)
    base = ["report", "--store", path, "--keep", "s>=1", "--by", "caption_gender", "--correct", "confusion",
            "--out", str(tmp_path / "r.csv")]
    pd.DataFrame({"uid": uids[:3], "label": ["unknown"] * 3}).to_csv(tmp_path / "g.csv", index=False)
    assert main(base + ["--gold", str(tmp_path / "g.csv")]) == 1
    assert "no labelled class" in capsys.readouterr().err
    pd.DataFrame({"uid": ["x1", "x2"], "label": ["man", "woman"]}).to_csv(tmp_path / "g2.csv", index=False)
    assert main(base + ["--gold", str(tmp_path / "g2.csv")]) == 1
    assert "not samples of this store" in capsys.readouterr().err
    # a gold sample that imputes both classes alike: singular, reported
    pd.DataFrame({"uid": uids[:4], "label": ["man", "man", "woman", "woman"]}).to_csv(tmp_path / "g3.csv", index=False)
    assert main(base + ["--gold", str(tmp_path / "g3.csv")]) == 1
    assert "singular" in capsys.readouterr().err
