"""The Filter preview's live charts (audit/charts.py, Vega-Lite): valid specs, the data the page computed, and a spec
that does not change when only the slider moves (a changed spec makes the browser build the chart again)."""
import json

import altair as alt
import numpy as np
import pytest

from audit import charts
from audit.decide.preview import PreviewData
from audit.measure.metrics import group_rates, rates_from_counts


def _table(n, kept, labels, min_n=30):
    return rates_from_counts(np.array(n), np.array(kept), np.array(labels), min_n=min_n)


def _valid(spec: dict) -> None:
    alt.LayerChart.from_dict(spec, validate=True)   # the Vega-Lite schema Streamlit's altair ships


def test_rate_spec_holds_the_table_ordered_by_rate():
    t = _table([100, 5000, 20, 3000], [30, 1500, 2, 1200], ["a", "b", "<i>c</i>", "d"])
    data, spec = charts.rate_spec(t, title="Inclusion rate by g", min_n=30)
    data = data.to_pandas()
    _valid(spec)
    # by hand: rates a 0.3, b 0.3, c 0.1, d 0.4; sorted ascending with ties in table order; c is small (n 20 < 30)
    assert data["label"].tolist() == ["<i>c</i> (n=20)", "a (n=100)", "b (n=5,000)", "d (n=3,000)"]
    assert data["order"].tolist() == [0, 1, 2, 3]
    assert data["rate"].tolist() == pytest.approx([0.1, 0.3, 0.3, 0.4])
    assert data["colour"].tolist() == [charts.PALETTE["small"]] + [charts.PALETTE["kept"]] * 3
    assert data["overall"].unique().tolist() == pytest.approx([(30 + 1500 + 2 + 1200) / 8120])
    assert (data["ci_low"] <= data["rate"]).all() and (data["rate"] <= data["ci_high"]).all()
    assert data[["kept", "n"]].to_numpy().tolist() == [[2, 20], [30, 100], [1500, 5000], [1200, 3000]]


