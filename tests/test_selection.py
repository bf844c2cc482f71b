"""Selection rules: hand-computed DataComp thresholds (methods.md §1.4(c), §9) and a second computation."""
import numpy as np
import pytest

from audit.decide.preview import PreviewData
from audit.decide.selection import Rule, RuleError, apply_rule, select, top_fraction_threshold


def test_parse_forms():
    assert Rule.parse("clip_l14>=0.25") == Rule("clip_l14", ">=", 0.25)
    assert Rule.parse(" negclip <= -1.5 ") == Rule("negclip", "<=", -1.5)
    assert Rule.parse("clip_l14:top=0.3") == Rule("clip_l14", "top", 0.3)
    assert str(Rule.parse("clip_l14:top=0.3")) == "clip_l14:top=0.3"
    for bad in ("clip>0.2", "clip:top=1.5", "1clip>=0.1", "clip>=nan", "clip:bottom=0.2"):
        with pytest.raises(RuleError):
            Rule.parse(bad)


def test_top_fraction_is_the_n_plus_first_largest():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    # N=10, p=0.3 -> n=int(3.0)=3 -> tau = 4th largest = 0.7 -> 4 kept (>= int(N p) + 1)
    assert top_fraction_threshold(scores, 0.3) == 0.7
    assert apply_rule(Rule("s", "top", 0.3), scores).sum() == 4
    # p=0.25 -> n=int(2.5)=2 -> tau = 3rd largest = 0.8
    assert top_fraction_threshold(scores, 0.25) == 0.8
    # p=0 -> n=0 -> tau = the largest: 1 kept
    assert apply_rule(Rule("s", "top", 0.0), scores).sum() == 1
    # p=1 keeps everything
    assert apply_rule(Rule("s", "top", 1.0), scores).all()


def test_ties_at_the_threshold_are_kept():
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    # n = int(4 * 0.25) = 1 -> tau = 2nd largest = 0.5 -> all three 0.5 are kept
    assert apply_rule(Rule("s", "top", 0.25), scores).tolist() == [True, True, True, False]


def test_nan_never_kept_and_counts_in_pool():
    scores = np.array([0.9, np.nan, 0.5, 0.1, np.nan])
    # N = 5 (whole pool, NaN included), p = 0.4 -> n = 2 -> tau = 3rd largest finite = 0.1
    assert top_fraction_threshold(scores, 0.4) == 0.1
    keep = apply_rule(Rule("s", "top", 0.4), scores)
    assert keep.tolist() == [True, False, True, True, False]
    assert apply_rule(Rule("s", ">=", 0.0), scores).tolist() == [True, False, True, True, False]


def test_absolute_threshold_inclusive():
    s = np.array([0.24999, 0.25, 0.3])
    assert apply_rule(Rule("s", ">=", 0.25), s).tolist() == [False, True, True]
    assert apply_rule(Rule("s", "<=", 0.25), s).tolist() == [True, True, False]


def test_intersection_and_reasons():
    cols = {"a": np.array([0.1, 0.5, 0.9, 0.7]), "b": np.array([1.0, 0.0, 1.0, 0.0])}
    sel = select([Rule("a", ">=", 0.5), Rule("b", ">=", 0.5)], cols)
    assert sel.keep.tolist() == [False, False, True, False]
    assert sel.counts_by_reason() == {"a < 0.5": 1, "b < 0.5": 2}
    assert sel.reasons() == ["a < 0.5", "b < 0.5", "", "b < 0.5"]
    with pytest.raises(RuleError, match="unknown score"):
        select([Rule("zzz", ">=", 0)], cols)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preview_threshold_matches_selection(seed):
    """Differential: the preview's sorted-array threshold equals np.partition's, and a sort-based oracle."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=1001)
    v[rng.choice(1001, 50, replace=False)] = np.nan
    v[:30] = 0.25  # ties
    import pandas as pd

    data = PreviewData.from_frame(pd.DataFrame({"uid": [str(i) for i in range(1001)], "score": v,
                                                "grp": rng.choice(["x", "y"], 1001)}))
    for p in (0.0, 0.01, 0.3, 0.5, 0.949, 0.95, 1.0):
        oracle_sorted = np.sort(v[~np.isnan(v)])[::-1]
        n = int(len(v) * p)
        oracle = oracle_sorted[min(n, len(oracle_sorted) - 1)]
        assert top_fraction_threshold(v, p) == oracle == data.threshold("top", p)
        assert data.keep(oracle).sum() == apply_rule(Rule("s", "top", p), v).sum()
        assert data.keep(oracle).sum() >= min(n + 1, len(oracle_sorted))
