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

Version 2 runs as three passes over the model's vector parts on either engine (``--engine local|ray``), so no process
holds the pool: (1) a keyed draw of (seed, uid) picks the fit sample, which the driver sorts by uid and fits k-means on;
(2) every row gets its cluster (the centroids sent to every worker), and each batch writes its rows (uid, cluster,
the stored float16 vector) into one file per *bucket* of clusters (cluster mod B, B = ⌈2 · rows / --max-rows⌉),
a shuffle written once; (3) one task per bucket reads that bucket's files, sorts its rows by uid and deduplicates
each of its clusters. The result depends on the uids and vectors alone, never on batches, buckets or the engine.
Group ids are ``offset(cluster) + the component's index within the cluster``, where offset(c) is the number of
rows in clusters before c: unique across clusters without a renumbering pass (version 1 numbered groups 1, 2, …
in the order the clusters were processed, and drew the fit sample with one generator over the pool's row order).
Each cluster's similarities are computed in blocks of rows (never an n × n matrix, at most block × cluster size);
a task holds one bucket, about --max-rows / 2 rows.
"""
from __future__ import annotations

import argparse

import numpy as np

from audit.scores.base import SCORES, Score, ScoreContext
from audit.store import slug
from audit.store.vectors import l2_normalise

DEFAULT_EPS = (0.01, 0.05)
FIT_SAMPLE = None          # default: max(20,000, 50 rows per cluster), at most the pool
MAX_ROWS = 500_000        # rows a bucket may hold (768-d float32: 1.5 GB); buckets aim at half of it
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
    version = 2   # 2: passes over the vector parts on either engine; keyed fit draw; group ids by cluster offset
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

    # Three passes over the model's vector parts on either engine (module docstring); the driver fits k-means.
    multi_pass = True
    vector_columns = ("img",)

    def stream(self, store, run_id: int, params: dict, model: str | None, engine, echo):
        from audit.engine import over_files, over_vectors
        from audit.scores.base import stage_missing_vectors
        from audit.store.streamed import merge

        p = params
        eps_list = list(p["eps"])
        names = column_names(model, eps_list)
        seed = int(p.get("seed") or 0)
        k, fraction = fit_plan(int(store.count("samples")), p)
        fit = over_vectors(engine, store, model, _semdedup_batch, {"op": "fit", "seed": seed, "fraction": fraction},
                           columns=("img",), table="scores", run_id=run_id)[1]
        fit = [i for i in fit if i]
        n_finite = sum(i["finite"] for i in fit)
        if not n_finite:
            raise ValueError(f"no usable image vectors for {model}")
        fu = np.concatenate([i["uid"] for i in fit])
        centroids = fit_centroids(np.concatenate([i["x"] for i in fit])[np.argsort(fu, kind="stable")], k, seed)
        del fit, fu
        buckets = n_buckets(n_finite, len(centroids), int(p.get("max_rows") or MAX_ROWS))
        echo(f"semdedup: {len(centroids)} k-means clusters fitted on a keyed sample of {fraction:.2%} of the rows; "
             f"{n_finite:,} rows in {buckets} bucket(s) of clusters")
        folder = store.parts_dir() / "inputs"
        try:
            staged, infos, _, rejected, files = over_vectors(
                engine, store, model, _semdedup_batch,
                {"op": "assign", "centroids": centroids, "buckets": buckets, "names": names, "folder": str(folder),
                 "run_id": run_id}, columns=("img",), table="scores", run_id=run_id)
            infos = [i for i in infos if i]
            sizes = sum((i["sizes"] for i in infos), np.zeros(len(centroids), np.int64))
            by_bucket: dict[int, list[str]] = {}
            for i in infos:
                for b, path in i["buckets"].items():
                    by_bucket.setdefault(b, []).append(path)
            dd = over_files(engine, [], _semdedup_dedup,
                            {"centroids": centroids, "offsets": cluster_offsets(sizes), "eps": eps_list,
                             "names": names}, columns=("cluster", "img"), root=store.parts_dir(), table="scores",
                            run_id=run_id, arrow=True, groups=[sorted(by_bucket[b]) for b in sorted(by_bucket)])
            if dd[3]:   # a bucket split by the engine's retry would deduplicate clusters in pieces: not a result
                raise RuntimeError(f"semdedup: {len(dd[3]):,} rows could not be deduplicated (e.g. {dd[3][0][0]}: "
                                   f"{dd[3][0][1]})")
        finally:
            for path in folder.glob(f"{run_id:06d}-semdedup-*"):
                path.unlink(missing_ok=True)
        dd_infos = [i for i in dd[1] if i]
        staged, _, _, rejected = merge([(staged, [], 0, rejected), (dd[0], [], 0, [])])
        outputs = self.output_names(model, p)
        stage_missing_vectors(store, files, outputs, staged, run_id=run_id)
        for e, eps in enumerate(eps_list):
            removed = sum(i["removed"][e] for i in dd_infos)
            groups = sum(i["groups"][e] for i in dd_infos)
            echo(f"semdedup ε={eps:g}: {removed:,} of {n_finite:,} rows removed as near-duplicates ({groups:,} "
                 f"duplicate groups, {len(centroids)} clusters)")
        desc = self._describe(model, eps_list, len(centroids))
        return staged, [i["stats"] for i in infos + dd_infos], rejected, desc

    def _describe(self, model: str, eps_list, k: int) -> dict[str, str]:
        names = column_names(model, eps_list)
        return {
            **{names["keep"][e]: f"SemDeDup keep flag at ε={eps:g} (1 kept, 0 near-duplicate removed; {k} k-means "
                                 f"clusters of {model})" for e, eps in enumerate(eps_list)},
            **{names["group"][e]: f"SemDeDup duplicate group at ε={eps:g} (0 = none)"
               for e, eps in enumerate(eps_list)},
            names["cluster"][0]: f"SemDeDup k-means cluster ({k} clusters of {model})",
        }

    def compute(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        """A store of the older layout: the same plan in memory (fit draw, clusters, buckets, group ids)."""
        from audit.scores.base import keyed_uniforms

        p = ctx.params
        eps_list = list(p["eps"])
        rows, xs = [], []
        for r, x in ctx.unit_images():
            ok = np.isfinite(x).all(axis=1)
            rows.append(r[ok])
            xs.append(x[ok])
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        if not len(rows):
            raise ValueError(f"no usable image vectors for {ctx.model}")
        x = np.concatenate(xs)
        del xs
        uids = np.asarray(ctx.uids, dtype=object)[rows]
        order = np.argsort(uids, kind="stable")
        rows, x, uids = rows[order], x[order], uids[order]
        k, fraction = fit_plan(len(ctx.uids), p)
        seed = int(p.get("seed", 0))
        pick = keyed_uniforms(uids, np.arange(len(uids)), np.zeros(len(uids), np.int64), seed) < fraction
        centroids = fit_centroids(x[pick], k, seed)
        cl = assign_clusters(x, centroids)
        keep, group = dedup_rows(cl, lambda idx: x[idx], centroids, eps_list,
                                 cluster_offsets(np.bincount(cl, minlength=len(centroids))))
        names = column_names(ctx.model, eps_list)
        out = {}
        for e in range(len(eps_list)):
            for col, v in ((names["keep"][e], keep[e]), (names["group"][e], group[e])):
                out[col] = np.full(len(ctx.uids), np.nan)
                out[col][rows] = v
        out[names["cluster"][0]] = np.full(len(ctx.uids), np.nan)
        out[names["cluster"][0]][rows] = cl
        self.run_description = self._describe(ctx.model, eps_list, len(centroids))
        return out


# ---- the plan and the passes' batch steps (module-level: sent to the engines' workers) ------------------------
def fit_plan(n: int, params: dict) -> tuple[int, float]:
    """(k, the fraction of rows the fit draw keeps): ``--clusters`` (default one per ~5,000 samples) and
    ``--fit-sample`` rows (default max(20,000, 50 per cluster)) of the ``n`` samples, drawn as a keyed fraction."""
    k = int(params.get("clusters") or default_clusters(n))
    fit_n = min(int(params.get("fit_sample") or max(20_000, 50 * k)), n)
    return k, (fit_n / n if n else 1.0)


def n_buckets(rows: int, k: int, max_rows: int) -> int:
    """Buckets of clusters (cluster mod B) for ``rows`` vectors: about ``max_rows`` / 2 rows each, at most one
    per cluster."""
    return max(1, min(k, -(-2 * rows // max(1, max_rows))))


def cluster_offsets(sizes: np.ndarray) -> np.ndarray:
    """offset(c): the rows in clusters 0 … c − 1 (a group id base that no other cluster's groups reach)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def assign_clusters(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The centroid of highest cosine similarity for each unit row (chunked: never an n × k matrix)."""
    from audit.scores.image_based import assign

    return assign(x, centroids, how="ip")


def dedup_rows(cluster: np.ndarray, unit_rows, centroids: np.ndarray, eps_list, offsets: np.ndarray):
    """Every cluster among m rows deduplicated (``dedup_cluster``). ``cluster``: (m,) the rows' clusters, the rows in
    a fixed order (by uid); ``unit_rows(idx)``: those rows' unit float32 vectors (one cluster's at a time, so only the
    stored float16 rows of the whole batch are held). -> (keep (len(eps), m) float 1/0, group (len(eps), m) float:
    0, or offset(cluster) + component)."""
    keep = np.ones((len(eps_list), len(cluster)))
    group = np.zeros((len(eps_list), len(cluster)))
    for c in np.unique(cluster):
        idx = np.flatnonzero(cluster == c)
        kp, comp = dedup_cluster(unit_rows(idx), centroids[c], eps_list)
        keep[:, idx] = kp
        group[:, idx] = np.where(comp > 0, comp + offsets[c], 0)
    return keep, group


def _values(uids, col: str, v: np.ndarray):
    import pyarrow as pa

    return pa.table({"uid": uids, "name": pa.array([col] * len(v), pa.string()), "value": pa.array(v, pa.float64())})


def _semdedup_batch(payload: dict, vectors: dict) -> tuple[dict, dict | None]:
    """One batch of vectors. ``fit``: the rows the keyed draw picks (uids, unit vectors) and the counts; ``assign``:
    each row's cluster (staged), NaN keep/group rows for non-finite vectors (staged), and the finite rows written to
    one file per bucket under the parts folder's inputs (uid, cluster, the stored float16 vector)."""
    import uuid
    from pathlib import Path

    import pyarrow as pa

    from audit.scores.base import _value_stats, keyed_uniforms
    from audit.scores.targets import finite_unit_rows
    from audit.store.vectors import half_binary, write_half_table

    uids = vectors["uid"]
    if not len(uids):
        return {}, None
    op = payload["op"]
    half = half_binary(vectors["img"]) if op == "assign" else None   # float16 → float32 → float16 is exact
    ok, f = finite_unit_rows(vectors["img"])
    if op == "fit":
        u = uids.to_numpy(zero_copy_only=False)[ok]
        pick = keyed_uniforms(u, np.arange(len(u)), np.zeros(len(u), np.int64), payload["seed"]) < payload["fraction"]
        return {}, {"finite": int(ok.sum()), "uid": u[pick], "x": f[pick]}
    names, k = payload["names"], len(payload["centroids"])
    cl = assign_clusters(f, payload["centroids"])
    cluster = np.full(len(ok), np.nan)
    cluster[ok] = cl
    out = {names["cluster"][0]: _values(uids, names["cluster"][0], cluster)}
    if not ok.all():
        bad = pa.array(~ok)
        for col in names["keep"] + names["group"]:
            out[col] = _values(uids.filter(bad), col, np.full(int((~ok).sum()), np.nan))
    rows = np.flatnonzero(ok)
    bucket = cl % payload["buckets"]
    folder = Path(payload["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for b in np.unique(bucket):
        sel = bucket == b
        dest = folder / f"{payload['run_id']:06d}-semdedup-b{int(b):05d}-{uuid.uuid4().hex[:12]}.parquet"
        write_half_table(pa.table({"uid": uids.take(pa.array(rows[sel])), "cluster": pa.array(cl[sel].astype(np.int32)),
                                   "img": half.take(pa.array(rows[sel]))}), dest)
        files[int(b)] = str(dest)
    return out, {"stats": {c: _value_stats(t.column("value").to_numpy()) for c, t in out.items()},
                 "sizes": np.bincount(cl, minlength=k), "buckets": files}


def _semdedup_dedup(payload: dict, table) -> tuple[dict, dict]:
    """One bucket (its files from every batch, as one Arrow table): rows sorted by uid, each cluster deduplicated;
    the keep and group columns staged per ε."""
    from audit.scores.base import _value_stats
    from audit.scores.targets import finite_unit_rows
    from audit.store.vectors import half_matrix, half_to_float32

    order = np.argsort(table.column("uid").to_numpy(zero_copy_only=False), kind="stable")
    half = half_matrix(table.column("img"))          # (m, d) float16, the bucket's stored rows

    def unit_rows(idx):
        return finite_unit_rows(half_to_float32(half[order[idx]]))[1]

    kept, grouped = dedup_rows(table.column("cluster").to_numpy().astype(np.int64)[order], unit_rows,
                               payload["centroids"], payload["eps"], payload["offsets"])
    keep, group = np.empty_like(kept), np.empty_like(grouped)
    keep[:, order], group[:, order] = kept, grouped   # back to the table's row order
    names, out = payload["names"], {}
    for e in range(len(payload["eps"])):
        out[names["keep"][e]] = _values(table.column("uid"), names["keep"][e], keep[e])
        out[names["group"][e]] = _values(table.column("uid"), names["group"][e], group[e])
    return out, {"stats": {c: _value_stats(t.column("value").to_numpy()) for c, t in out.items()},
                 "removed": [int((k == 0).sum()) for k in keep], "groups": [len(np.unique(g[g > 0])) for g in group]}