def test_rate_spec_shows_the_largest_groups_and_says_so():
    n = np.arange(1, 41) * 10
    t = _table(n, n // 2, [f"g{i}" for i in range(40)], min_n=1)
    data, spec = charts.rate_spec(t, title="T", max_groups=30)
    data = data.to_pandas()
    assert len(data) == 30 and set(data["n"]) == set(n[10:].tolist())
    assert spec["title"] == "T — the 30 largest of 40 groups"


def test_a_slider_move_changes_the_data_not_the_spec():
    rng = np.random.default_rng(3)
    vals = rng.normal(size=50_000)
    codes = rng.integers(0, 4, size=50_000)
    d = PreviewData.from_arrays(vals, codes, np.array(["a", "b", "c", "unknown"]))
    specs, datas = set(), []
    for p in (0.1, 0.3, 0.31, 0.9):
        table, tau = d.table("top", p, min_n=30)
        counts, edges = d.histogram()
        for data, spec in (charts.rate_spec(table, title="Inclusion rate by g"),
                           charts.histogram_spec(counts, edges, title="s", tau=tau),
                           charts.compare_spec(table, table, title="A vs B", label_a=f"A keeps top {p}",
                                               label_b="B keeps top 0.3")):
            _valid(spec)
            specs.add(json.dumps(spec, sort_keys=True))
            datas.append(data.to_pandas())
    assert len(specs) == 3                     # one spec per chart over every move
    rates = [x["rate"].tolist() for x in datas[0::3]]
    assert len({tuple(r) for r in rates}) == 4  # …and the data moved each time
    taus = [x["tau"].iloc[0] for x in datas[1::3]]
    assert taus == sorted(taus, reverse=True)  # a larger top fraction is a lower threshold


def test_histogram_spec_bins_and_no_threshold():
    vals = np.array([0.0, 0.1, 0.1, 0.2, 0.5, 1.0])
    counts, edges = np.histogram(vals, bins=4)
    data, spec = charts.histogram_spec(counts, edges, title="s", tau=None)
    data = data.to_pandas()
    _valid(spec)
    assert data["samples"].tolist() == [4, 0, 1, 1]     # [0, .25) [.25, .5) [.5, .75) [.75, 1]
    assert data["lo"].tolist() == pytest.approx(edges[:-1].tolist())
    assert data["hi"].tolist() == pytest.approx(edges[1:].tolist())
    assert data["tau"].isna().all()            # the line's layers filter missing values out: no line drawn
    assert json.dumps(spec, sort_keys=True) == json.dumps(charts.histogram_spec(counts, edges, title="s", tau=0.3)[1],
                                                          sort_keys=True)


def test_bars_spec_keeps_the_order_and_leaves_room_for_the_counts():
    data, spec = charts.bars_spec(["b", "<a>", "c"], [5, 40, 0], title="t", xtitle="rows")
    _valid(spec)
    d = data.to_pandas()
    assert d["label"].tolist() == ["b", "<a>", "c"] and d["n"].tolist() == [5, 40, 0] and d["order"].tolist() == [0, 1, 2]
    x = spec["layer"][0]["encoding"]["x"]
    assert x["scale"]["domain"] == [0, pytest.approx(46.0)]   # 40 × 1.15: the count beside the longest bar fits
    assert "color" not in spec["layer"][0]["encoding"]
    data, spec = charts.bars_spec(["r1", "r2"], [3, 1], colour=["ingest", "embed"], colour_title="stage",
                                  title="t", xtitle="rows")
    _valid(spec)
    assert data.to_pandas()["colour"].tolist() == ["ingest", "embed"]
    assert spec["layer"][0]["encoding"]["color"]["field"] == "colour"
    _, spec = charts.bars_spec([], [], title="t", xtitle="rows")   # no rows: a valid empty chart
    _valid(spec)


def test_compare_spec_orders_groups_by_a():
    keep_a = np.array([1, 1, 0, 0, 1, 0, 1, 1], bool)
    keep_b = np.array([0, 1, 1, 1, 0, 0, 0, 1], bool)
    g = np.array(["x", "x", "y", "y", "z", "z", "z", "z"])
    a, b = group_rates(keep_a, g, min_n=1), group_rates(keep_b, g, min_n=1)
    data, spec = charts.compare_spec(a, b, title="t", label_a="A", label_b="B")
    data = data.to_pandas()
    _valid(spec)
    # A: x 1.0, y 0.0, z 0.75 → order y, z, x; B: x 0.5, y 1.0, z 0.25, in A's order
    assert data[data["filter"] == "A"][["label", "order", "rate"]].values.tolist() == \
        [["y (n=2)", 0, 0.0], ["z (n=4)", 1, 0.75], ["x (n=2)", 2, 1.0]]
    assert data[data["filter"] == "B"][["label", "order", "rate"]].values.tolist() == \
        [["y (n=2)", 0, 1.0], ["z (n=4)", 1, 0.25], ["x (n=2)", 2, 0.5]]


def test_density_spec_counts_every_pair_once():
    """By hand: on a 60 × 60 grid over [0, 6] × [0, 60], a cell is 0.1 wide and 1 high; NaN pairs are left out."""
    x = np.array([0.0, 0.05, 0.05, 6.0, np.nan, 3.0, 3.0])
    y = np.array([0.0, 0.5, 0.5, 60.0, 1.0, np.nan, 30.2])
    data, spec = charts.density_spec(x, y, xlabel="a", ylabel="b", title="Both scores")
    _valid(spec)
    cells = sorted(zip(data.column("x").to_pylist(), data.column("y").to_pylist(),
                       data.column("samples").to_pylist()))
    # (0, 0) and (0.05, 0.5) twice share the first cell; 6.0 / 60.0 fall in the last (closed) one; (3.0, 30.2)
    assert [(round(a, 6), round(b, 6), k) for a, b, k in cells] == [(0.0, 0.0, 3), (3.0, 30.0, 1), (5.9, 59.0, 1)]
    assert sum(k for *_, k in cells) == int((np.isfinite(x) & np.isfinite(y)).sum()) == 5
    # a second computation: numpy's own 2-D histogram, non-empty cells only
    want, _, _ = np.histogram2d(x[np.isfinite(x) & np.isfinite(y)], y[np.isfinite(x) & np.isfinite(y)], bins=60)
    assert sorted(k for *_, k in cells) == sorted(want[want > 0].astype(int).tolist())
    none, spec0 = charts.density_spec(np.array([np.nan]), np.array([1.0]), xlabel="a", ylabel="b", title="T")
    assert none.num_rows == 0 and "no sample has both scores" in spec0["title"]
    _valid(spec0)
