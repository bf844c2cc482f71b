"""Per-sample label, caption and score columns (whole pool or streamed in uid order), for group tables and balancing.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pandas as pd
from audit.store.schema import SAMPLE_GROUP_COLUMNS, StoreError, ident
from audit.store.store import Store

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa


# ---- label columns for group tables ------------------------------------------------------------------
def label_frame(store: Store, columns: Sequence[str]) -> pd.DataFrame:
    """uid plus one label column per sample group column or attribute, every sample, ORDER BY uid.

    A sample without a label for an attribute gets ``unknown``; the labels are those of
    label_confidence_frame (one per sample: the most confident when an annotator wrote several).
    """
    return label_confidence_frame(store, columns)[["uid", *columns]]


# ---- labels with confidences (whole pool or streamed), score columns, label counts ---------------------
def group_label_sql(store: Store, columns: Sequence[str], *, alias: str = "s",
                    named: bool = True) -> tuple[list[str], list[str], list]:
    """SELECT expressions, LEFT JOINs and parameters that add to a query over ``samples <alias>`` each group
    column's label (``unknown`` where there is none) and confidence (1.0 for sample columns, the annotator's for
    attributes: the most confident label when it wrote several). ``named``: the output columns are called
    ``<column>`` and ``<column>__conf``; else ``l<i>`` and ``c<i>``."""
    attrs = set(store.attributes())
    exprs, joins, params = [], [], []
    for i, col in enumerate(columns):
        lab, conf = (ident(col), ident(f"{col}__conf")) if named else (f"l{i}", f"c{i}")
        if col in SAMPLE_GROUP_COLUMNS:
            exprs.append(f"coalesce(CAST({alias}.{ident(col)} AS VARCHAR), 'unknown') AS {lab}, 1.0::DOUBLE AS {conf}")
        elif col in attrs:
            # one row per uid even if an annotator wrote several: the most confident label wins
            joins.append(f"LEFT JOIN (SELECT uid, arg_max(label, confidence) AS label, max(confidence) AS conf "
                         f"FROM annotations WHERE attribute = ? GROUP BY uid) a{i} ON a{i}.uid = {alias}.uid")
            params.append(col)
            exprs.append(f"coalesce(a{i}.label, 'unknown') AS {lab}, coalesce(a{i}.conf, 0.0)::DOUBLE AS {conf}")
        else:
            known = ", ".join(store.group_columns())
            raise StoreError(f"unknown attribute or group column {col!r}; this store has: {known}")
    return exprs, joins, params


@contextlib.contextmanager
def decisions_reader(store: Store, decisions, sample_columns: Sequence[str], carried: Sequence[str],
                     by: Sequence[str], *, all_rows: bool, batch_rows: int) -> Iterator["pa.RecordBatchReader"]:
    """Stream, in uid order, ``decisions`` (an Arrow table: uid, the ``carried`` columns, keep, excluded_by) joined
    to the samples: the ``sample_columns``, the carried ones, the ``by`` group columns (group_label_sql), and
    with ``all_rows`` keep (BIGINT 1/0) and excluded_by. DuckDB joins and sorts within its memory limit
    (spilling past it); the caller holds one batch at a time."""
    cols = [f"s.{ident(c)}" for c in sample_columns] + [f"d.{ident(c)}" for c in carried]
    label_cols, joins, params = group_label_sql(store, by, alias="s")
    cols += label_cols
    if all_rows:
        cols += ["CAST(d.keep AS BIGINT) AS keep", "CAST(d.excluded_by AS VARCHAR) AS excluded_by"]
    sql = (f"SELECT {', '.join(cols)} FROM samples s JOIN _decisions d ON d.uid = s.uid {' '.join(joins)} "
           "ORDER BY s.uid")
    cur = store.cursor()   # a cursor of its own (a connection): closed with the result, whatever was read
    cur.register("_decisions", decisions)
    try:
        yield cur.sql(sql, params=params).to_arrow_reader(batch_rows)
    finally:
        cur.close()


def _label_conf_sql(store: Store, columns: Sequence[str]) -> tuple[str, list]:
    exprs, joins, params = group_label_sql(store, columns, named=False)
    return f"SELECT {', '.join(['s.uid', *exprs])} FROM samples s {' '.join(joins)} ORDER BY s.uid", params


def _label_conf_names(columns: Sequence[str]) -> dict[str, str]:
    names = {}
    for i, col in enumerate(columns):
        names[f"l{i}"] = col
        names[f"c{i}"] = f"{col}__conf"
    return names


def label_confidence_frame(store: Store, columns: Sequence[str]) -> pd.DataFrame:
    """uid, then per column its label and ``<column>__conf`` (annotator confidence; 1.0 for sample columns,
    0.0 where there is no label), every sample ORDER BY uid. Names checked against the allow-lists."""
    sql, params = _label_conf_sql(store, columns)
    return store.df(sql, params).rename(columns=_label_conf_names(columns))


def iter_label_confidence(store: Store, columns: Sequence[str], batch_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """The same frame in uid order, ``batch_rows`` at a time (DuckDB streams the result; bounded memory)."""
    sql, params = _label_conf_sql(store, columns)
    reader = store.cursor().sql(sql, params=params).to_arrow_reader(batch_rows)
    names = _label_conf_names(columns)
    for batch in reader:
        yield batch.to_pandas().rename(columns=names)


def iter_score_values(store: Store, name: str, batch_rows: int = 200_000) -> Iterator[np.ndarray]:
    """One score's values for every sample in uid order (NaN where missing), ``batch_rows`` at a time."""
    store.check_score(name)
    reader = store.cursor().sql(
        "SELECT sc.value FROM samples s LEFT JOIN scores sc ON sc.uid = s.uid AND sc.name = ? ORDER BY s.uid",
        params=[name]).to_arrow_reader(batch_rows)
    for batch in reader:
        yield batch.column(0).to_numpy(zero_copy_only=False).astype(np.float64)


def label_counts(store: Store, column: str) -> pd.DataFrame:
    """label, n, mass (Σ confidence) of one attribute or sample column over every sample (unknown included)."""
    sql, params = _label_conf_sql(store, [column])
    return store.df(f"SELECT l0 AS label, count(*) AS n, sum(c0) AS mass FROM ({sql}) GROUP BY l0 "
                    f"ORDER BY n DESC, label", params)


def samples_simulated(store: Store, uids: Sequence[str]) -> np.ndarray:
    """(len(uids),) bool: the ``simulated`` flag of each uid (False when unknown), in the given order."""
    frame = pd.DataFrame({"uid": pd.Series(list(uids), dtype="string"), "i": np.arange(len(uids))})
    cur = store.cursor()
    cur.register("_sim_want", frame)
    try:
        got = cur.execute("SELECT w.i, coalesce(s.simulated, false) AS sim FROM _sim_want w "
                          "LEFT JOIN samples s USING (uid) ORDER BY w.i").df()
    finally:
        cur.unregister("_sim_want")
    return got["sim"].to_numpy(dtype=bool)


def uids_with_label(store: Store, attribute: str, label: str) -> set[str]:
    """uids annotated with ``label`` for ``attribute`` (e.g. the NSFW-flagged samples whose thumbnails are blurred)."""
    return set(store.df("SELECT uid FROM annotations WHERE attribute = ? AND label = ?", [attribute, label])["uid"])
