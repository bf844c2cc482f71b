"""Export the kept subset: CSV, Parquet or a DataComp uid .npy, with a JSON manifest of every setting.

The same function serves the CLI (`python -m audit export`) and the dashboard's Export page, so both give
byte-identical files for the same rules.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from audit.decide.selection import Rule, RuleError, Selection, select
from audit.store import Store, pid_alive, store_version
from audit.store.schema import SAMPLE_COLUMNS
from audit.export.csvsafe import strict_json, to_csv
from audit.killpoints import checkpoint

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa


EXPORT_FORMATS = ("csv", "parquet", "npy")
SAMPLE_EXPORT_COLUMNS = ["uid", "source", "caption", "url", "domain", "tld", "width", "height", "image_ref",
                         "sha256", "simulated"]
EXPORT_MEMORY = "1GB"     # DuckDB's limit for the export's join and sort (it spills to disk past it)
BATCH_ROWS = 100_000


def _nullable_types() -> dict:
    """Arrow → pandas types that keep integers integers when a batch has a null, so every batch of a CSV prints
    640, never 640.0 (the file must not depend on where the batches break)."""
    import pyarrow as pa

    return {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
            pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
            pa.uint32(): pd.UInt32Dtype(), pa.bool_(): pd.BooleanDtype()}


def datacomp_uid_array(uids) -> np.ndarray:
    """DataComp subset format: sorted structured array of dtype u8,u8 from 32-hex uids (methods.md §1.2).
    ``uids``: strings or a pyarrow string array; parsed as one hex string (no Python int per uid)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = uids if isinstance(uids, (pa.Array, pa.ChunkedArray)) else pa.array(list(uids), pa.string())
    ok = pc.fill_null(pc.match_substring_regex(arr, "^[0-9a-fA-F]{32}$"), False)
    if not pc.all(ok).as_py() and len(arr):
        bad = pc.filter(arr, pc.invert(ok))
        raise ValueError(f"{len(bad)} uid(s) are not 32 hex characters (e.g. {bad[0].as_py()!r}); "
                         "the DataComp .npy format needs DataComp uids")
    out = _uid_pairs(arr)
    out.sort()
    return out


def _uid_pairs(arr) -> np.ndarray:
    """32-hex uids (checked by the caller) as (u8, u8) pairs, unsorted."""
    raw = np.frombuffer(bytes.fromhex("".join(arr.to_pylist())), dtype=">u8").reshape(-1, 2)
    out = np.empty(len(raw), dtype=np.dtype("u8,u8"))
    out["f0"], out["f1"] = raw[:, 0], raw[:, 1]
    return out


class _ScoreColumns(Mapping):
    """Every score of the store by name, each read (pool order, memory-mapped) only when a rule asks for it."""

    def __init__(self, store: Store):
        self.store, self.names = store, store.score_names()

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(name)
        return self.store.score_array(name)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def decide(store: Store, rules: Sequence[Rule], *, recipe=None) -> Selection:
    """The keep decision over the whole pool (row i = the i-th uid), from the rule scores' pool-order arrays."""
    columns, n = _ScoreColumns(store), int(store.count("samples"))
    return recipe.evaluate(columns, n=n) if recipe is not None else select(list(rules), columns, n=n)


def reason_codes(sel: Selection) -> "pa.DictionaryArray":
    """Per sample the '; '-joined reasons it failed ('' when kept), as a dictionary array: one small integer per
    sample, one string per distinct combination of failed rules."""
    import pyarrow as pa

    reasons = list(sel.failed)
    n = len(sel.keep)
    if len(reasons) > 62:
        return pa.array(sel.reasons(), pa.string()).dictionary_encode()
    bits = np.zeros(n, dtype=np.int64)
    for k, r in enumerate(reasons):
        bits |= np.asarray(sel.failed[r], dtype=np.int64) << k
    combos, codes = np.unique(bits, return_inverse=True)
    names = ["; ".join(r for k, r in enumerate(reasons) if int(c) >> k & 1) for c in combos]
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(names, pa.string()))


