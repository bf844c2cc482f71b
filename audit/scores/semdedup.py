"""SemDeDup (Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale through semantic deduplication").

``python -m audit score semdedup --model M [--clusters K] --eps 0.01,0.05``

1. Spherical k-means on the L2-normalised image embeddings (faiss's default scheme, in numpy: random distinct rows
   as the start, 20 Lloyd steps, seeded) on a sample of ``--fit-sample`` rows; every row then goes to the centroid
   of highest cosine similarity.
2. Within each cluster, rows are ranked by cosine similarity to their centroid, lowest first. A row is removed when
   any row ranked before it has cosine similarity > 1 − ε with it; so of a set of near-duplicates the row
   *farthest from the centroid* is kept — the paper's choice ("we keep the example with the lowest cosine
   similarity to the cluster centroid"), NeMo Curator's ``which_to_keep="hard"``.
3. Duplicate groups: the connected components of the pairs with similarity > 1 − ε in a cluster. In a chain
   (a ≈ b, b ≈ c, a ≉ c) the rule of step 2 can keep more than one row of a component, exactly as the paper's
   algorithm does.

Stored per sample, per ε (``E`` written with ``_`` for the point, 0.05 -> ``0_05``):
``semdedup_keep_<model>_eps<E>`` (1 kept, 0 removed as a duplicate), ``semdedup_group_<model>_eps<E>`` (the duplicate
group's id, 0 for a row with no near-duplicate), and once ``semdedup_cluster_<model>`` (the k-means cluster).

Memory stays bounded: one pass assigns clusters (an int32 per row); then clusters are processed in batches of at
most ``--max-rows`` rows, each batch read in one pass over the vector parts, and each cluster's similarities are
computed in blocks of rows (never an n × n matrix of the pool, at most block × cluster size).
"""
from __future__ import annotations

import argparse

import numpy as np

from audit.scores.base import SCORES, Score, ScoreContext
from audit.store import slug
from audit.store.vectors import l2_normalise

DEFAULT_EPS = (0.01, 0.05)
FIT_SAMPLE = None          # default: max(20,000, 50 rows per cluster), at most the pool
MAX_ROWS = 500_000        # rows held at once (768-d float32: 1.5 GB)
BLOCK = 2048


def eps_tag(eps: float) -> str:
    return ("%g" % eps).replace(".", "_").replace("-", "m")


def column_names(model: str, eps_list) -> dict[str, list[str]]:
    m = slug(model)
    return {"keep": [f"semdedup_keep_{m}_eps{eps_tag(e)}" for e in eps_list],
            "group": [f"semdedup_group_{m}_eps{eps_tag(e)}" for e in eps_list],
            "cluster": [f"semdedup_cluster_{m}"]}


