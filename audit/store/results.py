"""Results of the analyses kept in the store (origin probe, embedding map) and the small ``meta`` key/value table.
"""
from __future__ import annotations

import json

import pandas as pd
from audit.store.store import Store


def meta_get(store: Store, key: str) -> str | None:
    return store.scalar("SELECT value FROM meta WHERE key = ?", [key])


def meta_put(store: Store, key: str, value: str) -> None:
    store.cursor().execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])



def write_origin_result(store: Store, run_id: int, by: str, result_json: str) -> None:
    """Store one origin-probe result (a JSON document) under its run."""
    store.cursor().execute("INSERT INTO origin_results VALUES (?, ?, now(), ?)", [run_id, by, result_json])


def origin_runs(store: Store) -> pd.DataFrame:
    """run_id, by_column, created of every stored origin result, newest first (empty if none)."""
    if not store.table_exists("origin_results"):
        return pd.DataFrame(columns=["run_id", "by_column", "created"])
    return store.df("SELECT run_id, by_column, created FROM origin_results ORDER BY created DESC, run_id DESC")


def origin_result(store: Store, *, run_id: int | None = None, by: str | None = None) -> dict | None:
    """One stored origin result: the given run, else the newest for ``by``, else the newest; None if none."""
    if not store.table_exists("origin_results"):
        return None
    if run_id is not None:
        raw = store.scalar("SELECT result FROM origin_results WHERE run_id = ? ORDER BY created DESC LIMIT 1",
                           [run_id])
    elif by is not None:
        raw = store.scalar("SELECT result FROM origin_results WHERE by_column = ? "
                           "ORDER BY created DESC, run_id DESC LIMIT 1", [by])
    else:
        raw = store.scalar("SELECT result FROM origin_results ORDER BY created DESC, run_id DESC LIMIT 1")
    return json.loads(raw) if raw else None


def write_map(store: Store, model: str, frame: pd.DataFrame, *, run_id: int, column: str, fit_rows: int,
              skipped: int, knn: str, params_json: str, random_weights: bool) -> None:
    """Replace the map coordinates of ``model`` (frame: uid, x, y, fit) in one transaction."""
    from audit.store import parts

    with store.transaction():
        cur = store.cursor()
        parts.write_part(store, "embedding_map", model, frame[["uid", "x", "y", "fit"]].assign(model=model),
                         run_id=run_id, replace=True)
        cur.execute("INSERT OR REPLACE INTO map_catalog VALUES (?,?,?,?,?,?,?,?,?, now())",
                    [model, run_id, column, len(frame), fit_rows, skipped, knn, params_json, random_weights])


def map_catalog(store: Store) -> pd.DataFrame:
    """One row per model with a stored map (empty if none)."""
    if not store.table_exists("map_catalog"):
        return pd.DataFrame(columns=["model", "run_id", "column_name", "n_rows", "fit_rows", "skipped", "knn",
                                     "params", "random_weights", "created"])
    return store.df("SELECT * FROM map_catalog ORDER BY model")


def map_coords(store: Store, model: str) -> pd.DataFrame:
    """uid, x, y, fit and pos (the sample's row position in ``samples ORDER BY uid``, which aligns it with
    score_frame / label_frame) of every mapped sample of ``model``, ORDER BY uid."""
    if not store.table_exists("embedding_map"):
        return pd.DataFrame(columns=["uid", "x", "y", "fit", "pos"])
    return store.df(
        "SELECT m.uid, m.x, m.y, m.fit, s.pos FROM embedding_map m JOIN "
        "(SELECT uid, row_number() OVER (ORDER BY uid) - 1 AS pos FROM samples) s USING (uid) "
        "WHERE m.model = ? ORDER BY m.uid", [model])


def duplicate_examples(store: Store, group_score: str, keep_score: str, *, limit_groups: int = 5,
                       max_members: int = 12) -> pd.DataFrame:
    """Members of the largest duplicate groups of a SemDeDup run: group, uid, kept, caption, url, source (at most
    ``max_members`` per group, kept ones first). Aggregated and limited in SQL: nothing per pool row comes back."""
    store.check_score(group_score)
    store.check_score(keep_score)
    return store.df(
        "WITH g AS (SELECT uid, value AS grp FROM scores WHERE name = ? AND value > 0), "
        "top AS (SELECT grp, count(*) AS n FROM g GROUP BY grp ORDER BY n DESC, grp LIMIT ?), "
        "m AS (SELECT g.grp, g.uid, k.value AS kept, top.n, "
        "      row_number() OVER (PARTITION BY g.grp ORDER BY k.value DESC, g.uid) AS r "
        "      FROM g JOIN top USING (grp) LEFT JOIN scores k ON k.uid = g.uid AND k.name = ?) "
        "SELECT m.grp AS \"group\", m.uid, m.kept, s.caption, s.url, s.source FROM m JOIN samples s USING (uid) "
        "WHERE m.r <= ? ORDER BY m.n DESC, m.grp, m.r",
        [group_score, int(limit_groups), keep_score, int(max_members)])
