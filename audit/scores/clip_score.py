"""CLIP score: cos(f_i, g_i) of the stored (L2-normalised) image and text embeddings (methods.md §1.3)."""
from __future__ import annotations

import numpy as np

from audit.scores.base import SCORES, Score, ScoreContext


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

    def compute(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        out = np.full(len(ctx.uids), np.nan)
        for rows, cols in ctx.iter_vectors():
            out[rows] = clip_score(cols["img"], cols["txt"])
        return {self.output_names(ctx.model, ctx.params)[0]: out}
