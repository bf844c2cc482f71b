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

The random subsample of each iteration is a keyed draw (``keyed_draw``: the rows whose uniform of (seed, uid,
iteration) is below ``target_fraction``), so it does not depend on how the vectors are read: the stored score
runs as passes over the vector parts on either engine (``VasD.stream``; the driver holds a bool and a float per
row, never the vectors), and the same loop in memory (``vas_d``) gives the same numbers up to the float rounding
of Σ's sums.
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


def _sigma_of(f: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Σ of the rows ``rows`` of f, float32 products of 65,536-row chunks summed in float64."""
    acc = np.zeros((f.shape[1], f.shape[1]))
    for r0 in range(0, len(rows), 65536):
        x = np.asarray(f[rows[r0:r0 + 65536]], dtype=np.float32)
        acc += (x.T @ x).astype(np.float64)
    return acc / max(len(rows), 1)


def vas_d_loop(n: int, target_size: int, iters: int, values, sigma, on_iteration=None) -> np.ndarray:
    """The VAS-D iterations over candidates 0..n-1, whatever holds the vectors: ``values(alive, Σ)`` -> VAS of the
    rows ``alive`` (sorted positions) under Σ, in that order; ``sigma(alive, it)`` -> Σ of iteration ``it`` from the
    rows ``alive``. -> (n,) float64 survival scores (higher survived longer; the top ``target_size`` are the subset)."""
    out = np.zeros(n)
    if n == 0:
        return out
    target_size = min(max(int(target_size), 0), n)
    alive = np.arange(n)
    chunk = math.ceil((n - target_size) / max(iters, 1))
    sig = sigma(alive, 0)
    for it in range(iters):
        v = values(alive, sig)
        order = np.argsort(v, kind="stable")                 # ascending
        q = np.empty(len(alive))
        q[order] = np.arange(len(alive)) / len(alive)        # rank quantile in [0, 1)
        keep_n = target_size if it == iters - 1 else max(len(alive) - chunk, target_size)
        drop = order[: len(alive) - keep_n]
        out[alive[drop]] = it + q[drop]
        survivors = np.sort(order[len(alive) - keep_n:])
        if on_iteration:
            on_iteration(it, keep_n)
        if it == iters - 1 or keep_n == target_size:   # later iterations would drop nothing
            out[alive[survivors]] = iters + q[survivors]
            break
        alive = alive[survivors]
        sig = sigma(alive, it + 1)
    return out


def vas_d(f: np.ndarray, *, target_size: int, iters: int = DEFAULT_ITERS,
          target_fraction: float = DEFAULT_TARGET_FRACTION, rng: np.random.Generator | None = None,
          draw=None) -> np.ndarray:
    """VAS-D survival scores of the candidate rows f: (n, d) held in memory -> (n,) float64 (``vas_d_loop``).
    ``draw(alive, it)``: the rows of ``alive`` whose second moment is iteration ``it``'s Σ (``keyed_draw``, as the
    stored score draws them; default: a random ``target_fraction`` of them from ``rng``)."""
    if draw is None:
        rng = rng or np.random.default_rng(0)

        def draw(alive, it):
            return alive[subsample(len(alive), target_fraction, rng)]
    return vas_d_loop(len(f), target_size, iters, lambda alive, sig: vas(f[alive], sig),
                      lambda alive, it: _sigma_of(f, draw(alive, it)))


def keyed_draw(uids, fraction: float, seed: int):
    """``vas_d``'s draw of the stored score: of the rows ``alive`` (positions in ``uids``), those whose uniform of
    (seed, uid, iteration) is below ``fraction``, at least one (the smallest uniform). A function of the uids alone,
    so every engine, batch and layout draws the same rows."""
    from audit.scores.base import keyed_uniforms

    def draw(alive, it):
        u = keyed_uniforms(uids, alive, np.full(len(alive), it, np.int64), seed)
        pick = u < fraction
        return alive[pick] if pick.any() else alive[[int(np.argmin(u))]]
    return draw


def pre_step_threshold(store, name: str, fraction: float) -> float:
    """The CLIP-score pre-step's threshold: DataComp's top ``fraction`` of the pool (samples without the score count
    as NaN: never kept)."""
    from audit.decide.selection import top_fraction_threshold

    store.check_score(name)
    vals = store.score_values(name)
    n = int(store.count("samples"))
    return top_fraction_threshold(np.concatenate([vals, np.full(max(n - len(vals), 0), np.nan)]), fraction)


# ---- VAS-D as passes over the vector parts (either engine) ---------------------------------------------------
# The driver holds one bool and one float64 per vector row (the candidates still alive, the survival scores); each
# iteration is two passes: VAS of the alive rows under Σ (sent in the payload), then the partial sums of the next
# Σ over the keyed draw of the survivors. Which rows are alive reaches the workers as a state file under the parts
# folder (packed bits, indexed by each batch's first uid), read once per worker process.
_STATE: dict = {}


def _state(path: str) -> dict:
    if _STATE.get("path") != path:
        import pickle

        with open(path, "rb") as fh:
            data = pickle.load(fh)
        if "alive" in data:
            data["alive"] = np.unpackbits(data["alive"], count=data["n"]).astype(bool)
        _STATE.clear()
        _STATE.update(path=path, data=data)
    return _STATE["data"]


def _moment_part(uids, idx: np.ndarray, f: np.ndarray, it: int, fraction: float, seed: int) -> dict:
    """One batch's share of Σ of iteration ``it``: the float64 sum of x xᵀ over its drawn rows (``keyed_draw``'s
    uniform below ``fraction``), their count, and its row of smallest uniform (the draw's fallback)."""
    from audit.scores.base import keyed_uniforms

    if not len(idx):
        return {"s": None, "m": 0, "umin": np.inf, "xmin": None}
    u = keyed_uniforms(uids, idx, np.full(len(idx), it, np.int64), seed)
    x = f[u < fraction]
    j = int(np.argmin(u))
    return {"s": (x.T @ x).astype(np.float64), "m": len(x), "umin": float(u[j]), "xmin": f[j].astype(np.float64)}


def _merged_moment(parts: list[dict]) -> np.ndarray:
    m = sum(p["m"] for p in parts)
    if m:
        return sum(p["s"] for p in parts if p["m"]) / m
    x = min((p for p in parts if p["xmin"] is not None), key=lambda p: p["umin"])["xmin"]
    return np.outer(x, x)


def _vas_d_batch(payload: dict, vectors: dict) -> tuple[dict, dict | None]:
    """One batch of a VAS-D pass (nothing staged). ``start``: its key (first uid), size, candidate rows and share
    of Σ_0; ``v``: VAS of its alive rows under the payload's Σ; ``sigma``: its share of Σ of iteration ``it``."""
    from audit.store.streamed import uids_in_file

    uids = vectors["uid"]
    if not len(uids):
        return {}, None
    key = uids[0].as_py()
    ok, f = finite_unit_rows(vectors["img"])
    op = payload["op"]
    if op == "start":
        alive = ok.copy()
        if payload["candidates"]:
            alive &= uids_in_file(payload["candidates"], uids)
    else:
        st = _state(payload["state"])
        alive = st["alive"][st["index"][key]:][:len(ok)]
    fa = f[alive[ok]]
    if op == "v":
        return {}, {"key": key, "v": vas(fa, payload["sigma"])}
    part = _moment_part(uids.to_numpy(zero_copy_only=False), np.flatnonzero(alive), fa, payload["it"],
                        payload["fraction"], payload["seed"])
    if op == "sigma":
        return {}, {"key": key, **part}
    return {}, {"key": key, "n": len(ok), "finite": int(ok.sum()), "alive": alive, **part}


class _StateFiles:
    """The passes' state files, removed after their pass. Named by their content: an iteration's Σ pass and the
    next iteration's VAS pass read the same rows, so the second finds the file its workers already loaded."""

    def __init__(self, folder, run_id: int):
        self.folder, self.run_id, self.index, self.n = folder, run_id, {}, 0

    def write(self, **data) -> str:
        import hashlib
        import pickle

        blob = pickle.dumps({"index": self.index, "n": self.n, **data}, protocol=5)
        path = self.folder / f"{self.run_id:06d}-vasd-{hashlib.sha256(blob).hexdigest()[:20]}.pkl"
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
        return str(path)

    def alive(self, rows: np.ndarray) -> str:
        mask = np.zeros(self.n, bool)
        mask[rows] = True
        return self.write(alive=np.packbits(mask))


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
    version = 2   # 2: passes over the vector parts on either engine; Σ's rows a keyed draw of (seed, uid, iteration)
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

    # Passes over the model's vector parts on either engine (``_vas_d_batch``); the driver runs the iterations.
    multi_pass = True
    vector_columns = ("img",)

    def stream(self, store, run_id: int, params: dict, model: str | None, engine, echo):
        import contextlib
        from pathlib import Path

        from audit.engine import over_vectors
        from audit.scores.base import vector_pass
        from audit.store.streamed import score_uids

        p = params
        column = self.output_names(model, p)[0]
        iters, frac, seed = int(p["iters"]), float(p["target_fraction"]), int(p.get("seed") or 0)
        states = _StateFiles(store.parts_dir() / "inputs", run_id)

        def run_pass(payload: dict) -> list[dict]:
            _, infos, _, rejected, _ = over_vectors(engine, store, model, _vas_d_batch, payload, columns=("img",),
                                                    table="scores", run_id=run_id)
            if payload.get("state"):
                Path(payload["state"]).unlink(missing_ok=True)
            if rejected:   # VAS-D ranks the whole set: a batch it could not read makes the result wrong, not partial
                raise RuntimeError(f"vas-d: {len(rejected):,} vectors could not be read (e.g. {rejected[0][0]}: "
                                   f"{rejected[0][1]}); VAS-D needs every one")
            got = {i["key"]: i for i in infos if i is not None}
            return [got[k] for k in sorted(got)]   # the same order on every engine

        with contextlib.ExitStack() as stack:
            stack.callback(_STATE.clear)
            cand = None
            if float(p.get("fraction", 1.0)) < 1.0:
                tau = pre_step_threshold(store, p["clip_score"], float(p["fraction"]))
                cand = stack.enter_context(score_uids(store, p["clip_score"], tau, run_id))
            start = run_pass({"op": "start", "candidates": cand, "it": 0, "fraction": frac, "seed": seed})
            for b in start:
                states.index[b["key"]] = states.n
                states.n += b["n"]
            cand_pos = np.flatnonzero(np.concatenate([b["alive"] for b in start])) if start else np.zeros(0, int)
            n_total = sum(b["finite"] for b in start)
            target_size = int(float(p["fraction_vas"]) * n_total)
            first = _merged_moment(start) if len(cand_pos) else None
            del start

            def values(alive, sig):
                got = run_pass({"op": "v", "state": states.alive(cand_pos[alive]), "sigma": sig})
                return np.concatenate([b["v"] for b in got])

            def sigma(alive, it):
                if it == 0:
                    return first
                return _merged_moment(run_pass({"op": "sigma", "state": states.alive(cand_pos[alive]), "it": it,
                                                "fraction": frac, "seed": seed}))

            every = max(1, iters // 10)

            def progress(it, left):
                if (it + 1) % every == 0 or it == iters - 1:
                    echo(f"vas-d: iteration {it + 1}/{iters}, {left:,} of {len(cand_pos):,} candidates left")

            out = np.full(states.n, np.nan)
            out[cand_pos] = vas_d_loop(len(cand_pos), target_size, iters, values, sigma, progress)
            state = states.write(values=out)
            stack.callback(Path(state).unlink, missing_ok=True)
            del out
            staged, infos, rejected = vector_pass(self.name, store, model, {"column": column, "state": state},
                                                  [column], run_id=run_id, engine=engine)
        return staged, infos, rejected, {column: self._describe(p, len(cand_pos), target_size)}

    def compute_vectors(self, vectors: dict, prepared: dict) -> dict[str, np.ndarray]:
        """The final pass: each batch's survival scores, from the state file the driver wrote."""
        st, n = _state(prepared["state"]), len(vectors["uid"])
        off = st["index"].get(vectors["uid"][0].as_py()) if n else None
        return {prepared["column"]: np.full(n, np.nan) if off is None else st["values"][off:off + n]}

    def _describe(self, p: dict, n_cand: int, target_size: int) -> str:
        return (f"{self.description}. {p['iters']} iterations, {n_cand:,} candidates → {min(target_size, n_cand):,} "
                f"kept (fraction_vas {p['fraction_vas']}), Σ from {p['target_fraction']:g} of the current set each "
                "iteration (a keyed draw: uniform of (seed, uid, iteration))")

    def compute(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        """A store of the older layout: the same iterations and draws in memory (float32 unit vectors)."""
        p = ctx.params
        rows_all, vecs = [], []
        for rows, cols in ctx.iter_vectors(("img",)):
            ok, f = finite_unit_rows(cols["img"])
            rows_all.append(rows[ok])
            vecs.append(f)
        rows = np.concatenate(rows_all) if rows_all else np.zeros(0, np.int64)
        f = np.concatenate(vecs) if vecs else np.zeros((0, 1), np.float32)
        cand = np.arange(len(rows))
        if float(p.get("fraction", 1.0)) < 1.0:
            tau = pre_step_threshold(ctx.store, p["clip_score"], float(p["fraction"]))
            with np.errstate(invalid="ignore"):
                cand = np.flatnonzero(ctx.score(p["clip_score"])[rows] >= tau)
        target_size = int(float(p["fraction_vas"]) * len(rows))
        uids = np.asarray(ctx.uids, dtype=object)[rows[cand]]
        surv = vas_d(f[cand], target_size=target_size, iters=int(p["iters"]),
                     draw=keyed_draw(uids, float(p["target_fraction"]), int(p.get("seed") or 0)))
        out = np.full(len(ctx.uids), np.nan)
        out[rows[cand]] = surv
        self.run_description = self._describe(p, len(cand), target_size)
        return {self.output_names(ctx.model, p)[0]: out}
