"""Recipes: ordered steps whose fractions refer to the whole pool, intersections, named filters, reasons."""
import numpy as np
import pytest

from audit.decide.recipes import Recipe, evaluate_specs, named_filters, overlap, spearman, threshold_among
from audit.decide.selection import Rule, RuleError, select

# 10 samples; a ranks them 0 (best) .. 9, b ranks them in reverse except sample 0
A = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], float)
B = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9], float)
COLS = {"a": A, "b": B}


def test_ordered_steps_take_fractions_of_the_whole_pool():
    ev = evaluate_specs("a:top=0.3 then b:top=0.2", COLS)
    # step 1: n = int(10·0.3) = 3, τ = 4th largest a = 7 -> samples 0..3 kept (DataComp's n+1 rule)
    # step 2: n = int(10·0.2) = 2, τ = 3rd largest b among survivors {10, 1, 2, 3} = 2 -> samples 0, 2, 3
    assert np.flatnonzero(ev.keep).tolist() == [0, 2, 3]
    assert ev.step_kept == [4, 3]
    assert ev.thresholds["a:top=0.3"] == 7 and ev.thresholds["step 2: b:top=0.2"] == 2
    # an intersection computes both thresholds over the whole pool instead: b ≥ 8 keeps {0, 8, 9}
    inter = evaluate_specs("a:top=0.3 & b:top=0.2", COLS)
    assert np.flatnonzero(inter.keep).tolist() == [0]


def test_reasons_per_sample_and_per_step():
    ev = evaluate_specs("a:top=0.3 then b:top=0.2", COLS)
    assert ev.why(0) == []
    assert ev.why(1) == ["b not in top 0.2 of the pool (step 2)"]
    assert ev.why(9) == ["a not in top 0.3"]                # excluded at step 1: not tested by step 2
    table = ev.reason_table().set_index("reason")
    assert table.loc["a not in top 0.3", "excluded"] == 6
    assert table.loc["b not in top 0.2 of the pool (step 2)", "excluded"] == 1
    inter = evaluate_specs("a>=5 & b>=5", COLS)
    assert inter.why(9) == ["a < 5"] and inter.why(2) == ["b < 5"] and inter.why(8) == ["a < 5"]
    t = inter.reason_table().set_index("reason")
    assert t.loc["a < 5", "only_reason"] == 4                # samples 6..9 fail a only (b ≥ 6 there)


def test_first_step_is_exactly_select():
    rng = np.random.default_rng(0)
    cols = {"x": rng.random(50), "y": rng.random(50)}
    cols["x"][[3, 7]] = np.nan
    rules = [Rule.parse("x:top=0.4"), Rule.parse("y>=0.2")]
    ev = evaluate_specs("x:top=0.4 & y>=0.2", cols)
    sel = select(rules, cols)
    assert (ev.keep == sel.keep).all() and ev.thresholds == sel.thresholds
    assert {k: v.tolist() for k, v in ev.failed.items()} == {k: v.tolist() for k, v in sel.failed.items()}


def test_equivalent_plain_rules_keep_the_same_samples():
    rng = np.random.default_rng(1)
    cols = {"x": rng.random(200), "y": rng.random(200), "z": rng.random(200)}
    ev = evaluate_specs("x:top=0.5 then y:top=0.3 & z>=0.1 then z:top=0.1", cols)
    plain = [Rule.parse(s) for s in ev.as_rules()]
    assert (select(plain, cols).keep == ev.keep).all()
    assert ev.step_kept[-1] == int(ev.keep.sum())


def test_threshold_among_survivors():
    alive = np.array([True, False, True, True, False])
    s = np.array([5.0, 9.0, 3.0, np.nan, 8.0])
    assert threshold_among(s, alive, 0.2, 5) == 3.0          # n = 1 -> 2nd largest of {5, 3}
    assert threshold_among(s, alive, 0.0, 5) == 5.0
    assert threshold_among(s, alive, 1.0, 5) == 3.0          # n ≥ finite survivors: all kept
    assert threshold_among(s, np.zeros(5, bool), 0.5, 5) == float("-inf")


