"""The live filter preview: inclusion rates by group for a threshold, from arrays held in memory.

A slider move costs O(N) vectorised work (one comparison and two bincounts) on a score column and a
group-code column loaded once per (score, group); it never touches embeddings or re-reads the store.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.decide.selection import top_fraction_rank
from audit.measure.metrics import encode_groups, rates_from_codes


@dataclass
class PreviewData:
    uids: np.ndarray          # (N,) object
    values: np.ndarray        # (N,) float64, NaN = no score
    codes: np.ndarray         # (N,) int64 group codes
    labels: np.ndarray        # group labels, sorted
    sorted_desc: np.ndarray   # finite values, descending (for the top-fraction threshold)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "PreviewData":
        """From a frame with columns uid, score, grp (Store.score_and_groups)."""
        values = frame["score"].to_numpy(dtype=np.float64)
        codes, labels = encode_groups(frame["grp"])
        finite = values[~np.isnan(values)]
        return cls(frame["uid"].to_numpy(dtype=object), values, codes, labels, -np.sort(-finite))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def n_missing(self) -> int:
        return self.n - len(self.sorted_desc)

    def threshold(self, mode: str, value: float) -> float:
        """mode 'threshold': value itself; mode 'top': DataComp's (int(N·p)+1)-th largest of the pool."""
        if mode == "threshold":
            return float(value)
        rank = top_fraction_rank(self.n, len(self.sorted_desc), value)
        return float("-inf") if rank is None else float(self.sorted_desc[rank])

    def keep(self, tau: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.values >= tau

    def table(self, mode: str, value: float, *, min_n: int = 30) -> tuple[pd.DataFrame, float, np.ndarray]:
        tau = self.threshold(mode, value)
        keep = self.keep(tau)
        return rates_from_codes(keep, self.codes, self.labels, min_n=min_n), tau, keep
