"""DataComp's image-based filter (methods.md §1.4 f): keep images in the k-means clusters that a target
set falls into.

1. Caption pre-filter: English (py3langid here, fastText there), more than 1 token (whitespace split here,
   ``fasttext.tokenize`` there) and more than 5 characters.
2. k-means over the image embeddings of the caption-filtered pool (scikit-learn Lloyd, random init from the
   data as faiss does, ``--niter`` 20 iterations exactly, ``--seed``); ``--sample-ratio`` trains on a keyed random
   part of it (DataComp: 0.3 at large, 0.03 at xlarge).
3. Target clusters: each target row goes to ``argmax_c (t · c)`` (inner product with the *unnormalised*
   centroids, DataComp's semantics even though k-means is trained with L2); T = the set of those clusters.
4. Keep sample i iff it passed step 1 and ``argmax_c (f_i · c) ∈ T``.

``--assign l2`` uses nearest-centroid (L2) assignment in steps 3–4 instead; expect small differences.
DataComp trains 100,000 centroids at every scale (128 training points per centroid at small, 1,280 at medium)
on ImageNet-1k image embeddings as the target; here ``--clusters`` defaults to one per 1,000 training points
(at most 100,000) and the target comes from ``--target``/``--classes`` (audit.scores.targets).
Stored columns (model suffix): ``image_based`` (1/0), ``image_based_caption`` (step 1 passed),
``image_based_target`` (cluster in T) and ``image_based_cluster`` (the cluster id).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from audit.scores.base import SCORES, Score
from audit.scores.normsim import describe_target
from audit.scores.targets import DEMO_CLASSES, add_target_arguments, finite_unit_rows, load_target, target_params
from audit.store import slug

DEFAULT_NITER = 20
POINTS_PER_CLUSTER = 1000
MAX_CLUSTERS = 100_000


def caption_prefilter(captions, english) -> np.ndarray:
    """Step 1: English and > 1 token and > 5 characters. -> (n,) bool."""
    caps = [c if isinstance(c, str) else "" for c in captions]
    words = np.array([len(c.split()) > 1 for c in caps], dtype=bool)
    chars = np.array([len(c) > 5 for c in caps], dtype=bool)
    return words & chars & np.asarray(english, dtype=bool)


def kmeans(x: np.ndarray, k: int, *, niter: int = DEFAULT_NITER, seed: int = 0) -> np.ndarray:
    """Centroids (k, d) float32 of Lloyd's k-means with random init from the data, exactly ``niter`` rounds."""
    from sklearn.cluster import KMeans

    if len(x) < k:
        raise ValueError(f"k-means needs at least as many points as clusters ({len(x)} < {k}); lower --clusters")
    km = KMeans(n_clusters=k, init="random", n_init=1, max_iter=niter, tol=0.0, random_state=seed, algorithm="lloyd")
    km.fit(np.asarray(x, dtype=np.float32))
    return km.cluster_centers_.astype(np.float32)


def assign(x: np.ndarray, centroids: np.ndarray, *, how: str = "ip", chunk: int = 16384) -> np.ndarray:
    """Cluster of each row. how='ip': argmax_c x·c (DataComp); 'l2': argmin_c ||x − c||. -> (n,) int64."""
    c = np.asarray(centroids, dtype=np.float32)
    half_sq = 0.5 * np.einsum("ij,ij->i", c, c)
    out = np.empty(len(x), dtype=np.int64)
    for r0 in range(0, len(x), chunk):
        s = np.asarray(x[r0:r0 + chunk], dtype=np.float32) @ c.T
        if how == "l2":  # argmin ||x-c||² = argmax (x·c − ||c||²/2)
            s -= half_sq
        out[r0:r0 + len(s)] = s.argmax(axis=1)
    return out


def read_centroids(path: str, dim: int) -> np.ndarray:
    """(K, d) float32 from .npy, or a torch file holding one tensor (DataComp's centroid assets)."""
    p = Path(path)
    if p.suffix == ".npy":
        c = np.load(p, allow_pickle=False)
    elif p.suffix in (".pt", ".pth"):
        import torch

        obj = torch.load(p, map_location="cpu", weights_only=True)
        c = (obj if isinstance(obj, torch.Tensor) else next(v for v in obj.values() if isinstance(v, torch.Tensor))).numpy()
    else:
        raise ValueError(f"{path}: centroids must be .npy or .pt")
    c = np.asarray(c, dtype=np.float32)
    if c.ndim != 2 or c.shape[1] != dim:
        raise ValueError(f"{path}: expected centroids of shape (K, {dim}), got {c.shape}")
    return c