def _decision_table(store: Store, sel: Selection, names: Sequence[str], all_rows: bool):
    """uid, every score, keep, excluded_by in pool order: the pool-order arrays side by side (memory-mapped
    where they can be); only the kept rows unless ``all_rows``."""
    import pyarrow as pa
    from audit.store import columns as pool_columns

    table = pa.table({"uid": pool_columns.uids(store),
                      **{n: pa.array(store.score_array(n), pa.float64(), from_pandas=True) for n in names},
                      "keep": pa.array(sel.keep, pa.bool_()), "excluded_by": reason_codes(sel)})
    return table if all_rows else table.filter(pa.array(sel.keep, pa.bool_()))


@contextlib.contextmanager
def selection_reader(store: Store, sel: Selection, *, by: Sequence[str] = (), all_rows: bool = False,
                     batch_rows: int = BATCH_ROWS) -> Iterator["pa.RecordBatchReader"]:
    """The export's rows in uid order, ``batch_rows`` at a time: the sample columns, every score, the ``by``
    group columns (``<name>`` label, ``unknown`` where none, and ``<name>__conf``), and with ``all_rows`` every
    sample with ``keep`` (1/0) and ``excluded_by``. DuckDB joins the decisions to the samples and sorts (it
    spills to disk past the store's memory limit); Python holds one batch."""
    from audit.store.labels import decisions_reader

    names = store.score_names()
    clash = [b for b in by if b in names or (b in SAMPLE_COLUMNS and b not in ("source", "domain", "tld", "simulated"))]
    if clash:
        raise ValueError(f"--by {clash[0]} is also a score or sample column; pick an attribute")
    with decisions_reader(store, _decision_table(store, sel, names, all_rows),
                          [c for c in SAMPLE_EXPORT_COLUMNS if c not in by], names, by, all_rows=all_rows,
                          batch_rows=batch_rows) as reader:
        yield reader


def selection_frame(store: Store, rules: Sequence[Rule], *, recipe=None,
                    by: Sequence[str] = ()) -> tuple[pd.DataFrame, Selection, list[str]]:
    """Every sample with every score column, the keep decision (bool) and the reasons it was excluded, as one
    frame: for tests and small pools (the export itself streams, ``iter_selection``)."""
    import pyarrow as pa

    sel = decide(store, rules, recipe=recipe)
    with selection_reader(store, sel, by=by, all_rows=True) as reader:
        frame = reader.read_all().to_pandas(types_mapper=_nullable_types().get)
    frame["keep"] = frame["keep"].astype(bool)
    return frame, sel, store.score_names()


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


def write_atomic(path: Path, data: bytes | Callable) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename: a kill leaves either the old
    file or the new one, never a partial file at the final path. ``data``: the bytes, or a function that writes
    them to the open (binary) file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):   # left by a killed export (no process of that pid)
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            data(fh) if callable(data) else fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        checkpoint("export.before_rename")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_rows(reader: "pa.RecordBatchReader", fmt: str, fh, *, progress=None) -> int:
    """Write every batch of ``reader`` to the binary file ``fh`` as CSV (spreadsheet-safe cells), Parquet or a
    DataComp uid .npy (kept uids, sorted); returns the rows written. One batch in memory at a time (the .npy
    holds 16 bytes per kept uid, which it must sort)."""
    import pyarrow.parquet as pq

    rows, types = 0, _nullable_types()
    if fmt == "csv":
        fh.write(to_csv(reader.schema.empty_table().to_pandas(types_mapper=types.get)).encode("utf-8"))
        for batch in reader:
            fh.write(to_csv(batch.to_pandas(types_mapper=types.get), header=False).encode("utf-8"))
            rows += batch.num_rows
            progress and progress(batch.num_rows)
    elif fmt == "parquet":
        with pq.ParquetWriter(fh, reader.schema.remove_metadata()) as w:
            for batch in reader:
                w.write_batch(batch.replace_schema_metadata(None))
                rows += batch.num_rows
                progress and progress(batch.num_rows)
    elif fmt == "npy":
        pairs = []
        for batch in reader:
            pairs.append(_uid_pairs(batch.column("uid")))
            rows += batch.num_rows
            progress and progress(batch.num_rows)
        arr = np.concatenate(pairs) if pairs else np.empty(0, np.dtype("u8,u8"))
        arr.sort()
        np.save(fh, arr)
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    return rows


