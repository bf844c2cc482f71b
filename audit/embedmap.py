"""A 2-d UMAP map of one model's stored embeddings; coordinates go to the ``embedding_map`` table.

``python -m audit map --store DB --model MODEL`` does, in bounded memory:

1. pass 0 over the model's Parquet parts (uids only): draw the fit sample, at most ``--fit-sample``
   (50,000) rows, seeded;
2. pass 1: read the fit rows' vectors; fit PCA (``--pca``, 50 components, on L2-normalised vectors) and
   UMAP (umap-learn) on their projections;
3. pass 2: every other row, part by part in chunks of ``--chunk`` rows: project, find its neighbours among
   the fit rows, and place it with ``UMAP.transform``.

No pass holds more than one Parquet part (plus the fit sample) in memory: a 1M-row store is never loaded
into one dense array. The neighbour search is ours and is handed to umap-learn (``precomputed_knn`` for the
fit; ``place`` for new rows, umap's own transform steps with a vectorised initialisation, checked against
``UMAP.transform`` in the tests): ``exact`` (brute force with BLAS, chunked) when the number of distance
evaluations is small, else ``nndescent`` (pynndescent's approximate index, what umap-learn itself uses; its
numba compilation costs ~30 s of CPU once per process). ``auto`` picks by EXACT_MAX_PAIRS.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

FIT_MAX = 50_000
EXACT_MAX_PAIRS = 2e9      # fit² + rest·fit distance evaluations below which `auto` searches exactly


@dataclass
class MapParams:
    column: str = "img"              # img or txt
    fit_sample: int = FIT_MAX
    n_neighbors: int = 15
    min_dist: float = 0.1
    n_epochs: int | None = None      # None: umap-learn's default (200 for > 10k fit rows, else 500)
    pca: int = 50                    # 0: no PCA
    chunk: int = 20_000
    knn: str = "auto"                # auto | exact | nndescent
    transform_epochs: int | None = None  # None: umap's rule (see place())

    def check(self) -> None:
        if self.column not in ("img", "txt"):
            raise ValueError(f"--column must be img or txt, got {self.column!r}")
        if not 2 <= self.fit_sample <= FIT_MAX:
            raise ValueError(f"--fit-sample must be between 2 and {FIT_MAX:,}, got {self.fit_sample:,}")
        if self.n_neighbors < 2:
            raise ValueError("--n-neighbors must be at least 2")
        if self.knn not in ("auto", "exact", "nndescent"):
            raise ValueError(f"--knn must be auto, exact or nndescent, got {self.knn!r}")
        if self.chunk < 1:
            raise ValueError("--chunk must be positive")


# ---- maths (pure numpy; no I/O) -------------------------------------------------------------------------
def fit_pca(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """PCA of L2-normalised rows. x: (n, d). Returns (mean (d,), components (k', d)) or None when k = 0 or
    k >= d (no reduction)."""
    from sklearn.decomposition import PCA

    x = _normalise(x)
    k = min(k, x.shape[0] - 1, x.shape[1])
    if k <= 0 or k >= x.shape[1]:
        return None
    p = PCA(n_components=k, random_state=seed).fit(x)
    return p.mean_.astype(np.float32), p.components_.astype(np.float32)


def project(x: np.ndarray, pca: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """(n, d) -> (n, k) float32: normalise rows, then subtract the mean and apply the components."""
    x = _normalise(x)
    if pca is None:
        return x
    mean, comp = pca
    return np.ascontiguousarray((x - mean) @ comp.T, dtype=np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_knn(query: np.ndarray, ref: np.ndarray, k: int, *, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force Euclidean k nearest neighbours. query (m, d), ref (n, d) -> (indices (m, k) int64,
    distances (m, k) float32), nearest first. Blocks of ``block`` query rows; torch's topk when torch is
    installed (4x faster than numpy's argpartition here), numpy otherwise."""
    k = min(k, len(ref))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a project dependency
        torch = None
    idx = np.empty((len(query), k), dtype=np.int64)
    dist = np.empty((len(query), k), dtype=np.float32)
    if torch is not None:
        r = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))
        rn = (r * r).sum(1)
        for s in range(0, len(query), block):
            q = torch.from_numpy(np.ascontiguousarray(query[s:s + block], dtype=np.float32))
            d2 = torch.addmm(rn[None, :], q, r.T, alpha=-2.0).add_((q * q).sum(1)[:, None]).clamp_(min=0)
            v, i = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            idx[s:s + block], dist[s:s + block] = i.numpy(), v.sqrt().numpy()
        return idx, dist
    r = np.asarray(ref, dtype=np.float32)
    rn = (r * r).sum(1)
    for s in range(0, len(query), block):
        q = np.asarray(query[s:s + block], dtype=np.float32)
        d2 = np.maximum(rn[None, :] - 2.0 * (q @ r.T) + (q * q).sum(1)[:, None], 0)
        part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < len(ref) else np.tile(np.arange(len(ref)), (len(q), 1))
        pd2 = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(pd2, axis=1, kind="stable")
        idx[s:s + block] = np.take_along_axis(part, order, axis=1)
        dist[s:s + block] = np.sqrt(np.take_along_axis(pd2, order, axis=1))
    return idx, dist


