"""VAS-D as passes over the vector parts: the same numbers as the iterations by hand, and as the in-memory loop over
the same vectors and draws (an independent read of the vector files), with and without the CLIP-score pre-step."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from audit.cli import main
from audit.engine import Engine
from audit.scores.base import keyed_uniforms, run_score
from audit.scores.vas import keyed_draw, vas_d
from audit.store import Store, copy_store

E1, E2, E3 = np.eye(3, dtype=np.float32)


def _values(path, name):
    with Store.reader(path) as st:
        frame = st.score_frame([name])
        note = st.runs().iloc[-1]["note"]
    return frame.set_index("uid")[name], note


def test_streamed_vas_d_by_hand(make_store):
    samples = [{"uid": u, "caption": "a b c"} for u in "abcd"]
    path = make_store(samples, vectors={"m": (list("abcd"), np.stack([E1, E1, E2, E3]), np.stack([E1, E1, E2, E3]))})
    assert main(["score", "vas-d", "--store", path, "--model", "m", "--iters", "2", "--fraction-vas", "0.5",
                 "--target-fraction", "1"]) == 0
    got, note = _values(path, "vas_d_m")
    assert "engine local" in note               # the streamed form ran (the in-memory form writes no engine)
    # as tests/test_scores_math.py by hand: drop c at it 0, then d; survivors a, b at 2 + 1/3, 2 + 2/3
    assert got.loc[list("abcd")].tolist() == pytest.approx([2 + 1 / 3, 2 + 2 / 3, 0.0, 1.0])


def test_keyed_draw_is_the_uniform_below_the_fraction_and_never_empty():
    uids = np.array([f"u{i}" for i in range(50)], dtype=object)
    alive = np.arange(0, 50, 2)
    u = keyed_uniforms(uids, alive, np.full(len(alive), 3), 7)
    assert keyed_draw(uids, 0.3, 7)(alive, 3).tolist() == alive[u < 0.3].tolist()
    assert keyed_draw(uids, 1e-9, 7)(alive, 3).tolist() == [alive[np.argmin(u)]]


def _reference(path, model, iters, fraction_vas, target_fraction, seed, clip=None, fraction=1.0):
    """The in-memory loop on the vector parts read here with pyarrow (not the engine's reader): ({uid: survival
    score} of the candidates, N = the samples with a finite vector, the N of n* = int(fraction_vas · N))."""
    from audit.decide.selection import top_fraction_threshold
    from audit.store.vectors import half_matrix, half_to_float32, parts

    with Store.reader(path) as st:
        files = parts(st, model)
        samples = set(st.sample_uids())
        scores = st.score_frame([clip])[["uid", clip]] if clip else None
    uids, vecs = [], []
    for f in files:
        t = pq.read_table(f, columns=["uid", "img"])
        uids += t.column("uid").to_pylist()
        vecs.append(half_to_float32(half_matrix(t.column("img"))))
    x = np.concatenate(vecs).astype(np.float64)
    uids = np.array(uids, dtype=object)
    norm = np.linalg.norm(x, axis=1)
    ok = np.isfinite(norm) & (norm > 0) & np.isin(uids, list(samples))
    order = np.argsort(uids[ok], kind="stable")            # the parts are sorted by uid and do not overlap
    u, f = uids[ok][order], (x[ok] / norm[ok, None])[order].astype(np.float32)
    cand = np.arange(len(u))
    if clip:
        tau = top_fraction_threshold(scores[clip].to_numpy(float), fraction)
        sc = scores.set_index("uid")[clip].reindex(u).to_numpy(float)
        with np.errstate(invalid="ignore"):
            cand = np.flatnonzero(sc >= tau)
    surv = vas_d(f[cand], target_size=int(fraction_vas * len(u)), iters=iters,
                 draw=keyed_draw(u[cand], target_fraction, seed))
    return dict(zip(u[cand], surv)), len(u)


@pytest.mark.parametrize("pre_step", [False, True], ids=["all", "clip-pre-step, spawned workers"])
def test_streamed_vas_d_equals_the_in_memory_loop_on_the_demo_vectors(demo_store, tmp_path, monkeypatch, pre_step):
    if pre_step:   # the stage's passes in one pool of spawned workers, each reading the pass's state file
        from audit.store import streamed

        monkeypatch.setattr(streamed, "PARALLEL_MIN_ROWS", 1)
    path = str(tmp_path / "s.duckdb")
    copy_store(demo_store, path)
    params = {"iters": 7, "fraction_vas": 0.3, "target_fraction": 0.1, "fraction": 1.0, "clip_score": None}
    if pre_step:
        params.update(fraction=0.5, clip_score="clip_b32_similarity_score")
    run_score("vas-d", path, model="datacomp_b32", params=params, seed=3, force=True, echo=lambda s: None,
              engine=Engine("local", batch_rows=250))          # many batches, batches that end mid-part
    got, note = _values(path, "vas_d_datacomp_b32")
    assert "engine local" in note
    want, n_finite = _reference(path, "datacomp_b32", 7, 0.3, 0.1, 3, params["clip_score"], params["fraction"])
    assert set(got.dropna().index) == set(want)                # the candidates; every other sample NaN
    keys = sorted(want)
    a, b = got.loc[keys].to_numpy(float), np.array([want[k] for k in keys])
    np.testing.assert_allclose(np.sort(a), np.sort(b), atol=1e-6)      # the same survival scores ...
    # ... on the same rows, but for a few near-ties (the simulated near-duplicates) whose order flips with the
    # float rounding of Σ: summed per batch here, per 65,536-row chunk in the loop
    assert (np.abs(a - b) <= 1e-6).mean() >= 0.995
    n_star = int(0.3 * n_finite)
    top = set(got.sort_values(ascending=False).index[:n_star])
    assert len(top ^ set(sorted(want, key=want.get, reverse=True)[:n_star])) <= 2
    assert (got.dropna() >= 7).sum() == n_star                  # exactly n* survive the last iteration