def parse_eps(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(sorted({float(t) for t in str(text).split(",") if t.strip()}))
    except ValueError:
        raise ValueError(f"--eps takes numbers separated by commas, e.g. 0.01,0.05; got {text!r}") from None
    if not vals or not all(0 < e < 1 for e in vals):
        raise ValueError(f"every ε must be between 0 and 1 (duplicates: cosine similarity > 1 − ε); got {text!r}")
    return vals


def default_clusters(n: int) -> int:
    """About 5,000 rows per cluster (the paper: 50,000 clusters for 440M rows, ~8,800 each), at least 1."""
    return max(1, min(50_000, n // 5000))


# ---- maths (pure numpy; no I/O) ------------------------------------------------------------------------
def fit_centroids(x: np.ndarray, k: int, seed: int, *, iters: int = 20) -> np.ndarray:
    """Spherical k-means centroids (k', d), unit norm, from L2-normalised rows x: faiss's default scheme (k distinct
    random rows as the start, then Lloyd steps with cosine assignment and re-normalised means). An empty cluster
    restarts at the row worst served by its centroid."""
    from scipy.sparse import csr_matrix

    k = max(1, min(k, len(x)))
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(iters):
        sim = x @ c.T
        a = np.argmax(sim, axis=1)
        onehot = csr_matrix((np.ones(len(x), dtype=np.float32), (a, np.arange(len(x)))), shape=(k, len(x)))
        sums = np.asarray(onehot @ x)                        # per-cluster sums (np.add.at is 20x slower)
        counts = np.bincount(a, minlength=k)
        for e in np.flatnonzero(counts == 0):
            worst = int(np.argmin(sim[np.arange(len(x)), a]))
            sums[e], a[worst] = x[worst], e
        new = l2_normalise(sums)
        if np.allclose(new, c, atol=1e-6):
            c = new
            break
        c = new
    return np.ascontiguousarray(c, dtype=np.float32)


_UPPER: dict[int, np.ndarray] = {}


def _upper(b: int, block: int) -> np.ndarray:
    """The (b, b) upper triangle with its diagonal, as a bool mask (cached per block size)."""
    if block not in _UPPER:
        _UPPER[block] = np.triu(np.ones((block, block), dtype=bool))
    return _UPPER[block][:b, :b]


def dedup_cluster(x: np.ndarray, centroid: np.ndarray, eps_list, *, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """One cluster's rows x (m, d), L2-normalised. Returns (keep (len(eps), m) bool, component (len(eps), m) int:
    0 for a row without near-duplicates, else 1 + the component's index within the cluster)."""
    m = len(x)
    eps_list = list(eps_list)
    keep = np.ones((len(eps_list), m), dtype=bool)
    comp = np.zeros((len(eps_list), m), dtype=np.int64)
    if m < 2:
        return keep, comp
    order = np.argsort(x @ centroid, kind="stable")        # lowest similarity to the centroid first
    xs = np.ascontiguousarray(x[order])
    loosest = 1.0 - max(eps_list)
    max_prev = np.full(m, -np.inf, dtype=np.float32)        # max similarity to any earlier-ranked row
    edges_i, edges_j, edges_s = [], [], []
    for s in range(0, m, block):
        q = xs[s:s + block]
        b = len(q)
        sims = q @ xs[:s + b].T                              # (b, s + b): only rows ranked before or in the block
        np.putmask(sims[:, s:], _upper(b, block), -np.inf)   # the block against itself: keep j < i only
        max_prev[s:s + b] = sims.max(axis=1)
        ii, jj = np.nonzero(sims > loosest)                  # each pair once (j < i)
        edges_i.append(ii + s), edges_j.append(jj), edges_s.append(sims[ii, jj])
    ei, ej, es = np.concatenate(edges_i), np.concatenate(edges_j), np.concatenate(edges_s)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    for k, eps in enumerate(eps_list):
        kept_sorted = ~(max_prev > 1.0 - eps)
        sel = es > 1.0 - eps
        _, lab = connected_components(coo_matrix((np.ones(int(sel.sum())), (ei[sel], ej[sel])), shape=(m, m)),
                                      directed=False)
        sizes = np.bincount(lab)
        in_group = sizes[lab] > 1
        ids = np.zeros(m, dtype=np.int64)
        _, dense = np.unique(lab[in_group], return_inverse=True)
        ids[in_group] = dense.ravel() + 1
        keep[k, order] = kept_sorted
        comp[k, order] = ids
    return keep, comp


# ---- the score -----------------------------------------------------------------------------------------
@SCORES.register
class SemDeDup(Score):
    name = "semdedup"
    version = 1
    description = "SemDeDup: near-duplicate image embeddings (k-means, then cosine > 1 − ε within a cluster)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--clusters", type=int, help="k-means clusters (default: one per ~5,000 rows)")
        parser.add_argument("--eps", default=",".join("%g" % e for e in DEFAULT_EPS),
                            help="ε values, comma-separated: duplicates have cosine similarity > 1 − ε "
                                 f"(default {','.join('%g' % e for e in DEFAULT_EPS)})")
        parser.add_argument("--fit-sample", type=int, default=FIT_SAMPLE,
                            help="rows k-means is fitted on (default: max(20,000, 50 per cluster); every row is "
                                 "assigned to its nearest centroid)")
        parser.add_argument("--max-rows", type=int, default=MAX_ROWS,
                            help=f"rows held in memory at once, a batch of clusters (default {MAX_ROWS:,})")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        return {"clusters": args.clusters, "eps": list(parse_eps(args.eps)), "fit_sample": args.fit_sample,
                "max_rows": args.max_rows}

    @classmethod
    def complete_params(cls, params: dict) -> dict:
        eps = params.get("eps", DEFAULT_EPS)
        return {"clusters": None, "fit_sample": FIT_SAMPLE, "max_rows": MAX_ROWS, **params,
                "eps": list(parse_eps(",".join(map(str, eps)) if not isinstance(eps, str) else eps))}

    @classmethod
    def output_names(cls, model, params) -> list[str]:
        names = column_names(model, params.get("eps", DEFAULT_EPS))
        return names["keep"] + names["group"] + names["cluster"]

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        # the simulated near-duplicates have cosine 0.989-0.9996 (audit/demo/simulate.py): ε = 0.002 finds some, 0.02 all
        return [(m, {"clusters": 100, "eps": [0.002, 0.02]}) for m in models if m == "datacomp_l14"]

    def compute(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        p = ctx.params
        eps_list = list(p["eps"])
        n = len(ctx.uids)
        budget = max(1, int(p.get("max_rows") or MAX_ROWS))
        cache: list = []

        def parts():
            """The vector parts; a pool of at most --max-rows rows is read once and held for the later passes."""
            if cache and cache[0] is not None:
                yield from cache[0]
                return
            got, total = [], 0
            for rows, x in ctx.unit_images():
                total += len(rows)
                got = got if got is not None and total <= budget else None
                if got is not None:
                    got.append((rows, x))
                yield rows, x
            cache[:] = [got]

        # pass 1: the fit sample
        k = int(p.get("clusters") or default_clusters(n))
        fit_n = min(int(p.get("fit_sample") or max(20_000, 50 * k)), n)
        chosen = np.zeros(n, dtype=bool)
        chosen[ctx.rng.choice(n, size=fit_n, replace=False)] = True
        fit_rows = [x[chosen[rows] & np.isfinite(x).all(axis=1)] for rows, x in parts()]
        fit = np.concatenate(fit_rows) if fit_rows else np.zeros((0, 1), np.float32)
        if not len(fit):
            raise ValueError(f"no usable image vectors for {ctx.model}")
        centroids = fit_centroids(fit, k, int(p.get("seed", 0)))
        del fit, fit_rows
        # pass 2: assign every row
        cluster = np.full(n, -1, dtype=np.int32)
        for rows, x in parts():
            ok = np.isfinite(x).all(axis=1)
            cluster[rows[ok]] = np.argmax(x[ok] @ centroids.T, axis=1)
        sizes = np.bincount(cluster[cluster >= 0], minlength=len(centroids))
        # pass 3..: batches of clusters, each read in one pass
        keep = np.full((len(eps_list), n), np.nan)
        group = np.full((len(eps_list), n), np.nan)
        offset = np.zeros(len(eps_list), dtype=np.int64)
        batches, cur, cur_n = [], [], 0
        for c in np.argsort(-sizes, kind="stable"):
            if sizes[c] == 0:
                continue
            if cur and cur_n + sizes[c] > budget:
                batches.append(cur)
                cur, cur_n = [], 0
            cur.append(int(c))
            cur_n += int(sizes[c])
        if cur:
            batches.append(cur)
        for b, batch in enumerate(batches):
            members = np.isin(cluster, batch)
            got_rows, got_x = [], []
            for rows, x in parts():
                sel = members[rows]
                got_rows.append(rows[sel])
                got_x.append(x[sel])
            rows_b, x_b = np.concatenate(got_rows), np.concatenate(got_x)
            cl_b = cluster[rows_b]
            for c in batch:
                idx = np.flatnonzero(cl_b == c)
                kp, comp = dedup_cluster(x_b[idx], centroids[c], eps_list)
                for e in range(len(eps_list)):
                    keep[e, rows_b[idx]] = kp[e]
                    g = comp[e].astype(np.float64)
                    g[comp[e] > 0] += offset[e]
                    group[e, rows_b[idx]] = g
                    offset[e] += int(comp[e].max(initial=0))
            if len(batches) > 1:
                ctx.echo(f"semdedup: cluster batch {b + 1}/{len(batches)} done ({len(rows_b):,} rows)")
        names = column_names(ctx.model, eps_list)
        out = {}
        for e, eps in enumerate(eps_list):
            removed = int(np.nansum(1 - keep[e]))
            ctx.echo(f"semdedup ε={eps:g}: {removed:,} of {int(np.isfinite(keep[e]).sum()):,} rows removed as "
                     f"near-duplicates ({int(offset[e]):,} duplicate groups, {len(centroids)} clusters)")
            out[names["keep"][e]] = keep[e]
            out[names["group"][e]] = group[e]
        out[names["cluster"][0]] = np.where(cluster >= 0, cluster, np.nan).astype(np.float64)
        self.run_description = {
            **{names["keep"][e]: f"SemDeDup keep flag at ε={eps:g} (1 kept, 0 near-duplicate removed; {len(centroids)}"
                                 f" k-means clusters of {ctx.model})" for e, eps in enumerate(eps_list)},
            **{names["group"][e]: f"SemDeDup duplicate group at ε={eps:g} (0 = none)" for e, eps in enumerate(eps_list)},
            names["cluster"][0]: f"SemDeDup k-means cluster ({len(centroids)} clusters of {ctx.model})",
        }
        return out
