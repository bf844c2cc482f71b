"""Export the kept subset: CSV, Parquet or a DataComp uid .npy, with a JSON manifest of every setting.

The same function serves the CLI (`python -m audit export`) and the dashboard's Export page, so both give
byte-identical files for the same rules.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from audit.decide.selection import Rule, RuleError, Selection, select
from audit.store import Store, pid_alive, store_version
from audit.export.csvsafe import strict_json, to_csv
from audit.killpoints import checkpoint


EXPORT_FORMATS = ("csv", "parquet", "npy")
SAMPLE_EXPORT_COLUMNS = ["uid", "source", "caption", "url", "domain", "tld", "width", "height", "image_ref",
                         "sha256", "simulated"]


def datacomp_uid_array(uids: Sequence[str]) -> np.ndarray:
    """DataComp subset format: sorted structured array of dtype u8,u8 from 32-hex uids (methods.md §1.2)."""
    bad = [u for u in uids if not (isinstance(u, str) and len(u) == 32 and all(c in "0123456789abcdefABCDEF" for c in u))]
    if bad:
        raise ValueError(f"{len(bad)} uid(s) are not 32 hex characters (e.g. {bad[0]!r}); "
                         "the DataComp .npy format needs DataComp uids")
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], dtype=np.dtype("u8,u8"))
    arr.sort()
    return arr


def selection_frame(store: Store, rules: Sequence[Rule], *, recipe=None,
                    by: Sequence[str] = ()) -> tuple[pd.DataFrame, Selection, list[str]]:
    """Every sample with every score column, the keep decision and the reasons it was excluded.

    ``recipe`` (an audit.recipes.Recipe) replaces the plain intersection of ``rules`` when given. ``by``: group
    columns (attributes or sample columns) added as ``<name>`` (the label; ``unknown`` where none) and
    ``<name>__conf`` (the annotator's confidence), so a file re-tabulates the dashboard's group tables."""
    names = store.score_names()
    scores = store.score_frame(names)
    samples = store.sample_frame(SAMPLE_EXPORT_COLUMNS)
    frame = samples.merge(scores, on="uid", how="left")
    if by:
        from audit.store.labels import label_confidence_frame

        clash = [b for b in by if b in frame.columns and b not in ("source", "domain", "tld", "simulated")]
        if clash:
            raise ValueError(f"--by {clash[0]} is also a score or sample column; pick an attribute")
        labels = label_confidence_frame(store, list(by))
        frame = frame.drop(columns=[b for b in by if b in frame.columns]).merge(labels, on="uid", how="left")
    columns = {n: frame[n].to_numpy(dtype=float) for n in names}
    sel = (recipe.evaluate(columns, n=len(frame)) if recipe is not None
           else select(list(rules), columns, n=len(frame)))
    frame["keep"] = sel.keep
    frame["excluded_by"] = sel.reasons()
    return frame, sel, names


def manifest(store: Store, rules: Sequence[Rule], sel: Selection, fmt: str, *, extra: dict | None = None,
             store_path: str | None = None) -> dict:
    """Every setting of an export. ``store_path``: the user's store when ``store`` is the dashboard's snapshot."""
    runs = store.runs()
    return {
        "tool": "clip-audit", "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "store": str(Path(store_path or store.path).resolve()), "store_version": store_version(store_path or store.path),
        "format": fmt, "rules": [str(r) for r in rules], "thresholds": sel.thresholds,
        "pool": int(len(sel.keep)), "kept": int(sel.keep.sum()), "excluded": int((~sel.keep).sum()),
        "excluded_by_reason": sel.counts_by_reason(),
        "scores": store.score_catalog().to_dict("records"),
        "runs": json.loads(runs.to_json(orient="records", date_format="iso")),
        **(extra or {}),
    }


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename: a kill leaves either the old
    file or the new one, never a partial file at the final path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):   # left by a killed export (no process of that pid)
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        checkpoint("export.before_rename")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def render(frame: pd.DataFrame, fmt: str, *, all_rows: bool = False) -> bytes:
    """The bytes of the kept rows in one format; ``all_rows``: every sample, with its ``keep`` decision and the
    rules it failed (``excluded_by``), so inclusion rates can be computed from the file."""
    if all_rows:
        if fmt == "npy":
            raise ValueError("a DataComp .npy lists kept uids only; --all-rows needs CSV or Parquet")
        kept = frame.assign(keep=frame["keep"].astype(int), excluded_by=frame["excluded_by"].map("; ".join))
    else:
        kept = frame[frame["keep"]].drop(columns=["keep", "excluded_by"])
    if fmt == "csv":
        return to_csv(kept).encode("utf-8")
    if fmt == "parquet":
        buf = io.BytesIO()
        kept.to_parquet(buf, index=False)
        return buf.getvalue()
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, datacomp_uid_array(kept["uid"].tolist()))
        return buf.getvalue()
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")


def format_of(path: str | Path, fmt: str | None = None) -> str:
    fmt = fmt or Path(path).suffix.lstrip(".").lower()
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"cannot tell the export format of {path!s}; use a .csv, .parquet or .npy name")
    return fmt


def export(store_path: str, out: str, rules: Sequence[str], *, fmt: str | None = None, echo=print,
           by: Sequence[str] = (), all_rows: bool = False) -> dict:
    """Write the kept subset to ``out`` and its manifest to ``out + '.manifest.json'``."""
    fmt = format_of(out, fmt)
    recipe, extra = None, None
    try:
        parsed = [Rule.parse(r) for r in rules]
    except RuleError:  # named filters (basic, laion, …) or ordered steps (… then …): audit.decide.recipes
        from audit.decide.recipes import Recipe

        parsed, recipe = None, Recipe
    with Store.reader(store_path) as st:
        if recipe is not None:
            recipe = Recipe.parse(rules, names=st.score_names())
            parsed = recipe.rules
        frame, sel, _ = selection_frame(st, parsed, recipe=recipe, by=by)
        data = render(frame, fmt, all_rows=all_rows)
        cat = st.attribute_catalog()
        if recipe is not None:
            extra = {"recipe": str(recipe), "kept_after_step": sel.step_kept, "equivalent_rules": sel.as_rules()}
        man = manifest(st, parsed, sel, fmt, extra=extra)
        man["uid_warnings"] = st.uid_problems(frame.loc[frame["keep"], "uid"].tolist())
    man["all_rows"] = bool(all_rows)
    groups = {}
    for b in by:
        row = cat[cat["attribute"] == b]
        groups[b] = ({"method": str(row.iloc[0]["method"]), "imputed": bool(row.iloc[0]["imputed"]),
                      "random_weights": bool(row.iloc[0]["random_weights"])} if len(row)
                     else {"method": "sample column", "imputed": False})
    man["group_columns"] = groups
    man["file"] = {"name": Path(out).name, "bytes": len(data), "rows": man["pool"] if all_rows else man["kept"],
                   "sha256": hashlib.sha256(data).hexdigest()}
    write_atomic(Path(out), data)
    checkpoint("export.data_written")
    write_atomic(Path(str(out) + ".manifest.json"), strict_json(man, indent=2).encode("utf-8"))
    echo(f"kept {man['kept']} of {man['pool']} samples -> {out} ({fmt}); manifest {out}.manifest.json")
    warn = man["uid_warnings"]
    if warn["generated_uids"]:
        echo(f"warning: {warn['generated_uids']} kept samples had no uid in the input (the tool made one up from the "
             f"path); a DataComp .npy subset cannot select them" if fmt == "npy" else
             f"note: {warn['generated_uids']} kept samples have uids made up at ingest (the input had none)")
    if warn["repeated_in_input"]:
        echo(f"warning: {warn['repeated_in_input']} kept uids appear more than once in the input (duplicate_uid "
             f"rejects); a resharder selecting by uid emits every copy")
    for reason, n in man["excluded_by_reason"].items():
        echo(f"  excluded by {reason}: {n}")
    return man
