"""VAS, the Variance Alignment Score, and its iterative variant VAS-D (Wang et al. 2024; methods.md §3).

    Σ_target = (1/M') Σ_j t_j t_jᵀ       over a random ``target_fraction`` (default 0.1) of the target rows
    VAS(i)   = f_iᵀ Σ_target f_i          (vision-only form; ≥ 0 since Σ is PSD)

VAS-D (``load_uids_with_vas_d_filter``): S = all candidates (optionally the top ``fraction`` by a CLIP
score first), target size n* = int(fraction_vas · N); for each of ``iters`` (default 100) iterations,
Σ = second moment of a random ``target_fraction`` of S, v = VAS of S under Σ, keep the top |S| − chunk
(the last iteration keeps exactly n*). VAS-D is a selection, so its stored score is the *survival order*:
a sample dropped at iteration k scores k + q, where q ∈ [0, 1) is its rank quantile by v among the set
of that iteration, and survivors score iters + q. Keeping the top n* by this score is the VAS-D subset
(``vas_d_<model>:top=fraction_vas``, up to DataComp's +1/ties rule). Samples outside the CLIP pre-step are
not candidates (NaN).
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from audit.scores.base import SCORES, Score, ScoreContext
from audit.scores.normsim import describe_target, score_name
from audit.scores.targets import DEMO_CLASSES, add_target_arguments, finite_unit_rows, load_target, target_params

DEFAULT_TARGET_FRACTION = 0.1
DEFAULT_ITERS = 100


def second_moment(t: np.ndarray) -> np.ndarray:
    """Σ = TᵀT / M (uncentred). t: (M, d) -> (d, d) float64."""
    t = np.asarray(t, dtype=np.float64)
    return t.T @ t / max(len(t), 1)


def subsample(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a random ``fraction`` of range(n) (at least one row; all rows at fraction 1)."""
    if fraction >= 1.0:
        return np.arange(n)
    m = max(1, int(n * fraction))
    return np.sort(rng.choice(n, size=m, replace=False))


