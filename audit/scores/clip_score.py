"""CLIP score: cos(f_i, g_i) of the stored (L2-normalised) image and text embeddings (methods.md §1.3)."""
from __future__ import annotations

import numpy as np

from audit.scores.base import SCORES, Score


def clip_score(img: np.ndarray, txt: np.ndarray) -> np.ndarray:
    """Row-wise dot product of unit vectors. img, txt: (n, d) float32 -> (n,) float64."""
    return np.einsum("ij,ij->i", img, txt, dtype=np.float64)


@SCORES.register
class ClipScore(Score):
    name = "clip"
    version = 1
    description = "cosine similarity of image and text embedding (DataComp CLIP score)"

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [(m, {}) for m in models]

    vector_columns = ("img", "txt")

    def compute_vectors(self, vectors: dict[str, np.ndarray], prepared: dict) -> dict[str, np.ndarray]:
        return {prepared["column"]: clip_score(vectors["img"], vectors["txt"])}

    def prepare_vectors(self, store, model: str, params: dict, echo) -> tuple[dict, dict[str, str]]:
        return {"column": self.output_names(model, params)[0]}, {}
