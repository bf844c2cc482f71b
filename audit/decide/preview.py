"""The live filter preview: inclusion rates by group for a threshold, from a sketch whose cost per slider move does
not grow with the pool.

The sketch of one (score, group column) is the pool's finite score values sorted in descending order, the group
code of each, and the cumulative count of every group at each block boundary (every ``BLOCK`` sorted values). For
a threshold τ, the samples kept are a prefix of the sorted order (the first ``p`` = #{v ≥ τ}, one binary search);
the kept count of each group is its cumulative count at the last block boundary before ``p`` plus an exact count
of the codes between that boundary and ``p`` (at most BLOCK of them). A move costs O(log N + groups + BLOCK)
whatever N is, and the counts are exact: they equal a full comparison of every value with τ
(tests/test_preview_sketch.py). DataComp's top-fraction threshold is ``sorted[int(N·p)]``, the (int(N·p)+1)-th
largest value of the pool (NaN scores count in N, never kept).

Memory: 8 bytes (value) + 4 (row position, for the comparison filter and examples) + 1–2 (group code) per sample,
no Python object per sample: ~170 MB at 12.8M rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audit.decide.selection import top_fraction_rank
from audit.measure.metrics import encode_groups, rates_from_counts

BLOCK = 4096
HIST_BINS = 80


@dataclass
class PreviewData:
    labels: np.ndarray         # group labels, sorted
    sorted_desc: np.ndarray    # (F,) finite values, descending
    codes_desc: np.ndarray     # (F,) group code of each sorted value
    order: np.ndarray          # (F,) int32: row (uid order) of each sorted value
    group_n: np.ndarray        # (G,) samples per group, missing scores included
    n: int                     # samples in the pool
    block_counts: np.ndarray = field(repr=False, default=None)   # (F // BLOCK + 1, G) kept per group at boundaries

    def __post_init__(self) -> None:
        if self.block_counts is None:
            self.block_counts = _block_counts(self.codes_desc, len(self.labels))
        self._neg = -self.sorted_desc   # ascending, for searchsorted

    # ---- building --------------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, values: np.ndarray, codes: np.ndarray, labels: np.ndarray,
                    order: np.ndarray | None = None) -> "PreviewData":
        """From one value (NaN = no score) and one group code per sample, rows in uid order. ``order``: the rows of
        the finite values by value descending, equal values in row order (the store keeps it with the score,
        audit/store/columns.py); sorted here when not given."""
        from audit.store.columns import descending_order

        values = np.asarray(values, dtype=np.float64)
        codes = np.asarray(codes)
        order = descending_order(values) if order is None else np.asarray(order)
        code_type = np.uint8 if len(labels) <= 255 else (np.uint16 if len(labels) <= 65535 else np.int64)
        group_n = np.bincount(codes, minlength=len(labels)).astype(np.int64)
        return cls(np.asarray(labels, dtype=object), values[order], codes[order].astype(code_type, copy=False), order,
                   group_n, len(values))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "PreviewData":
        """From a frame with columns score, grp (Store.score_and_groups), rows in uid order."""
        codes, labels = encode_groups(frame["grp"])
        return cls.from_arrays(frame["score"].to_numpy(dtype=np.float64), codes, labels)

    # ---- one slider move: O(log N + groups + BLOCK) -------------------------------------------------------------
    @property
    def n_missing(self) -> int:
        return self.n - len(self.sorted_desc)

    def threshold(self, mode: str, value: float) -> float:
        """mode 'threshold': value itself; mode 'top': DataComp's (int(N·p)+1)-th largest of the pool."""
        if mode == "threshold":
            return float(value)
        rank = top_fraction_rank(self.n, len(self.sorted_desc), value)
        return float("-inf") if rank is None else float(self.sorted_desc[rank])

    def n_kept(self, tau: float) -> int:
        """#{v ≥ τ}: the kept samples are the first n_kept(τ) of the sorted order."""
        if np.isnan(tau):
            return 0
        return int(np.searchsorted(self._neg, -tau, side="right"))

    def kept_counts(self, tau: float) -> np.ndarray:
        """(G,) samples with value ≥ τ per group: the block boundary's counts plus the exact remainder."""
        p = self.n_kept(tau)
        b = p // BLOCK
        rest = np.bincount(self.codes_desc[b * BLOCK:p], minlength=len(self.labels))
        return self.block_counts[b] + rest

    def table(self, mode: str, value: float, *, min_n: int = 30) -> tuple[pd.DataFrame, float]:
        """(per-group table as rates_from_codes, threshold τ)."""
        tau = self.threshold(mode, value)
        return rates_from_counts(self.group_n, self.kept_counts(tau), self.labels, min_n=min_n), tau

    # ---- O(N), for the slower parts of a page ---------------------------------------------------------------
    def keep(self, tau: float) -> np.ndarray:
        """(N,) bool in uid order: value ≥ τ."""
        out = np.zeros(self.n, dtype=bool)
        out[self.order[:self.n_kept(tau)]] = True
        return out

    def histogram(self, bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) of the finite values: what the score chart draws (bins, not every value)."""
        if len(self.sorted_desc) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(1)
        lo, hi = float(self.sorted_desc[-1]), float(self.sorted_desc[0])
        if hi <= lo:
            hi = lo + 1e-9
        edges = np.linspace(lo, hi, bins + 1)
        # counts from the sorted values: one binary search per edge, O(bins · log N)
        ge = np.searchsorted(self._neg, -edges, side="right")   # #{v ≥ edges[i]}
        counts = ge[:-1] - ge[1:]
        counts[-1] += ge[-1]                                   # the last bin is closed: v == max counts there
        return counts.astype(np.int64), edges


def _block_counts(codes_desc: np.ndarray, groups: int, chunk_blocks: int = 256) -> np.ndarray:
    """(F // BLOCK + 1, G) int64: row b = per-group count among the first b · BLOCK sorted values."""
    nb = len(codes_desc) // BLOCK
    per = np.zeros((nb, groups), dtype=np.int64)
    for b0 in range(0, nb, chunk_blocks):   # chunked: no N-sized temporary
        b1 = min(b0 + chunk_blocks, nb)
        c = codes_desc[b0 * BLOCK:b1 * BLOCK].astype(np.int64)
        idx = np.repeat(np.arange(b1 - b0, dtype=np.int64) * groups, BLOCK) + c
        per[b0:b1] = np.bincount(idx, minlength=(b1 - b0) * groups).reshape(b1 - b0, groups)
    out = np.zeros((nb + 1, groups), dtype=np.int64)
    np.cumsum(per, axis=0, out=out[1:])
    return out
