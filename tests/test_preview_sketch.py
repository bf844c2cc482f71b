"""The Filter preview's sketch (audit/decide/preview.py) gives exactly the full computation's counts, on a pool
large enough to have many blocks per group, with ties, missing scores and groups of every size."""
import numpy as np
import pandas as pd
from hypothesis import given, settings, strategies as hs

from audit.decide.preview import BLOCK, PreviewData
from audit.decide.selection import Rule, apply_rule
from audit.measure.metrics import encode_groups, rates_from_codes


def _pool(n: int, seed: int):
    rng = np.random.default_rng(seed)
    v = np.round(rng.normal(0.3, 0.05, n), 3)          # rounded: thousands of ties
    v[rng.random(n) < 0.03] = np.nan                    # no score
    groups = rng.choice(["woman", "man", "unknown", "multiple", "tiny", "mid"], n,
                        p=[0.2, 0.2, 0.45, 0.1, 0.0001, 0.0499])
    return v, groups


def test_counts_equal_the_full_computation_on_many_blocks():
    n = 300_000
    v, groups = _pool(n, 0)
    codes, labels = encode_groups(groups)
    data = PreviewData.from_arrays(v, codes, labels)
    assert len(data.sorted_desc) // BLOCK > 50            # many blocks, and per group many blocks' worth
    finite = np.sort(v[~np.isnan(v)])
    taus = [finite[0], finite[-1], finite[len(finite) // 2], float(np.nanmean(v)), -np.inf, np.inf, 0.3, 0.2999,
            *np.random.default_rng(1).choice(finite, 25)]   # values that are themselves ties in the pool
    for tau in taus:
        with np.errstate(invalid="ignore"):
            keep = v >= tau
        full = rates_from_codes(keep, codes, labels, min_n=30)
        fast, got_tau = data.table("threshold", tau, min_n=30)
        assert got_tau == tau
        pd.testing.assert_frame_equal(fast, full)
        # and a second, independent count: per group with pandas
        by_hand = pd.Series(keep).groupby(groups).sum()
        assert dict(zip(fast["group"], fast["kept"])) == {g: int(by_hand[g]) for g in labels}
        assert np.array_equal(data.keep(tau), keep)


def test_top_fraction_is_the_datacomp_rank_and_counts_match():
    n = 120_001
    v, groups = _pool(n, 2)
    codes, labels = encode_groups(groups)
    data = PreviewData.from_arrays(v, codes, labels)
    for p in (0.0, 0.01, 0.1, 0.3, 0.5, 0.9, 0.97, 1.0):
        oracle = np.sort(v[~np.isnan(v)])[::-1]
        tau = oracle[min(int(n * p), len(oracle) - 1)]       # the (int(N·p)+1)-th largest of the pool
        fast, got = data.table("top", p)
        assert got == tau
        keep = apply_rule(Rule("s", "top", p), v)
        pd.testing.assert_frame_equal(fast, rates_from_codes(keep, codes, labels))


def test_histogram_equals_numpy():
    v, groups = _pool(50_000, 3)
    codes, labels = encode_groups(groups)
    data = PreviewData.from_arrays(v, codes, labels)
    counts, edges = data.histogram(40)
    want, want_edges = np.histogram(v[~np.isnan(v)], bins=40)
    np.testing.assert_allclose(edges, want_edges)
    assert counts.sum() == np.isfinite(v).sum()
    assert np.array_equal(counts, want)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(hs.lists(hs.one_of(hs.none(), hs.integers(0, 6)), min_size=1, max_size=300),
       hs.lists(hs.integers(0, 3), min_size=300, max_size=300), hs.integers(-1, 7), hs.floats(0, 1))
def test_any_small_pool(vals, grp, tau, p):
    v = np.array([np.nan if x is None else float(x) for x in vals])
    groups = np.array([f"g{x}" for x in grp[:len(v)]])
    codes, labels = encode_groups(groups)
    data = PreviewData.from_arrays(v, codes, labels)
    with np.errstate(invalid="ignore"):
        keep = v >= tau
    pd.testing.assert_frame_equal(data.table("threshold", tau)[0], rates_from_codes(keep, codes, labels))
    pd.testing.assert_frame_equal(data.table("top", p)[0],
                                  rates_from_codes(apply_rule(Rule("s", "top", p), v), codes, labels))


def test_store_aggregates_equal_numpy(make_store):
    """The store's SQL aggregates the pages read (score histogram, group arrays, examples, uid positions) equal
    numpy over the same rows."""
    from audit.store import Store

    rng = np.random.default_rng(5)
    n = 3000
    uids = [f"{rng.integers(1 << 60):016x}{i:04d}" for i in range(n)]
    src = rng.choice(["a", "b", "c"], n)
    v = np.round(rng.normal(size=n), 2)
    v[::17] = np.nan
    order = np.argsort(uids)
    path = make_store([{"uid": u, "caption": "c", "source": s} for u, s in zip(uids, src)],
                      scores={"s": v[order]})   # scores align with the sorted uids
    vs, srcs, us = v[order], src[order], np.asarray(uids)[order]
    with Store.reader(path) as st:
        counts, edges = st.score_histogram("s", 30)
        want, want_edges = np.histogram(vs[~np.isnan(vs)], bins=30)
        np.testing.assert_allclose(edges, want_edges)
        assert np.array_equal(counts, want)
        values, codes, labels = st.score_group_arrays("s", "source")
        np.testing.assert_array_equal(values, vs)
        assert list(labels) == ["a", "b", "c"] and np.array_equal(labels[codes], srcs)
        ex = st.group_examples("s", "source", 50)
        assert ex.groupby("grp").size().to_dict() == {"a": 50, "b": 50, "c": 50}
        by_uid = dict(zip(us, zip(vs, srcs)))
        bad = [(u, val, g, by_uid[u]) for u, val, g, _ in ex.itertuples(index=False) if by_uid[u] != (val, g)]
        assert not bad, bad[:3]
        assert list(us[ex["row"].to_numpy()]) == ex["uid"].tolist()   # row: the position in uid order
        from audit.ui import Gallery

        g = Gallery(st, ex[ex["grp"] == "b"], complete=False)   # the page's examples of group b, read by row
        assert g.rows["uid"].tolist() == ex.loc[ex["grp"] == "b", "uid"].tolist()
        assert g.rows["caption"].eq("c").all()
        for tau in (-1.0, 0.0, 0.37, 5.0):   # the first 8 of the draw on each side, against pandas' filter
            b = ex[ex["grp"] == "b"].reset_index(drop=True)
            assert g.pick(tau, True).tolist() == b.index[b["value"] >= tau][:8].tolist()
            assert g.pick(tau, False).tolist() == b.index[b["value"] < tau][:8].tolist()
        pos = g.pick(0.0, True)
        html_ = g.grid(pos, reveal=False, blur_uids=frozenset())
        assert html_.count("<div title=") == len(pos) and all(u in html_ for u in g.rows["uid"].iloc[pos])
        flagged = frozenset([g.rows["uid"].iloc[pos[0]]])   # an NSFW-flagged sample among them: another grid
        assert "(blurred)" in g.grid(pos, reveal=False, blur_uids=flagged)
        assert "(blurred)" not in g.grid(pos, reveal=True, blur_uids=flagged)
        assert g.grid(pos, reveal=False, blur_uids=frozenset()) == html_
        few = st.group_examples("s", "source", 8, label="b", tau=2.0, kept=True)
        assert len(few) == min(8, int(((vs >= 2.0) & (srcs == "b")).sum())) and (few["value"] >= 2.0).all()
        from audit.decide.selection import top_fraction_threshold, top_fraction_threshold_sorted

        for frac in (1e-6, 0.01, 0.3, 0.5, 0.97, 1.0):   # read off the stored order = a partition of the values
            got = top_fraction_threshold_sorted(st.score_array("s"), st.score_order("s"), frac)
            assert got == top_fraction_threshold(vs, frac), frac
        rows = [0, 5, n - 1, 1234]
        assert st.uids_at(rows) == [us[r] for r in rows]
        assert st.uid_row(us[777]) == 777 and st.uid_row("not-a-uid") is None
