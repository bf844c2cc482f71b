"""negCLIPLoss / s-CLIPLoss (Wang et al., NeurIPS 2024; methods.md §2.2).

    R_i^(k)      = (τ/2) · [ logsumexp_j (f_i·g_j / τ) + logsumexp_j (f_j·g_i / τ) ]   (j over i's batch, j = i included)
    negclip_i    = f_i·g_i − (1/K) Σ_k R_i^(k)          (= −τ · CLIPLoss_i on one batch; higher is better)

Defaults are the paper's run scripts: τ = 0.01, B = 32768 (capped at the pool size), K = 10 random batchings.
Differences from the reference code (``baselines/vas2.py``), all documented in docs/scores.md:

* logsumexp instead of ``exp`` then ``log`` (the reference overflows float32 once f·g > ~0.887 at τ = 0.01);
* the rows of a block are split into ``ceil(n/B)`` batches of *equal* size (±1), not full batches plus a
  small tail batch whose normaliser is biased low;
* batches are drawn within blocks of whole vector parts of about ``block_rows`` rows (the whole pool when it
  fits), where the reference draws them within one parquet shard; each block's generator is seeded by (seed,
  crc32 of the block's first uid), so a block gets the same batches on either engine, in any worker, in any order;
* vectors are re-normalised in float32 (stored vectors are float16).
The B×B similarity matrix is never held whole: rows are processed in tiles with an online column
logsumexp, so memory is tile × B. On a GPU (when torch sees one) the same code runs there.
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from audit.scores.base import SCORES, Score
from audit.store import slug

DEFAULT_TAU = 0.01
DEFAULT_BATCH = 32768
DEFAULT_K = 10
DEFAULT_BLOCK_ROWS = 262_144


def _device(name: str | None = None):
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_lse_terms(f, g, tau: float, *, tile: int | None = None):
    """The two logsumexp terms of one batch. f, g: (b, d) torch tensors (unit rows), same dtype/device.

    Returns (row, col), each (b,): row_i = logsumexp_j(f_i·g_j/τ), col_i = logsumexp_j(f_j·g_i/τ).

    One exp per matrix element: E_ij = exp(S_ij − r_i) with r_i the row maximum gives the row term
    exactly; the column sums are Σ_i E_ij·exp(r_i − R) with one running scalar maximum R, rescaled when R
    grows (online logsumexp). That column sum is exact to float rounding whenever each column's largest
    term is not far below R; a column whose diagonal logit S_jj is more than 60 below R (possible only for
    badly mismatched pairs) is recomputed directly. Rows are processed ``tile`` at a time (default: a tile
    holds ≤ 2^26 elements on CPU, 2^28 on GPU), so memory is tile × b, never b × b.
    """
    import torch

    b = f.shape[0]
    if tile is None:
        budget = 2**28 if f.is_cuda else 2**26
        tile = max(1, min(b, budget // max(b, 1)))
    fs = f / tau
    row = torch.empty(b, dtype=f.dtype, device=f.device)
    col_acc = torch.zeros(b, dtype=f.dtype, device=f.device)
    big_r = -math.inf
    for r0 in range(0, b, tile):
        r1 = min(b, r0 + tile)
        e = fs[r0:r1] @ g.T                          # (t, b) logits S_ij = f_i·g_j / τ
        r = e.amax(dim=1)
        e.sub_(r[:, None]).exp_()                    # E_ij = exp(S_ij − r_i) ∈ (0, 1]
        row[r0:r1] = r + torch.log(e.sum(dim=1))
        new_r = max(big_r, float(r.max()))
        if new_r > big_r and big_r > -math.inf:
            col_acc.mul_(math.exp(big_r - new_r))
        big_r = new_r
        col_acc.add_(e.T @ torch.exp(r - big_r))     # Σ_i E_ij exp(r_i − R)
    col = big_r + torch.log(col_acc)
    diag = (fs * g).sum(dim=1)
    risky = torch.nonzero((diag < big_r - 60.0) | ~torch.isfinite(col)).flatten()
    if len(risky):                                   # exact per-column logsumexp for those columns
        col[risky] = torch.logsumexp(fs @ g[risky].T, dim=0)
    return row, col


def negclip_batch(f, g, tau: float, *, tile: int | None = None):
    """R_i of one batch: (τ/2)(row_i + col_i). f, g: (b, d) torch tensors -> (b,)."""
    row, col = batch_lse_terms(f, g, tau, tile=tile)
    return 0.5 * tau * (row + col)


def block_rng(seed: int, first_uid: str) -> np.random.Generator:
    """The generator of one block's batches: (seed, crc32 of the block's first uid)."""
    import zlib

    return np.random.default_rng([int(seed), zlib.crc32(str(first_uid).encode())])


def equal_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random partition of range(n) into ceil(n/B) batches of equal size (±1), each ≤ B."""
    if n == 0:
        return []
    nb = math.ceil(n / max(1, batch_size))
    return np.array_split(rng.permutation(n), nb)


