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

import warnings
from dataclasses import dataclass

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