def drop_self(idx: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From a self-query with k+1 neighbours per row, remove row i's own index (or the farthest entry when
    a duplicate point pushed it out). (n, k+1) -> (n, k)."""
    n = len(idx)
    own = idx == np.arange(n)[:, None]
    own[~own.any(axis=1), -1] = True           # no self found: drop the farthest instead
    keep = ~own
    return idx[keep].reshape(n, k), dist[keep].reshape(n, k)


class KNNIndex:
    """Nearest neighbours among the fit rows: ``exact`` (brute force) or ``nndescent`` (pynndescent)."""

    def __init__(self, ref: np.ndarray, kind: str, k: int, seed: int):
        self.ref, self.kind, self.k = ref, kind, min(k, len(ref))
        self._nnd = None
        if kind == "nndescent":
            from pynndescent import NNDescent

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # a graph of at least 15 neighbours searches well (umap-learn's default), even for small k
                self._nnd = NNDescent(ref, n_neighbors=min(max(self.k, 15), len(ref) - 1), random_state=seed,
                                      low_memory=True, compressed=False)
                self._nnd.prepare()
        elif kind != "exact":
            raise ValueError(f"unknown neighbour search {kind!r}")

    def self_graph(self) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) neighbours of every fit row in UMAP's convention: the row itself first (distance 0),
        then its k − 1 nearest other rows."""
        if self._nnd is not None:
            idx, dist = self._nnd.neighbor_graph
            idx, dist = idx[:, :self.k].astype(np.int64), dist[:, :self.k].astype(np.float32)
        else:
            idx, dist = exact_knn(self.ref, self.ref, self.k)
        others_i, others_d = drop_self(idx, dist, self.k - 1)
        n = len(idx)
        return (np.hstack([np.arange(n)[:, None], others_i]),
                np.hstack([np.zeros((n, 1), np.float32), others_d]))

    def query(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(m, k) nearest fit rows of new rows q (m, d)."""
        if self._nnd is not None:
            idx, dist = self._nnd.query(q, k=self.k, epsilon=0.12)
            return idx.astype(np.int64), dist.astype(np.float32)
        return exact_knn(q, self.ref, self.k)


def choose_knn(kind: str, n_fit: int, n_rest: int) -> str:
    if kind != "auto":
        return kind
    return "exact" if float(n_fit) * (n_fit + n_rest) <= EXACT_MAX_PAIRS else "nndescent"


def fit_umap(z_fit: np.ndarray, index: KNNIndex, params: MapParams, seed: int):
    """UMAP (umap-learn) fitted on the fit rows' projections z_fit (n, k), given their neighbour graph
    through ``precomputed_knn``. Returns (reducer, coords (n, 2) float32)."""
    import umap

    idx, dist = index.self_graph()
    reducer = umap.UMAP(n_neighbors=index.k, min_dist=params.min_dist, n_epochs=params.n_epochs,
                        random_state=seed, transform_seed=seed, precomputed_knn=(idx, dist, None),
                        init="spectral" if len(z_fit) > index.k + 1 else "random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no search index": we place new rows ourselves (place())
        reducer.fit(z_fit)
    return reducer, np.asarray(reducer.embedding_, dtype=np.float32)


def init_positions(graph, embedding: np.ndarray) -> np.ndarray:
    """Vectorised ``umap.umap_.init_graph_transform``: each new row starts at the membership-weighted mean of
    its neighbours' positions, at a neighbour's position when a membership is exactly 1 (the first such, in
    column order), NaN without neighbours. graph: CSR (m, n_fit), sorted indices; embedding (n_fit, 2)."""
    graph = graph.tocsr()
    graph.sort_indices()
    m = graph.shape[0]
    emb = np.asarray(embedding, dtype=np.float32)
    nnz = np.diff(graph.indptr)
    row_sum = np.zeros(m, dtype=graph.dtype)
    for n in np.unique(nnz[nnz > 0]):  # per row like umap's graph_row.sum() (numpy's pairwise float32 sum)
        r = np.flatnonzero(nnz == n)
        row_sum[r] = graph.data[graph.indptr[r][:, None] + np.arange(n)].sum(axis=1)
    out = np.zeros((m, emb.shape[1]), dtype=np.float32)
    # the same float32 operations in the same order as umap's loop (the layout step is sensitive to the
    # last bits of the start positions): out += value / row_sum * position, one neighbour slot at a time
    for j in range(int(nnz.max()) if m else 0):
        r = np.flatnonzero(nnz > j)
        pos = graph.indptr[r] + j
        w = (graph.data[pos] / row_sum[r]).astype(np.float32)
        out[r] += w[:, None] * emb[graph.indices[pos]]
    out[nnz == 0] = np.nan
    ones = np.flatnonzero(graph.data == 1)
    if len(ones):
        rows = np.repeat(np.arange(m), nnz)[ones]
        first = np.unique(rows, return_index=True)[1]
        out[rows[first]] = emb[graph.indices[ones[first]]]
    return out


def place(reducer, idx: np.ndarray, dist: np.ndarray, *, n_epochs: int | None = None) -> np.ndarray:
    """Place new rows on a fitted map, given their neighbours among the fit rows: (m, k) indices and
    distances -> (m, 2) float32.

    The same steps as ``umap.UMAP.transform`` (umap-learn 0.5.12, pinned): fuzzy memberships from
    smooth_knn_dist, an initial position from the neighbours, then ``optimize_layout_euclidean`` with the fit
    rows held fixed, ``n_epochs`` (default: umap's rule, 100 for <= 10,000 rows else 30, or the fit's
    n_epochs // 3). Only the initialisation is vectorised (umap's is a per-row Python loop, ~0.5 ms a row);
    tests/test_embedmap.py checks this function against ``UMAP.transform``.
    """
    import scipy.sparse as sp
    from sklearn.utils import check_random_state
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import (INT32_MAX, INT32_MIN, compute_membership_strengths, make_epochs_per_sample,
                            smooth_knn_dist)

    emb = np.asarray(reducer.embedding_, dtype=np.float32)
    rng_state = check_random_state(reducer.transform_seed).randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    dists = np.ascontiguousarray(dist, dtype=np.float32)
    indices = np.array(idx, dtype=np.int64, copy=True)
    indices[dists >= reducer._disconnection_distance] = -1
    sigmas, rhos = smooth_knn_dist(dists, float(reducer._n_neighbors),
                                   local_connectivity=float(max(0.0, reducer.local_connectivity - 1.0)))
    rows, cols, vals, _ = compute_membership_strengths(indices, dists, sigmas, rhos, bipartite=True)
    graph = sp.coo_matrix((vals, (rows, cols)), shape=(len(indices), len(emb)))
    csr = graph.tocsr()
    csr.eliminate_zeros()
    init = init_positions(csr, emb)
    if n_epochs is None:
        n_epochs = (100 if graph.shape[0] <= 10000 else 30) if reducer.n_epochs is None else int(reducer.n_epochs // 3.0)
    graph.data[graph.data < (graph.data.max() / float(n_epochs))] = 0.0
    graph.eliminate_zeros()
    out = optimize_layout_euclidean(
        init, emb.copy(), graph.row, graph.col, n_epochs, graph.shape[1],
        make_epochs_per_sample(graph.data, n_epochs), reducer._a, reducer._b, rng_state,
        reducer.repulsion_strength, reducer._initial_alpha / 4.0, reducer.negative_sample_rate,
        reducer.random_state is None, verbose=False, tqdm_kwds={"disable": True})
    return np.asarray(out, dtype=np.float32)


def transform_chunk(reducer, index: KNNIndex, z: np.ndarray, *, n_epochs: int | None = None) -> np.ndarray:
    """Place new rows (m, k projections): their neighbours among the fit rows, then ``place``."""
    idx, dist = index.query(z)
    return place(reducer, idx, dist, n_epochs=n_epochs)


# ---- the stage ------------------------------------------------------------------------------------------
def compute_map(store, model: str, params: MapParams, *, seed: int = 0,
                echo: Callable[[str], None] = print, timings: dict | None = None) -> dict:
    """Fit and apply the map on an open store; returns {"uid", "x", "y", "fit", "skipped", "knn", "fit_rows"}.

    Reads vectors with audit.vectors.iter_vectors, one part at a time (three passes)."""
    from audit.vectors import iter_vectors

    params.check()
    t0 = time.perf_counter()
    timings = timings if timings is not None else {}
    col = params.column
    n = sum(len(u) for u, _ in iter_vectors(store, model, columns=()))
    if n < 3:
        raise ValueError(f"{model} has {n} embedded samples; a map needs at least 3")
    rng = np.random.default_rng(seed)
    n_fit = min(params.fit_sample, n)
    fit_pos = np.sort(rng.choice(n, size=n_fit, replace=False))
    is_fit = np.zeros(n, dtype=bool)
    is_fit[fit_pos] = True

    # pass 1: the fit rows' vectors
    fit_uids, fit_x, start = [], [], 0
    for u, cols in iter_vectors(store, model, columns=(col,)):
        sel = np.flatnonzero(is_fit[start:start + len(u)])
        if len(sel):
            fit_uids.extend(u[i] for i in sel)
            fit_x.append(cols[col][sel])
        start += len(u)
    x = np.concatenate(fit_x)
    finite = np.isfinite(x).all(axis=1)
    x, fit_uids = x[finite], [v for v, f in zip(fit_uids, finite) if f]
    skipped = int((~finite).sum())
    if len(x) < 3:
        raise ValueError(f"{model}: fewer than 3 finite vectors in the fit sample")
    timings["read_fit_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    pca = fit_pca(x, params.pca, seed) if params.pca else None
    z_fit = project(x, pca)
    del x, fit_x
    kind = choose_knn(params.knn, len(z_fit), n - n_fit)
    index = KNNIndex(z_fit, kind, min(params.n_neighbors, len(z_fit) - 1), seed)
    reducer, fit_xy = fit_umap(z_fit, index, params, seed)
    timings["fit_s"] = time.perf_counter() - t1
    echo(f"{model}: UMAP fitted on {len(z_fit):,} of {n:,} rows ({'PCA ' + str(z_fit.shape[1]) + ' dims, ' if pca else ''}"
         f"{kind} neighbours, {timings['fit_s']:.1f} s)")

    # pass 2: every other row, in chunks
    t2 = time.perf_counter()
    uids, xs, ys, fits = [fit_uids], [fit_xy[:, 0]], [fit_xy[:, 1]], [np.ones(len(fit_uids), dtype=bool)]
    start, done = 0, 0
    for u, cols in iter_vectors(store, model, columns=(col,)):
        rest = np.flatnonzero(~is_fit[start:start + len(u)])
        start += len(u)
        for s in range(0, len(rest), params.chunk):
            sel = rest[s:s + params.chunk]
            v = cols[col][sel]
            ok = np.isfinite(v).all(axis=1)
            skipped += int((~ok).sum())
            if not ok.any():
                continue
            xy = transform_chunk(reducer, index, project(v[ok], pca), n_epochs=params.transform_epochs)
            uids.append([u[i] for i in sel[ok]])
            xs.append(xy[:, 0])
            ys.append(xy[:, 1])
            fits.append(np.zeros(int(ok.sum()), dtype=bool))
            done += int(ok.sum())
    timings["transform_s"] = time.perf_counter() - t2
    timings["transform_rows"] = done
    if done:
        echo(f"{model}: placed {done:,} more rows in chunks of {params.chunk:,} ({timings['transform_s']:.1f} s)")
    return {"uid": [v for part in uids for v in part], "x": np.concatenate(xs), "y": np.concatenate(ys),
            "fit": np.concatenate(fits), "skipped": skipped, "knn": kind, "fit_rows": len(z_fit), "rows": n}


def build_map(store_path: str, model: str | None, params: MapParams | None = None, *, seed: int = 0,
              force: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Compute (or keep, with the same parameters) the map of one model and store its coordinates."""
    import pandas as pd

    from audit.scores.base import resolve_model
    from audit.store import Store, map_catalog, param_key, write_map

    params = params or MapParams()
    params.check()
    with Store.writer(store_path) as st:
        model = resolve_model(st, model)
        rw = bool(st.model_info(model)["random_weights"])
        full = {**asdict(params), "model": model, "seed": seed}
        done = st.find_done_run("map", model, param_key(full))
        if done and not force and model in set(map_catalog(st)["model"]):
            echo(f"map of {model} already computed with these parameters (run {done}); nothing to do")
            return {"model": model, "run_id": done, "reused": True}
        run_id = st.start_run("map", model, params=full, model=model, random_weights=rw)
    t0 = time.perf_counter()
    timings: dict = {}
    try:
        with Store.reader(store_path) as rd:
            got = compute_map(rd, model, params, seed=seed, echo=echo, timings=timings)
    except Exception as exc:
        with Store.writer(store_path) as st:
            st.end_run(run_id, status="failed", note=str(exc)[:500])
        raise
    frame = pd.DataFrame({"uid": pd.Series(got["uid"], dtype="string"), "x": got["x"], "y": got["y"],
                          "fit": got["fit"]})
    with Store.writer(store_path) as st:
        write_map(st, model, frame, run_id=run_id, column=params.column, fit_rows=got["fit_rows"],
                  skipped=got["skipped"], knn=got["knn"], params_json=json.dumps(full), random_weights=rw)
        st.end_run(run_id, rows_in=got["rows"], rows_out=len(frame), rows_rejected=got["skipped"],
                   note=f"fit on {got['fit_rows']:,} rows; {got['knn']} neighbours"
                        + (f"; {got['skipped']} rows with non-finite vectors not placed" if got["skipped"] else ""))
    echo(f"map of {model}: {len(frame):,} rows stored ({time.perf_counter() - t0:.1f} s)"
         + (" [RANDOM-WEIGHT MODEL: the layout carries no meaning]" if rw else ""))
    return {"model": model, "run_id": run_id, "rows": len(frame), "fit_rows": got["fit_rows"],
            "skipped": got["skipped"], "knn": got["knn"], "timings": timings, "reused": False}


# ---- helpers for the page (pure) -------------------------------------------------------------------------
def display_sample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most ``max_points`` of n rows (uniform random, seeded)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def in_box(x: np.ndarray, y: np.ndarray, xr: tuple[float, float], yr: tuple[float, float]) -> np.ndarray:
    """Rows inside the axis-aligned box [min(xr), max(xr)] × [min(yr), max(yr)]."""
    return (x >= min(xr)) & (x <= max(xr)) & (y >= min(yr)) & (y <= max(yr))


def in_lasso(x: np.ndarray, y: np.ndarray, xs, ys) -> np.ndarray:
    """Rows inside the closed polygon with vertices (xs, ys)."""
    from matplotlib.path import Path

    poly = Path(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    return poly.contains_points(np.column_stack([x, y]))


# ---- CLI and demo ----------------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    from audit.cli import _store_arg

    p = subparsers.add_parser("map", help="UMAP map of the embeddings (coordinates stored)",
                              description="Fit UMAP (umap-learn) on a sample (at most 50,000 rows) of one model's "
                                          "embeddings, place every other row on the fitted map in chunks (umap's "
                                          "transform steps), store x/y per row.")
    _store_arg(p)
    p.add_argument("--model", help="embedding model key (default: the only one)")
    p.add_argument("--column", choices=["img", "txt"], default="img", help="image or text vectors (default: img)")
    p.add_argument("--fit-sample", type=int, default=FIT_MAX, help="rows UMAP is fitted on (default/max: %(default)s)")
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--min-dist", type=float, default=0.1)
    p.add_argument("--n-epochs", type=int, default=None, help="UMAP epochs (default: umap-learn's)")
    p.add_argument("--pca", type=int, default=50, help="PCA components before UMAP, 0 for none (default: 50)")
    p.add_argument("--transform-epochs", type=int, default=None,
                   help="epochs when placing new rows (default: umap's rule, 30 for chunks over 10,000 rows)")
    p.add_argument("--chunk", type=int, default=20_000, help="rows placed per transform call (default: %(default)s)")
    p.add_argument("--knn", choices=["auto", "exact", "nndescent"], default="auto",
                   help="neighbour search: exact (brute force) or nndescent (approximate); auto picks by size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="recompute even if done with these parameters")
    p.set_defaults(func=_run_cli)


def _run_cli(a: argparse.Namespace) -> int:
    params = MapParams(column=a.column, fit_sample=a.fit_sample, n_neighbors=a.n_neighbors, min_dist=a.min_dist,
                       n_epochs=a.n_epochs, pca=a.pca, chunk=a.chunk, knn=a.knn,
                       transform_epochs=a.transform_epochs)
    build_map(a.store, a.model, params, seed=a.seed, force=a.force)
    return 0


DEMO_MODEL = "datacomp_l14"
DEMO_PARAMS = MapParams(fit_sample=4000, n_epochs=200, knn="exact", transform_epochs=20)


def demo_step(store: str, *, seed: int = 0, echo: Callable[[str], None] = print) -> dict | None:
    """The demo's map: datacomp_l14 image vectors, fitted on 4,000 rows (200 epochs), exact neighbours, the
    other rows placed with 20 epochs (the demo's time budget; the CLI defaults fit on up to 50,000 rows)."""
    from audit.store import Store

    with Store.reader(store) as rd:
        models = rd.models()["model"].tolist()
    if DEMO_MODEL not in models:
        echo(f"no {DEMO_MODEL} embeddings in this store; map skipped")
        return None
    return build_map(store, DEMO_MODEL, DEMO_PARAMS, seed=seed, echo=echo)