def test_named_filters_expand_with_reasons():
    names = ["basic", "basic_words", "basic_chars", "basic_english", "basic_min_side", "basic_aspect"]
    cols = {n: np.array([1, 0, 0], float) for n in names}
    cols.update(basic_words=np.array([3, 2, 5.0]), basic_chars=np.array([6, 9, 9.0]),
                basic_english=np.array([1, 1, 0.0]), basic_min_side=np.array([200, 300, 199.0]),
                basic_aspect=np.array([3.0, 1, np.nan]))
    ev = evaluate_specs("basic", cols)
    assert ev.keep.tolist() == [True, False, False]
    assert ev.why(1) == ["basic: caption has ≤ 2 words"]
    assert ev.why(2) == ["basic: caption not English (py3langid)", "basic: smaller image side < 200 px or unknown",
                         "basic: aspect ratio > 3 or unknown"]
    assert named_filters(names) == ["basic"]
    assert "basic_words>=3.0" in ev.as_rules()


def test_image_based_needs_a_model_when_several():
    names = ["image_based_caption_m1", "image_based_target_m1", "image_based_caption_m2", "image_based_target_m2"]
    with pytest.raises(RuleError, match="several models"):
        Recipe.parse("image_based", names=names)
    r = Recipe.parse("image_based_m2", names=names)
    assert [x.score for x in r.rules] == ["image_based_caption_m2", "image_based_target_m2"]
    assert named_filters(names) == ["image_based_m1", "image_based_m2"]


def test_bad_recipes_are_clear_messages():
    with pytest.raises(RuleError, match="neither a keep rule nor a named filter"):
        Recipe.parse("negclip")
    with pytest.raises(RuleError, match="lacks laion_b32"):
        Recipe.parse("laion", names=["basic"])
    with pytest.raises(RuleError, match="one --keep spec"):
        Recipe.parse(["a:top=0.3 then b:top=0.1", "b>=1"])
    with pytest.raises(RuleError, match="unknown score"):
        evaluate_specs("c>=1", COLS)
    r = Recipe.parse(["a:top=0.3", "b>=2"])                  # several --keep specs intersect
    assert len(r.steps) == 1 and str(r) == "a:top=0.3 & b>=2"


def test_overlap_and_spearman():
    a = np.array([1, 1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 1, 0], bool)
    o = overlap(a, b)
    assert (o["both"], o["only_a"], o["only_b"]) == (2, 1, 1) and o["jaccard"] == pytest.approx(0.5)
    rho, n = spearman(np.array([1, 2, 3, 4, np.nan]), np.array([10, 20, 30, 40, 50]))
    assert rho == pytest.approx(1.0) and n == 4
    rho, _ = spearman(np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0]))
    assert rho == pytest.approx(-1.0)
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.random(40), rng.random(40)
    x[5] = x[6]                                              # a tie
    assert spearman(x, y)[0] == pytest.approx(spearmanr(x, y).statistic)


def test_spearman_from_sorted_orders_equals_scipy():
    """The page's ρ comes from the scores' precomputed sorted orders (no sort of the pool): average ranks of
    runs of ties, only rows where both are finite; it must equal scipy's on the same rows."""
    from scipy.stats import spearmanr

    from audit.decide.recipes import spearman_sorted
    from audit.store.columns import descending_order

    rng = np.random.default_rng(3)
    x, y = np.round(rng.normal(size=5000), 1), np.round(rng.normal(size=5000) + 0.0, 2)   # many ties
    y = y + 0.3 * x
    x[::13], y[::29] = np.nan, np.nan
    x[::31] = np.inf                                         # not finite: left out like NaN
    ok = np.isfinite(x) & np.isfinite(y)
    rho, n = spearman_sorted(x, y, descending_order(x), descending_order(y))
    assert n == ok.sum() and rho == pytest.approx(spearmanr(x[ok], y[ok]).statistic, abs=1e-12)
    assert rho == pytest.approx(spearman(x, y)[0], abs=1e-12)


def test_rule_table_of_one_sample():
    ev = evaluate_specs("a:top=0.3 then b:top=0.2", COLS)
    t = ev.rule_table(COLS, 9)                                # excluded at step 1: step 2 not tested
    assert t["passed"].tolist() == [False, None]
    assert t["keep if"].tolist() == [">= 7", ">= 2"] and t["value"].tolist() == [1.0, 9.0]
    assert ev.rule_table(COLS, 0)["passed"].tolist() == [True, True]


def test_default_score_is_continuous():
    from audit.decide.recipes import default_score

    assert default_score(["basic", "clip_l14_similarity_score", "negclip_x"]) == "clip_l14_similarity_score"
    assert default_score(["basic", "basic_aspect", "clip_vit_b_32_random"]) == "clip_vit_b_32_random"
    assert default_score(["basic", "basic_words", "laion", "normsim_inf_m"]) == "normsim_inf_m"
    assert default_score(["basic"]) == "basic"
