"""Group rates and Wilson intervals: hand-computed values plus an independent quadratic-root oracle."""
import numpy as np
import pytest

from audit.measure.metrics import Z95, difference, group_rates, ratio, wilson


def wilson_oracle(k, n, z=Z95):
    """Bounds of the Wilson interval are the roots p of (k/n − p)² = z² p (1 − p) / n."""
    ph = k / n
    a = 1 + z * z / n
    b = -(2 * ph + z * z / n)
    c = ph * ph
    lo, hi = sorted(np.roots([a, b, c]).real)
    return max(lo, 0.0), min(hi, 1.0)


def test_wilson_hand_values():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(0, 0)
    assert (lo, hi) == (0.0, 1.0)


@pytest.mark.parametrize("k,n", [(1, 3), (7, 9), (30, 100), (999, 1000), (0, 50), (50, 50)])
def test_wilson_matches_quadratic_roots(k, n):
    lo, hi = wilson(k, n)
    olo, ohi = wilson_oracle(k, n)
    assert lo == pytest.approx(olo, abs=1e-9) and hi == pytest.approx(ohi, abs=1e-9)


def test_group_rates_by_hand():
    keep = np.array([1, 0, 1, 1, 0], bool)
    groups = np.array(["a", "a", "b", "b", "b"])
    t = group_rates(keep, groups, min_n=3).set_index("group")
    assert t.loc["a", "n"] == 2 and t.loc["a", "kept"] == 1 and t.loc["a", "rate"] == 0.5
    assert t.loc["b", "rate"] == pytest.approx(2 / 3)
    assert t.attrs["overall"] == pytest.approx(0.6)
    assert t.loc["a", "diff_to_overall"] == pytest.approx(0.5 - 0.6)
    assert t.loc["b", "ratio_to_overall"] == pytest.approx((2 / 3) / 0.6)
    assert t.loc["a", "pool_share"] == pytest.approx(0.4) and t.loc["a", "kept_share"] == pytest.approx(1 / 3)
    assert bool(t.loc["a", "small"]) and not bool(t.loc["b", "small"])
    tt = group_rates(keep, groups)
    assert difference(tt) == pytest.approx(2 / 3 - 0.5)
    assert ratio(tt) == pytest.approx(0.5 / (2 / 3))


def test_missing_labels_become_unknown_and_masked_recompute():
    rng = np.random.default_rng(0)
    keep = rng.random(500) < 0.3
    groups = rng.choice(np.array(["x", "y", None], dtype=object), 500)
    t = group_rates(keep, groups).set_index("group")
    assert "unknown" in t.index
    for g in ("x", "y"):  # differential: each group's rate equals the rate on the masked subset
        m = groups == g
        assert t.loc[g, "rate"] == pytest.approx(keep[m].mean())
    assert t["n"].sum() == 500 and t["kept"].sum() == keep.sum()
