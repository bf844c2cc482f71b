"""NormSim_p (Wang et al., NeurIPS 2024; methods.md §2.3): how close an image is to a target set.

    NormSim_p(i) = || (f_i·t_1, …, f_i·t_M) ||_p        NormSim_∞(i) = max_j |f_i·t_j|

``--p 2`` uses the Gram trick ``sqrt(rowsum((F @ G) * F))`` with ``G = TᵀT`` (d × d; O(N d²) instead of
O(N M d)). ``--p inf`` tiles both the pool rows and the target rows and keeps a running maximum, so memory
is one tile × tile block. NormSim_2² = M · VAS with Σ = TᵀT/M (§3.1): the same ranking as VAS.
Stored as ``normsim_2_<model>`` / ``normsim_inf_<model>`` (plus ``_<tag>`` with ``--tag``).
"""
from __future__ import annotations

import argparse

import numpy as np

from audit.scores.base import SCORES, Score
from audit.scores.targets import (DEMO_CLASSES, Target, add_target_arguments, finite_unit_rows, load_target,
                                  target_params)
from audit.store import slug

P_CHOICES = ("2", "inf")


def normsim_2(f: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Gram trick: sqrt(f_iᵀ G f_i) per row. f: (n, d) float32, gram: (d, d) = TᵀT -> (n,) float64."""
    q = np.einsum("ij,ij->i", f @ gram.astype(f.dtype, copy=False), f, dtype=np.float64)
    return np.sqrt(np.maximum(q, 0.0))


def normsim_2_direct(f: np.ndarray, target: np.ndarray) -> np.ndarray:
    """sqrt(Σ_j (f_i·t_j)²) per row: O(n M d), cheaper than the Gram trick when M < d."""
    s = f @ target.T.astype(f.dtype, copy=False)
    return np.sqrt(np.einsum("ij,ij->i", s, s, dtype=np.float64))


def normsim_inf(f: np.ndarray, target: np.ndarray, *, tile: int = 8192, device: str | None = None) -> np.ndarray:
    """max_j |f_i·t_j| per row, tiled over rows and targets. f: (n, d), target: (M, d) -> (n,) float64."""
    import torch

    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_all = torch.as_tensor(np.ascontiguousarray(target, dtype=np.float32), device=dev)
    out = np.empty(f.shape[0])
    for r0 in range(0, f.shape[0], tile):
        fr = torch.as_tensor(np.ascontiguousarray(f[r0:r0 + tile], dtype=np.float32), device=dev)
        best = torch.zeros(fr.shape[0], dtype=torch.float32, device=dev)
        for c0 in range(0, t_all.shape[0], tile):
            best = torch.maximum(best, (fr @ t_all[c0:c0 + tile].T).abs_().amax(dim=1))
        out[r0:r0 + fr.shape[0]] = best.double().cpu().numpy()
    return out


def normsim_direct(f: np.ndarray, target: np.ndarray, p: float) -> np.ndarray:
    """Reference form ``||F Tᵀ||_p`` row-wise (O(n M d) memory); for tests and small inputs."""
    s = np.abs(f.astype(np.float64) @ target.astype(np.float64).T)
    return s.max(axis=1) if np.isinf(p) else (s ** p).sum(axis=1) ** (1.0 / p)


def score_name(prefix: str, model: str | None, tag: str | None) -> str:
    name = prefix + (f"_{slug(model)}" if model else "")
    return name + (f"_{slug(tag)}" if tag else "")


def describe_target(t: Target) -> str:
    return t.label + (" — absolute values differ from an image target (modality gap)" if t.text_proxy else "")


@SCORES.register
class NormSim(Score):
    name = "normsim"
    version = 1
    description = "NormSim_p: p-norm of the image's similarities to a target set (Wang et al. 2024)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--p", choices=P_CHOICES, default="inf", help="2 or inf (default: %(default)s)")
        add_target_arguments(parser)
        parser.add_argument("--tag", help="suffix of the stored name, to keep runs against several targets apart")
        parser.add_argument("--device", help="torch device for p=inf (default: cuda when available, else cpu)")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        return {"p": args.p, **target_params(args), "tag": args.tag, "device": args.device}

    @classmethod
    def output_names(cls, model: str | None, params: dict) -> list[str]:
        return [score_name(f"normsim_{params.get('p', 'inf')}", model, params.get("tag"))]

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        # Demo target: the simulated pool's ImageNet-like object classes as prompts through the simulated text
        # encoder (a text proxy; docs/scores.md). People concepts are not in the target.
        target = {"classes": DEMO_CLASSES, "template": "a photo of a {}.", "text_model": None}
        return [(m, {"p": p, **target, "tag": None, "device": None}) for m in models if m == "datacomp_l14"
                for p in P_CHOICES]

    # vector-local: the target (M × d, and its d × d Gram matrix for p = 2) is resolved once on the driver and
    # sent to every worker with the payload (a broadcast); each batch of the pool is scored against all of it
    vector_columns = ("img",)

    def prepare_vectors(self, store, model: str, params: dict, echo) -> tuple[dict, dict[str, str]]:
        target = load_target(store, model, params)
        t = target.vectors
        gram = (t.T.astype(np.float64) @ t.astype(np.float64)).astype(np.float32)
        column = self.output_names(model, params)[0]
        echo(f"target: {target.label}")
        return ({"column": column, "p": params["p"], "target": t, "gram": gram, "device": params.get("device")},
                {column: f"NormSim_{'∞' if params['p'] == 'inf' else '2'} against {describe_target(target)}"})

    def compute_vectors(self, vectors: dict[str, np.ndarray], prepared: dict) -> dict[str, np.ndarray]:
        t = prepared["target"]
        ok, f = finite_unit_rows(vectors["img"])
        out = np.full(len(ok), np.nan)
        if prepared["p"] == "inf":
            out[ok] = normsim_inf(f, t, device=prepared.get("device"))
        else:  # Gram trick when the target has at least d rows, else the direct form (same numbers)
            out[ok] = normsim_2(f, prepared["gram"]) if len(t) >= t.shape[1] else normsim_2_direct(f, t)
        return {prepared["column"]: out}