def negclip_scores(img: np.ndarray, txt: np.ndarray, *, tau: float = DEFAULT_TAU, batch_size: int = DEFAULT_BATCH,
                   k: int = DEFAULT_K, rng: np.random.Generator, device: str | None = None,
                   dtype: str = "float32", tile: int | None = None, normalise: bool = True,
                   owned: bool = False) -> np.ndarray:
    """negCLIPLoss of every row of one block. img, txt: (n, d) -> (n,) float64.

    B is capped at n (one batch when n ≤ B); K random batchings are averaged. ``owned=True`` lets the
    function normalise float32 inputs in place (saves a copy of the block).
    """
    import torch

    n = img.shape[0]
    if n == 0:
        return np.zeros(0)
    if tau <= 0:
        raise ValueError(f"--tau must be > 0, got {tau}")
    if batch_size < 1 or k < 1:
        raise ValueError("--batch-size and --k must be ≥ 1")
    dev = _device(device)
    tdtype = getattr(torch, dtype)

    def tensor(x: np.ndarray):
        t = torch.as_tensor(np.ascontiguousarray(x), device=dev)
        shares = t.device.type == "cpu" and t.dtype == tdtype     # .to() would not copy: the caller's memory
        t = t.to(tdtype)
        return t.clone() if normalise and shares and not owned else t

    f, g = tensor(img), tensor(txt)
    if normalise:
        f.div_(f.norm(dim=1, keepdim=True))
        g.div_(g.norm(dim=1, keepdim=True))
    r_sum = torch.zeros(n, dtype=tdtype, device=dev)
    b = min(batch_size, n)
    fp, gp, r_perm = torch.empty_like(f), torch.empty_like(g), torch.empty(n, dtype=tdtype, device=dev)
    for _ in range(k):
        batches = equal_batches(n, b, rng)
        perm = torch.as_tensor(np.concatenate(batches), device=dev)
        torch.index_select(f, 0, perm, out=fp)      # batches become contiguous slices
        torch.index_select(g, 0, perm, out=gp)
        s0 = 0
        for idx in batches:
            s1 = s0 + len(idx)
            r_perm[s0:s1] = negclip_batch(fp[s0:s1], gp[s0:s1], tau, tile=tile)
            s0 = s1
        r_sum.index_add_(0, perm, r_perm)
    del fp, gp
    out = (f * g).sum(dim=1) - r_sum / k
    return out.double().cpu().numpy()


@SCORES.register
class NegClip(Score):
    name = "negclip"
    version = 2      # 2: blocks of whole vector parts, each with its own seeded generator (both engines)
    description = ("negCLIPLoss / s-CLIPLoss: CLIP score minus the (τ/2)-scaled batch logsumexp normaliser "
                   "(Wang et al. 2024; higher is better)")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tau", type=float, default=DEFAULT_TAU, help="temperature τ (default: %(default)s)")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                            help="batch size B, capped at the pool size (default: %(default)s)")
        parser.add_argument("--k", type=int, default=DEFAULT_K, help="random batchings averaged (default: %(default)s)")
        parser.add_argument("--block-rows", type=int, default=DEFAULT_BLOCK_ROWS,
                            help="batches are drawn within blocks of this many rows (memory bound; default: "
                                 "%(default)s, at least B)")
        parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        if args.tau <= 0:
            raise ValueError(f"--tau must be > 0, got {args.tau}")
        if args.batch_size < 1 or args.k < 1:
            raise ValueError("--batch-size and --k must be at least 1")
        return {"tau": args.tau, "batch_size": args.batch_size, "k": args.k, "block_rows": args.block_rows,
                "device": args.device}

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        # CPU budget of the demo: B = 512, K = 1 on the simulated L/14 vectors (paper: B = 32768, K = 10).
        return [(m, {"tau": DEFAULT_TAU, "batch_size": 512, "k": 1}) for m in models if m == "datacomp_l14"]

    # block-local: every block of whole vector parts (~block_rows rows) is scored on its own, with batches
    # drawn by a generator seeded by (seed, crc32 of the block's first uid): the same batches whichever engine
    # and worker computes the block, in any order
    vector_columns = ("img", "txt")

    @classmethod
    def vector_block_rows(cls, params: dict) -> int:
        return max(int(params.get("block_rows") or DEFAULT_BLOCK_ROWS), int(params.get("batch_size", DEFAULT_BATCH)))

    def prepare_vectors(self, store, model: str, params: dict, echo) -> tuple[dict, dict[str, str]]:
        from audit.store.streamed import blocks
        from audit.store.vectors import parts

        tau, bsz, k = (float(params.get("tau", DEFAULT_TAU)), int(params.get("batch_size", DEFAULT_BATCH)),
                       int(params.get("k", DEFAULT_K)))
        if tau <= 0:
            raise ValueError(f"--tau must be > 0, got {tau}")
        if bsz < 1 or k < 1:
            raise ValueError("--batch-size and --k must be ≥ 1")
        block_rows = self.vector_block_rows(params)
        n_blocks = len(blocks([str(f) for f in parts(store, model)], block_rows))
        column = self.output_names(model, params)[0]
        return ({"column": column, "tau": tau, "batch_size": bsz, "k": k, "seed": int(params.get("seed") or 0),
                 "device": params.get("device")},
                {column: f"{self.description}. τ={tau:g}, B={bsz} (at most a block's rows), K={k}, {n_blocks} "
                         f"block(s) of whole vector parts, ≤{block_rows:,} rows each, seed {params.get('seed')}"})

    def compute_vectors(self, vectors: dict[str, np.ndarray], prepared: dict) -> dict[str, np.ndarray]:
        img, txt = vectors["img"], vectors["txt"]
        out = np.full(len(img), np.nan)
        # a NaN/inf anywhere in a row makes its squared norm non-finite (one cheap pass instead of isfinite)
        ok = np.isfinite(np.einsum("ij,ij->i", img, img)) & np.isfinite(np.einsum("ij,ij->i", txt, txt))
        if ok.any():
            rng = block_rng(prepared["seed"], vectors["uid"][0].as_py())
            out[ok] = negclip_scores(img[ok] if not ok.all() else img, txt[ok] if not ok.all() else txt,
                                     tau=prepared["tau"], batch_size=prepared["batch_size"], k=prepared["k"],
                                     rng=rng, device=prepared.get("device"), owned=True)
        return {prepared["column"]: out}

    @classmethod
    def output_names(cls, model: str | None, params: dict) -> list[str]:
        return [f"negclip_{slug(model)}" if model else "negclip"]