def vas(f: np.ndarray, sigma: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """f_iᵀ Σ f_i per row. f: (n, d), sigma: (d, d) -> (n,) float64 (float32 matmul, float64 sum)."""
    s32 = np.asarray(sigma, dtype=np.float32)
    out = np.empty(len(f))
    for r0 in range(0, len(f), chunk):
        x = np.asarray(f[r0:r0 + chunk], dtype=np.float32)
        out[r0:r0 + len(x)] = np.einsum("ij,ij->i", x @ s32, x, dtype=np.float64)
    return out


def vas_low_rank(f: np.ndarray, t: np.ndarray) -> np.ndarray:
    """f_iᵀ (TᵀT/M) f_i = ||T f_i||² / M per row: O(n M d), cheaper than vas() when M < d."""
    s = np.asarray(f, dtype=np.float32) @ np.asarray(t, dtype=np.float32).T
    return np.einsum("ij,ij->i", s, s, dtype=np.float64) / max(len(t), 1)


def _sigma_of(f: np.ndarray, idx: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    sub = idx[subsample(len(idx), fraction, rng)]
    acc = np.zeros((f.shape[1], f.shape[1]))
    for r0 in range(0, len(sub), 65536):  # float64 accumulation in chunks
        x = np.asarray(f[sub[r0:r0 + 65536]], dtype=np.float32)
        acc += (x.T @ x).astype(np.float64)
    return acc / max(len(sub), 1)


def vas_d(f: np.ndarray, *, target_size: int, iters: int = DEFAULT_ITERS,
          target_fraction: float = DEFAULT_TARGET_FRACTION, rng: np.random.Generator) -> np.ndarray:
    """VAS-D survival scores of the candidate rows f: (n, d) -> (n,) float64 (higher survived longer).

    The top ``target_size`` rows by the returned score are the VAS-D selection.
    """
    n = len(f)
    out = np.zeros(n)
    if n == 0:
        return out
    target_size = min(max(int(target_size), 0), n)
    alive = np.arange(n)
    chunk = math.ceil((n - target_size) / max(iters, 1))
    sigma = _sigma_of(f, alive, target_fraction, rng)
    for it in range(iters):
        v = vas(f[alive], sigma)
        order = np.argsort(v, kind="stable")                 # ascending
        q = np.empty(len(alive))
        q[order] = np.arange(len(alive)) / len(alive)        # rank quantile in [0, 1)
        keep_n = target_size if it == iters - 1 else max(len(alive) - chunk, target_size)
        drop = order[: len(alive) - keep_n]
        out[alive[drop]] = it + q[drop]
        survivors = np.sort(order[len(alive) - keep_n:])
        if it == iters - 1 or keep_n == target_size:   # later iterations would drop nothing
            out[alive[survivors]] = iters + q[survivors]
            break
        alive = alive[survivors]
        sigma = _sigma_of(f, alive, target_fraction, rng)
    return out


@SCORES.register
class Vas(Score):
    name = "vas"
    version = 1
    description = "VAS: f_iᵀ Σ_target f_i, alignment with the target's second moment (Wang et al. 2024)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_target_arguments(parser)
        parser.add_argument("--target-fraction", type=float, default=DEFAULT_TARGET_FRACTION,
                            help="random fraction of the target rows used for Σ (paper: 0.1; default: %(default)s)")
        parser.add_argument("--tag", help="suffix of the stored name, to keep runs against several targets apart")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        if not 0 < args.target_fraction <= 1:
            raise ValueError(f"--target-fraction must be in (0, 1], got {args.target_fraction}")
        return {**target_params(args), "target_fraction": args.target_fraction, "tag": args.tag}

    @classmethod
    def output_names(cls, model: str | None, params: dict) -> list[str]:
        return [score_name("vas", model, params.get("tag"))]

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        # Same text-proxy target as NormSim's demo; its 11 prompts are all used (fraction 1.0: 10% of 11 is 1).
        target = {"classes": DEMO_CLASSES, "template": "a photo of a {}.", "text_model": None}
        return [(m, {**target, "target_fraction": 1.0, "tag": None}) for m in models if m == "datacomp_l14"]

    # vector-local: Σ of the target subsample (drawn with the run's seed, as before) is computed once on the
    # driver and sent to every worker (d × d; or the subsample itself when it has fewer rows than dimensions)
    vector_columns = ("img",)

    def prepare_vectors(self, store, model: str, params: dict, echo) -> tuple[dict, dict[str, str]]:
        target = load_target(store, model, params)
        frac = float(params.get("target_fraction", DEFAULT_TARGET_FRACTION))
        idx = subsample(len(target.vectors), frac, np.random.default_rng(params.get("seed", 0)))
        sub = target.vectors[idx]
        low_rank = len(sub) < sub.shape[1]
        column = self.output_names(model, params)[0]
        return ({"column": column, "sub": sub if low_rank else None, "sigma": None if low_rank else second_moment(sub)},
                {column: f"VAS against the second moment of {len(idx):,} of the target rows "
                         f"({describe_target(target)})"})

    def compute_vectors(self, vectors: dict[str, np.ndarray], prepared: dict) -> dict[str, np.ndarray]:
        ok, f = finite_unit_rows(vectors["img"])
        out = np.full(len(ok), np.nan)
        # Σ has rank ≤ M': with fewer target rows than dimensions, ||T' f||²/M' is the same number, cheaper
        out[ok] = vas_low_rank(f, prepared["sub"]) if prepared["sigma"] is None else vas(f, prepared["sigma"])
        return {prepared["column"]: out}


@SCORES.register
class VasD(Score):
    name = "vas-d"
    version = 1
    description = ("VAS-D: iterative VAS against the selected set's own second moment; the value is the "
                   "survival order (iteration + rank quantile), top fraction_vas = the VAS-D subset")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--iters", type=int, default=DEFAULT_ITERS, help="iterations (default: %(default)s)")
        parser.add_argument("--fraction-vas", type=float, default=0.3,
                            help="final subset size as a fraction of the pool (default: %(default)s)")
        parser.add_argument("--target-fraction", type=float, default=DEFAULT_TARGET_FRACTION,
                            help="random fraction of the current set used for Σ (default: %(default)s)")
        parser.add_argument("--fraction", type=float, default=1.0,
                            help="CLIP-score pre-step: keep this top fraction first (1.0 = skip; default)")
        parser.add_argument("--clip-score", help="stored score for the pre-step (e.g. clip_l14_similarity_score)")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        if args.iters < 1:
            raise ValueError("--iters must be at least 1")
        for name in ("fraction_vas", "target_fraction", "fraction"):
            v = getattr(args, name)
            if not 0 < v <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
        if args.fraction < 1 and not args.clip_score:
            raise ValueError("--fraction below 1 needs --clip-score NAME (the score of the pre-step)")
        return {"iters": args.iters, "fraction_vas": args.fraction_vas, "target_fraction": args.target_fraction,
                "fraction": args.fraction, "clip_score": args.clip_score}

    @classmethod
    def output_names(cls, model: str | None, params: dict) -> list[str]:
        return [score_name("vas_d", model, None)]

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        # CPU budget: 5 iterations on the 512-d B/32 vectors (default 100; each costs |S|·d² multiply-adds).
        return [(m, {"iters": 5, "fraction_vas": 0.3, "target_fraction": 0.1, "fraction": 1.0, "clip_score": None})
                for m in models if m == "datacomp_b32"]

    def compute(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        p = ctx.params
        rows_all, vecs = [], []
        for rows, cols in ctx.iter_vectors(("img",)):
            ok, f = finite_unit_rows(cols["img"])
            rows_all.append(rows[ok])
            vecs.append(f.astype(np.float16))
        rows = np.concatenate(rows_all) if rows_all else np.zeros(0, np.int64)
        f = np.concatenate(vecs) if vecs else np.zeros((0, 1), np.float16)
        n_total = len(rows)
        cand = np.arange(n_total)
        if float(p.get("fraction", 1.0)) < 1.0:
            from audit.decide.selection import top_fraction_threshold

            name = p["clip_score"]
            sc = ctx.score(name)[rows]
            tau = top_fraction_threshold(sc, float(p["fraction"]))
            with np.errstate(invalid="ignore"):
                cand = np.flatnonzero(sc >= tau)
        target_size = int(float(p["fraction_vas"]) * n_total)
        surv = vas_d(f[cand], target_size=target_size, iters=int(p["iters"]),
                     target_fraction=float(p["target_fraction"]), rng=ctx.rng)
        out = np.full(len(ctx.uids), np.nan)
        out[rows[cand]] = surv
        self.run_description = (f"{self.description}. {p['iters']} iterations, {len(cand):,} candidates → "
                                f"{min(target_size, len(cand)):,} kept (fraction_vas {p['fraction_vas']}), Σ from "
                                f"{p['target_fraction']:g} of the current set each iteration")
        return {self.output_names(ctx.model, p)[0]: out}
