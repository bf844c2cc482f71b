"""The simulated pool keeps its ground truth: the preview's numbers must recover the injected gaps.

Each simulated sample i has a known score mean mu_i, so its probability of passing an absolute threshold t is
p_i(t) = 1 − Φ((t − mu_i)/σ) and a group's expected inclusion rate is the mean of p_i over its members.
"""
import pandas as pd
import pytest

from audit.annotators.base import run_annotator
from audit.ingest.run import ingest
from audit.decide.preview import PreviewData
from audit.demo.simulate import SOURCES, SimConfig, expected_inclusion, write_pool
from audit.store import Store

T = 0.25
SCORE = "clip_l14_similarity_score"


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    write_pool(d / "pool", SimConfig(rows=30_000, seed=3))
    (d / "pool" / "truth.parquet").replace(d / "truth.parquet")
    (d / "pool" / "latent.json").replace(d / "latent.json")
    store = str(d / "s.duckdb")
    for name in SOURCES:
        ingest("datacomp", [str(d / "pool" / f"{name}.parquet")], store_path=store, source=name, simulated=True,
               progress=False, echo=lambda s: None)
    run_annotator("caption", store, echo=lambda s: None)
    truth = pd.read_parquet(d / "truth.parquet")
    return store, truth[truth["bad"] == "none"].set_index("uid")


def table_for(store, group, truth=None, truth_col=None):
    with Store.reader(store) as st:
        if truth_col:
            frame = st.df(f"SELECT s.uid, sc.value AS score FROM samples s LEFT JOIN scores sc "
                          f"ON sc.uid = s.uid AND sc.name = ? ORDER BY s.uid", [SCORE])
            frame["grp"] = truth.loc[frame["uid"], truth_col].to_numpy()
        else:
            frame = st.score_and_groups(SCORE, group)
    data = PreviewData.from_frame(frame)
    table, tau = data.table("threshold", T, min_n=30)
    return table.set_index("group"), frame


@pytest.mark.slow
@pytest.mark.parametrize("group,truth_col", [("caption_orientation", None), ("caption_age", None),
                                             ("caption_gender", None), ("source", None), (None, "age_gender"),
                                             (None, "lang")])
def test_expected_rates_inside_wilson_intervals(sim_store, group, truth_col):
    store, truth = sim_store
    table, frame = table_for(store, group, truth, truth_col)
    p = expected_inclusion(truth.loc[frame["uid"], "mu"].to_numpy(), T)
    expected = pd.Series(p).groupby(frame["grp"].fillna("unknown").to_numpy()).mean()
    checked = 0
    for g, row in table.iterrows():
        if row["n"] < 30:
            continue
        assert row["ci_low"] <= expected[g] <= row["ci_high"], (g, row["rate"], expected[g], row["ci_low"], row["ci_high"])
        checked += 1
    assert checked >= 2


@pytest.mark.slow
def test_injected_gap_is_visible_and_no_gap_where_none_was_injected(sim_store):
    store, truth = sim_store
    table, frame = table_for(store, None, truth, "age_gender")
    overall = table.attrs["overall"]
    older_women = table.loc["older woman"]
    assert older_women["ci_high"] < overall  # the injected lower inclusion rate is recovered
    assert table.loc["young man"]["ci_high"] < overall
    # religion mentions carry no score shift: their intervals cover the overall rate
    rel, _ = table_for(store, "caption_religion")
    rel = rel[(rel["n"] >= 30) & (rel.index != "unknown")]
    assert len(rel) == 3
    assert ((rel["ci_low"] <= rel.attrs["overall"]) & (rel.attrs["overall"] <= rel["ci_high"])).all()