def _check_all_rows(fmt: str, all_rows: bool) -> None:
    if all_rows and fmt == "npy":
        raise ValueError("a DataComp .npy lists kept uids only; --all-rows needs CSV or Parquet")


def render(frame: pd.DataFrame, fmt: str, *, all_rows: bool = False) -> bytes:
    """The bytes of the kept rows of a ``selection_frame`` in one format (the same writer as the streamed
    export); ``all_rows``: every sample, with its ``keep`` decision (1/0) and the rules it failed
    (``excluded_by``), so inclusion rates can be computed from the file."""
    import pyarrow as pa

    _check_all_rows(fmt, all_rows)
    kept = (frame.assign(keep=frame["keep"].astype("int64")) if all_rows
            else frame[frame["keep"]].drop(columns=["keep", "excluded_by"]))
    table = pa.Table.from_pandas(kept, preserve_index=False)
    buf = io.BytesIO()
    write_rows(table.to_reader(max_chunksize=BATCH_ROWS), fmt, buf)
    return buf.getvalue()


def render_selection(store: Store, sel: Selection, fmt: str, *, by: Sequence[str] = (),
                     all_rows: bool = False) -> bytes:
    """The export file's bytes for a decision already made (the dashboard's download; `export` writes the
    same bytes to a file)."""
    _check_all_rows(fmt, all_rows)
    buf = io.BytesIO()
    with selection_reader(store, sel, by=by, all_rows=all_rows) as reader:
        write_rows(reader, fmt, buf)
    return buf.getvalue()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _progress(total: int, desc: str):
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=" rows", unit_scale=True, leave=False) as bar:
        yield bar


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
    with Store.reader(store_path, memory_limit=EXPORT_MEMORY) as st:
        if recipe is not None:
            recipe = Recipe.parse(rules, names=st.score_names())
            parsed = recipe.rules
        _check_all_rows(fmt, all_rows)
        sel = decide(st, parsed, recipe=recipe)
        if fmt == "npy":
            bad = st.non_hex_uid_rows()
            bad = bad[sel.keep[bad]]
            if len(bad):
                raise ValueError(f"{len(bad)} kept uid(s) are not 32 hex characters (e.g. {st.uids_at(bad[:1])[0]!r}); "
                                 "the DataComp .npy format needs DataComp uids")
        rows_out = int(len(sel.keep) if all_rows else sel.keep.sum())
        with _progress(rows_out, f"export {fmt}") as bar, \
                selection_reader(st, sel, by=by, all_rows=all_rows) as reader:
            write_atomic(Path(out), lambda fh: write_rows(reader, fmt, fh, progress=bar.update))
        cat = st.attribute_catalog()
        if recipe is not None:
            extra = {"recipe": str(recipe), "kept_after_step": sel.step_kept, "equivalent_rules": sel.as_rules()}
        man = manifest(st, parsed, sel, fmt, extra=extra)
        from audit.store import columns as pool_columns
        import pyarrow as pa

        man["uid_warnings"] = st.uid_problems(pool_columns.uids(st).filter(pa.array(sel.keep, pa.bool_())))
    man["all_rows"] = bool(all_rows)
    groups = {}
    for b in by:
        row = cat[cat["attribute"] == b]
        groups[b] = ({"method": str(row.iloc[0]["method"]), "imputed": bool(row.iloc[0]["imputed"]),
                      "random_weights": bool(row.iloc[0]["random_weights"])} if len(row)
                     else {"method": "sample column", "imputed": False})
    man["group_columns"] = groups
    man["file"] = {"name": Path(out).name, "bytes": Path(out).stat().st_size, "rows": rows_out,
                   "sha256": _sha256_file(Path(out))}
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