def target_clusters(target: np.ndarray, centroids: np.ndarray, *, how: str = "ip") -> np.ndarray:
    """Sorted unique clusters the target rows are assigned to."""
    return np.unique(assign(target, centroids, how=how))


@SCORES.register
class ImageBased(Score):
    name = "image-based"
    version = 2   # 2: streamed in passes; --sample-ratio draws a keyed sample (uniform of (seed, uid) < ratio)
    description = ("DataComp image-based filter: English caption (> 1 token, > 5 chars) and image in a k-means "
                   "cluster that the target set falls into")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_target_arguments(parser)
        parser.add_argument("--clusters", type=int, default=0,
                            help="k-means clusters (default 0 = one per 1,000 training points, at most 100,000)")
        parser.add_argument("--niter", type=int, default=DEFAULT_NITER, help="k-means iterations (default: %(default)s)")
        parser.add_argument("--sample-ratio", type=float, default=1.0,
                            help="fraction of the caption-filtered pool to train k-means on (default: %(default)s)")
        parser.add_argument("--assign", choices=["ip", "l2"], default="ip",
                            help="ip: argmax inner product with unnormalised centroids (DataComp); l2: nearest")
        parser.add_argument("--centroids", metavar="FILE",
                            help="use these centroids instead of training k-means: .npy (K, d), or DataComp's "
                                 "*_centroids_l14.pt (a tensor)")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        if not 0 < args.sample_ratio <= 1:
            raise ValueError(f"--sample-ratio must be in (0, 1], got {args.sample_ratio}")
        if args.clusters < 0 or args.niter < 1:
            raise ValueError("--clusters must be ≥ 0 and --niter ≥ 1")
        out = {**target_params(args), "clusters": args.clusters, "niter": args.niter,
               "sample_ratio": args.sample_ratio, "assign": args.assign}
        if args.centroids:
            from audit.scores.targets import fingerprint

            if not Path(args.centroids).exists():
                raise ValueError(f"centroids file not found: {args.centroids}")
            out.update(centroids=str(Path(args.centroids).resolve()), centroids_fingerprint=fingerprint(args.centroids))
        return out

    @classmethod
    def output_names(cls, model: str | None, params: dict) -> list[str]:
        m = f"_{slug(model)}" if model else ""
        return [f"image_based{m}", f"image_based_caption{m}", f"image_based_target{m}", f"image_based_cluster{m}"]

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        # The demo's text-proxy target (audit.scores.targets.DEMO_CLASSES); k-means on a 25% sample.
        target = {"classes": DEMO_CLASSES, "template": "a photo of a {}.", "text_model": None}
        return [(m, {**target, "clusters": 0, "niter": DEFAULT_NITER, "sample_ratio": 0.25, "assign": "ip"})
                for m in models if m == "datacomp_l14"]

    # Four passes on either engine: the caption rule over the samples; k-means on the driver over the vectors of a
    # keyed sample of the caption-filtered pool; each vector's cluster (the centroids sent to every worker); the
    # combined rule over the samples joined with the first and third passes' staged values.
    multi_pass = True
    vector_columns = ("img",)

    def stream(self, store, run_id: int, params: dict, model: str | None, engine, echo):
        from audit import lang
        from audit.engine import over_samples
        from audit.scores.base import _score_batch, vector_pass
        from audit.store.streamed import merge

        p = params
        keep_n, cap_n, tgt_n, cl_n = self.output_names(model, p)
        root = store.parts_dir()
        target = load_target(store, model, p)
        cap, cap_infos, _, cap_rej = over_samples(engine, store, _score_batch, (self.name, {**p, "pass": "caption"}),
                                                  columns=["caption", "simulated"], table="scores", run_id=run_id)
        cap_files = [str(root / f) for f, _ in cap.get(cap_n, [])]
        dim = int(store.model_info(model)["dim"])
        if p.get("centroids"):
            centroids, n_train = read_centroids(p["centroids"], dim), 0
        else:
            train = training_vectors(store, model, cap_files, float(p.get("sample_ratio", 1.0)), int(p.get("seed") or 0))
            n_train = len(train)
            k = int(p.get("clusters") or 0) or int(np.clip(n_train // POINTS_PER_CLUSTER, 2, MAX_CLUSTERS))
            centroids = kmeans(train, k, niter=int(p.get("niter", DEFAULT_NITER)), seed=int(p.get("seed") or 0))
            del train
        k = len(centroids)
        how = p.get("assign", "ip")
        tclusters = target_clusters(target.vectors, centroids, how=how)
        echo(f"{'given' if p.get('centroids') else 'k-means'}: {k} clusters on {n_train:,} points; target "
             f"({target.label}) falls in {len(tclusters)} cluster(s)")
        prepared = {"centroids": centroids, "targets": tclusters, "how": how, "names": (tgt_n, cl_n)}
        vec, vec_infos, vec_rej = vector_pass(self.name, store, model, prepared, [tgt_n, cl_n], run_id=run_id,
                                              engine=engine)
        joined = {"caption_ok": (cap_files, "value"), "in_target": ([str(root / f) for f, _ in vec.get(tgt_n, [])], "value")}
        keep = over_samples(engine, store, _score_batch, (self.name, {**p, "pass": "keep"}), columns=["simulated"],
                            table="scores", run_id=run_id, staged=joined)
        staged, infos, _, rejected = merge([(cap, cap_infos, 0, cap_rej), (vec, vec_infos, 0, vec_rej), keep])
        base = (f"{k} centroids from {Path(p['centroids']).name}, assign {how}" if p.get("centroids") else
                f"{k} k-means clusters ({n_train:,} training points, {p.get('niter')} iterations, assign {how})")
        desc = {
            keep_n: f"{self.description}. {base}; target: {describe_target(target)}",
            cap_n: f"image-based caption pre-filter: English ({lang.DETECTOR}), > 1 token, > 5 characters",
            tgt_n: f"image-based: 1 if the image's cluster is one of the {len(tclusters)} target clusters ({base})",
            cl_n: f"image-based: k-means cluster id of the image ({base})",
        }
        return staged, infos, rejected, desc

    def compute_rows(self, frame, params: dict) -> dict[str, np.ndarray]:
        from audit import lang

        keep_n, cap_n, _, _ = self.output_names(params.get("model"), params)
        if params["pass"] == "caption":   # the caption rule applies to every sample
            caps = frame["caption"].tolist()
            return {cap_n: caption_prefilter(caps, lang.is_english(caps)).astype(float)}
        t = frame["in_target"].to_numpy(dtype=float)          # NaN: no (finite) vector, so not decided
        c = frame["caption_ok"].to_numpy(dtype=float)
        return {keep_n: np.where(np.isnan(t), np.nan, ((t == 1) & (c == 1)).astype(float))}

    def compute_vectors(self, vectors: dict, prepared: dict) -> dict[str, np.ndarray]:
        tgt_n, cl_n = prepared["names"]
        ok, f = finite_unit_rows(vectors["img"])
        cluster = np.full(len(ok), np.nan)
        cluster[ok] = assign(f, prepared["centroids"], how=prepared["how"])
        in_target = np.full(len(ok), np.nan)
        in_target[ok] = np.isin(cluster[ok], prepared["targets"]).astype(float)
        return {tgt_n: in_target, cl_n: cluster}


def training_vectors(store, model: str, caption_files: list[str], ratio: float, seed: int) -> np.ndarray:
    """k-means's training points: the finite unit image vectors of the samples that pass the caption rule (their
    staged ``caption_files``), in vector-part order; with ``ratio`` < 1 a keyed sample of them (a uid is drawn iff
    its uniform of (seed, uid) is below ``ratio``, so the sample does not depend on batches or engines). Only the
    sample is held in memory; the set of passing uids is looked up one vector part at a time."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from audit.scores.base import keyed_uniforms
    from audit.store.streamed import BATCH_ROWS
    from audit.store.vectors import half_matrix, half_to_float32, uids_with_value_one
    from audit.store.vectors import parts as vector_parts

    out = []
    for path in vector_parts(store, model) if caption_files else []:
        ok_uids = uids_with_value_one(store, path, caption_files)
        if not len(ok_uids):
            continue
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=["uid", "img"]):
            batch = batch.filter(pc.is_in(batch.column("uid"), value_set=ok_uids))
            if not batch.num_rows:
                continue
            ok, f = finite_unit_rows(half_to_float32(half_matrix(batch.column("img"))))
            if ratio < 1.0:
                uids = batch.column("uid").to_numpy(zero_copy_only=False)[ok]
                f = f[keyed_uniforms(uids, np.arange(len(uids)), np.zeros(len(uids), np.int64), seed) < ratio]
            out.append(f)
    dim = int(store.model_info(model)["dim"])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)
