"""Resume for the streamed stages: what each finished slice staged, kept so that a rerun of a killed stage computes
only the slices it had not finished.

A stage's per-slice work (``streamed.run_slice``, on either engine) stages whole part files that no view names
until the stage registers them all in one transaction. A stage killed before that leaves them as orphans. The
journal makes them reusable: after a slice is done, the worker that computed it writes one small entry (the
slice's ``Staged``: its staged files and row counts, batch infos and rejects) under

    <store>.parts/_journal/<stage key>/<slice key>.pkl

atomically (written to a temporary name, then renamed). The stage key is a digest of everything the result
depends on: the project's code (every ``audit/**.py`` file's size and modification time), the batch function, its
payload (the plug-in's name, parameters and prepared statistics), the columns read, the output table and the batch
shape; the slice key names the input (its part file and row groups; part files are immutable and never reused
under the same name). A rerun with the same key and slice takes the entry instead of computing the slice, if
every file it names still exists (the orphan collector removes staged files an hour after they were written; a
reused file's modification time is renewed so that it is not collected before the rerun registers it).

Anything that cannot be digested (a payload that does not pickle) gets no journal: the stage then computes every
slice, as before. The stage's folder is removed once every slice is done, before the stage registers the parts:
a stage killed during its registration computes again from the start. The joined-samples file of
``streamed.joined_samples`` (laion, nsfw, embed's work list, image-based's last pass) is named by its inputs and
kept when the stage is killed, so its rerun reads the same file and resumes too (on a store of the older layout
it gets a new name each time, and those stages recompute in full after a kill).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np

FOLDER = "_journal"
_PLAIN = (type(None), bool, int, float, str, bytes)
_CODE: str | None = None


def _code_digest() -> str:
    """The project's code identity: any edit of a module invalidates every journal entry."""
    global _CODE
    if _CODE is None:
        pkg = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for p in sorted(pkg.rglob("*.py")):
            st = p.stat()
            h.update(f"{p.relative_to(pkg)}:{st.st_size}:{st.st_mtime_ns};".encode())
        _CODE = h.hexdigest()
    return _CODE


def _feed(h, obj) -> None:
    """A digest of ``obj`` that does not depend on the process: sets in sorted order, arrays by their bytes."""
    if isinstance(obj, _PLAIN):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, np.ndarray):
        h.update(f"nd:{obj.dtype.str}:{obj.shape};".encode())
        h.update(np.ascontiguousarray(obj).tobytes() if obj.dtype != object else pickle.dumps(obj.tolist()))
    elif isinstance(obj, np.generic):
        _feed(h, obj.item())
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}[{len(obj)}];".encode())
        if all(type(v) in _PLAIN for v in obj):   # e.g. a vocabulary of 500k entries: one pickle, not a walk
            h.update(pickle.dumps(obj, protocol=4))
            return
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, dict):
        h.update(f"dict[{len(obj)}];".encode())
        if all(type(k) is str for k in obj) and all(type(v) in _PLAIN for v in obj.values()):
            h.update(pickle.dumps(sorted(obj.items()), protocol=4))
            return
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (set, frozenset)):
        h.update(f"set[{len(obj)}];".encode())
        for v in sorted(obj, key=repr):
            _feed(h, v)
    elif callable(obj) and hasattr(obj, "__qualname__"):
        h.update(f"fn:{getattr(obj, '__module__', '')}.{obj.__qualname__};".encode())
    else:
        h.update(pickle.dumps(obj, protocol=4))   # anything else by its pickle (raises if it has none)


def digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        _feed(h, p)
    return h.hexdigest()[:24]


class Journal:
    """The entries of one stage key under a parts folder ``root``."""

    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def open(cls, root, fn, payload, **shape) -> "Journal | None":
        """The journal of this computation, or None where its inputs cannot be digested."""
        try:
            key = digest(_code_digest(), fn, payload, shape)
        except Exception:   # noqa: BLE001 (an undigestable payload: no resume, never a failed stage)
            return None
        return cls(Path(root) / FOLDER / key)

    def entry(self, piece: tuple) -> str:
        return str(self.folder / f"{digest(piece)}.pkl")

    def done(self, entry: str, root) -> tuple | None:
        """The ``Staged`` a finished slice recorded in ``entry``, if every file it staged is still there (renewed),
        else None."""
        try:
            staged = pickle.loads(Path(entry).read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            return None
        files = [Path(root) / rel for v in staged[0].values() for rel, _ in v]
        if not all(f.is_file() for f in files):
            return None
        for f in files:
            with contextlib.suppress(OSError):
                os.utime(f)
        return staged

    def split(self, pieces: list, root) -> tuple[list, list[tuple[tuple, str]]]:
        """(the Staged of the pieces already done, [(piece, its entry path)] still to compute)."""
        done, todo = [], []
        for piece in pieces:
            entry = self.entry(piece)
            got = self.done(entry, root)
            if got is None:
                todo.append((piece, entry))
            else:
                done.append(got)
        return done, todo

    def close(self) -> None:
        """Every slice is done: the entries are not needed any more."""
        shutil.rmtree(self.folder, ignore_errors=True)


def record(entry: str | None, staged: tuple) -> None:
    """Write one slice's entry atomically (called by the worker that computed it)."""
    if entry is None:
        return
    path = Path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    tmp.write_bytes(pickle.dumps(staged, protocol=4))
    os.replace(tmp, path)
