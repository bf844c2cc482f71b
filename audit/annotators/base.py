"""The annotator interface and its runner.

An annotator imputes labels: ``compute(ctx)`` returns a long DataFrame (uid, attribute, label, confidence,
method) with one row per sample and attribute; samples it cannot label get the explicit label ``unknown``.
Every label is an estimate (perceived / imputed), never ground truth; the method travels with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import pandas as pd

from audit.engine import LOCAL, Engine, echo_rejects, over_samples, plugin_rejects, require_local, stage
from audit.killpoints import checkpoint
from audit.registry import PlugIn, Registry
from audit.store import Store, failed_run_guard, param_key, parts
from audit.store.streamed import merge

UNKNOWN = "unknown"
MULTIPLE = "multiple"


@dataclass
class AnnotatorContext:
    store: Store
    params: dict
    rng: np.random.Generator
    model: str | None = None
    echo: Callable[[str], None] = print

    def samples(self, columns: list[str]) -> pd.DataFrame:
        return self.store.sample_frame(columns)


class Annotator(PlugIn):
    method: ClassVar[str] = ""
    attributes: ClassVar[dict[str, str]] = {}   # attribute -> description
    imputed: ClassVar[bool] = True

    # Row-local annotators (a sample's labels depend on its own columns alone) name the sample columns they read
    # and implement compute_rows: the runner then streams the pool a part at a time, on every core, and holds one
    # batch of rows per process instead of the whole pool.
    row_columns: ClassVar[tuple[str, ...]] = ()

    def compute(self, ctx: AnnotatorContext) -> pd.DataFrame:
        if self.row_columns:
            return self.compute_rows(ctx.samples(list(self.row_columns)), ctx.params)
        raise NotImplementedError

    def compute_rows(self, frame: pd.DataFrame, params: dict) -> pd.DataFrame:
        """The long frame (uid, attribute, label, confidence, method) of these samples (uid + row_columns +
        row_scores)."""
        raise NotImplementedError

    def row_scores(self, store: Store, params: dict) -> dict[str, str]:
        """Stored scores a row-local annotator reads beside its sample columns: {column of compute_rows's frame:
        stored score name}, resolved once on the driver (NaN where a sample has none); compute_rows sees the mapping
        as ``params["row_scores"]``."""
        return {}

    # Vector-local annotators (a sample's labels depend on its own stored vectors alone: zeroshot) name the vector
    # columns they read; the runner streams the model's vector parts on either engine (``engine.over_vectors``).
    vector_columns: ClassVar[tuple[str, ...]] = ()

    def prepare_vectors(self, store: Store, model: str | None, params: dict, echo) -> tuple[dict, dict]:
        """Once per run, before any batch: (what every batch needs, small and picklable, e.g. the prompts' text
        embeddings; {"method": the catalogue's method string, "random_weights": whether to flag every attribute}).
        Raise here for a run that cannot work at all."""
        return {}, {}

    def compute_vectors(self, vectors: dict, prepared: dict) -> pd.DataFrame:
        """The long frame of these samples: ``vectors`` holds a float32 (n, d) matrix per vector_columns and their
        uids (an Arrow string array) under ``uid``."""
        raise NotImplementedError

    def without_vectors(self, uids, prepared: dict) -> pd.DataFrame:
        """The long frame of samples that have no stored vector (``uid``: an Arrow string array): ``unknown``."""
        raise NotImplementedError


ANNOTATORS: Registry[type[Annotator]] = Registry("annotator")


def run_annotator(name: str, store_path: str, *, params: dict | None = None, model: str | None = None,
                  seed: int = 0, force: bool = False, echo: Callable[[str], None] = print,
                  engine: Engine | None = None) -> pd.DataFrame:
    """Compute and store one annotator's attributes (row-local ones on ``engine``, default local); returns label
    counts per attribute."""
    cls = ANNOTATORS.get(name)
    if not (cls.row_columns or cls.vector_columns):
        require_local(engine, f"annotator {name}")
    full = {**(params or {}), "model": model, "seed": seed, "version": cls.version}
    with Store.writer(store_path) as st:
        done = st.find_done_run("annotate", name, param_key(full))
        have = set(st.attributes())
        if done and not force and set(cls.attributes) <= have:
            echo(f"annotator {name} already ran with these parameters (run {done}); nothing to do")
            return pd.DataFrame()
        random_weights = bool(st.model_info(model)["random_weights"]) if model else False
        run_id = st.start_run("annotate", name, params=full, version=cls.version, model=model,
                              random_weights=random_weights)
    if cls.row_columns or cls.vector_columns:
        with Store.detached(store_path) as rd:
            streamed = parts.is_parts_table(rd, "samples")
        if streamed:
            with stage(engine):
                run = _run_streamed if cls.row_columns else _run_vectors
                return run(cls, store_path, run_id, full, model, random_weights, echo, engine)
    require_local(engine, f"annotator {name} on a store of the older layout")
    with failed_run_guard(store_path, run_id), Store.detached(store_path) as rd:
        ctx = AnnotatorContext(store=rd, params=full, rng=np.random.default_rng(seed), model=model, echo=echo)
        frame = cls().compute(ctx)
        n_samples = rd.count("samples")
    # An annotator may flag results itself (e.g. a simulated text encoder): frame.attrs["random_weights"] is a
    # bool or the attribute names to flag; frame.attrs["method"] overrides the catalogue's method string.
    flags = frame.attrs.get("random_weights", False)
    to_flag = set(frame["attribute"].unique()) if flags is True else set(flags or ())
    flagged = frame["attribute"].isin(to_flag).to_numpy()
    checkpoint("annotate.computed")
    with Store.writer(store_path) as st, st.transaction():   # every attribute and the run's end, or nothing
        for part, rw in ((frame[~flagged], random_weights), (frame[flagged], True)):
            if len(part):
                st.write_annotations(part, run_id=run_id, method=frame.attrs.get("method", cls.method),
                                     descriptions=cls.attributes, imputed=cls.imputed, random_weights=rw)
        checkpoint("annotate.written")
        st.end_run(run_id, rows_in=n_samples, rows_out=len(frame))
    from audit.store.columns import refresh

    refresh(store_path, groups=sorted(frame["attribute"].unique()), echo=echo)   # the pages' pool-order columns
    counts = frame.groupby(["attribute", "label"]).size().rename("n").reset_index()
    _echo_counts(counts, echo)
    return counts


def _echo_counts(counts: pd.DataFrame, echo) -> None:
    for attr, sub in counts.groupby("attribute"):
        top = ", ".join(f"{r.label} {r.n}" for r in sub.sort_values("n", ascending=False).head(8).itertuples())
        echo(f"{attr}: {top}")


# ---- row-local annotators, streamed; vector-local ones over the model's vector parts ----------------------------
def _by_attribute(out: pd.DataFrame) -> tuple[dict, tuple]:
    """A batch's long frame: its part per attribute, and (label counts, frame attrs)."""
    counts = {(a, lab): int(k) for (a, lab), k in out.groupby(["attribute", "label"]).size().items()}
    return {a: sub for a, sub in out.groupby("attribute", sort=True)}, (counts, dict(out.attrs))


def _annotate_batch(payload: tuple, frame: pd.DataFrame) -> tuple[dict, tuple]:
    """One batch of samples (uid + row_columns)."""
    name, params = payload
    out = ANNOTATORS.get(name)().compute_rows(frame, params)
    checkpoint("annotate.batch")
    return _by_attribute(out)


def _annotate_vectors(payload: tuple, vectors: dict) -> tuple[dict, tuple]:
    """One batch of vectors (``engine.over_vectors``)."""
    name, prepared = payload
    out = ANNOTATORS.get(name)().compute_vectors(vectors, prepared)
    checkpoint("annotate.batch")
    return _by_attribute(out)


def _run_streamed(cls, store_path: str, run_id: int, params: dict, model: str | None, random_weights: bool, echo,
                  engine: Engine | None) -> pd.DataFrame:
    """A row-local annotator on ``engine``. One that declares ``vector_columns`` too (copyright: its visual part)
    first runs its vector pass when given a model; the labels that pass staged join the samples as columns (named
    by attribute), and ``params["vector_pass"]`` holds the pass's meta, so the row pass can combine them."""
    with failed_run_guard(store_path, run_id):
        with Store.detached(store_path) as rd:
            found, infos, rejected, meta = {}, [], [], {}
            if cls.vector_columns and model:
                found, infos, rejected, meta = _vector_pass(cls, rd, model, params, run_id, engine, echo)
                params = {**params, "vector_pass": meta}
            inputs = {a: rd.check_score(n) for a, n in cls().row_scores(rd, params).items()}
            if inputs:
                params = {**params, "row_scores": inputs}
            labels = {a: ([str(rd.parts_dir() / f) for f, _ in v], "label") for a, v in found.items()}
            found_r, infos_r, n_samples, rejected_r = over_samples(engine, rd, _annotate_batch, (cls.name, params),
                                                                   columns=cls.row_columns, table="annotations",
                                                                   run_id=run_id, scores=inputs, staged=labels)
    found, infos, _, rejected = merge([(found, infos, 0, rejected), (found_r, infos_r, n_samples, rejected_r)])
    return _register(cls, store_path, run_id, found, infos, n_samples, rejected, random_weights, meta, echo, engine)


def _vector_pass(cls, rd: Store, model: str, params: dict, run_id: int, engine: Engine | None, echo):
    """The model's vector parts a batch at a time; every sample without a vector gets the annotator's
    ``without_vectors`` rows (``unknown``), so each of these attributes has a row per sample. Returns (staged parts
    per attribute, batch infos, rejects, the annotator's meta)."""
    from audit.engine import over_vectors
    from audit.store.streamed import BATCH_ROWS
    from audit.store.vectors import samples_without_vectors

    annotator = cls()
    prepared, meta = annotator.prepare_vectors(rd, model, params, echo)
    checkpoint("annotate.computing")
    found, infos, _, rejected, files = over_vectors(engine, rd, model, _annotate_vectors, (cls.name, prepared),
                                                    columns=cls.vector_columns, table="annotations", run_id=run_id)
    for uids in samples_without_vectors(rd, files, BATCH_ROWS):
        groups, info = _by_attribute(annotator.without_vectors(uids.to_numpy(zero_copy_only=False), prepared))
        for a, sub in groups.items():
            found.setdefault(a, []).append(parts.stage_part(rd.parts_dir(), "annotations", a, sub, run_id=run_id))
        infos.append(info)
    return found, infos, rejected, meta


def _run_vectors(cls, store_path: str, run_id: int, params: dict, model: str | None, random_weights: bool, echo,
                 engine: Engine | None) -> pd.DataFrame:
    """A vector-local annotator on ``engine`` (``_vector_pass``), registered in one transaction."""
    with failed_run_guard(store_path, run_id):
        with Store.detached(store_path, memory_limit="1GB") as rd:
            n_samples = int(rd.count("samples"))
            found, infos, rejected, meta = _vector_pass(cls, rd, model, params, run_id, engine, echo)
    return _register(cls, store_path, run_id, found, infos, n_samples, rejected, random_weights, meta, echo, engine)


def _register(cls, store_path: str, run_id: int, found: dict, infos: list, n_samples: int, rejected: list,
              random_weights: bool, meta: dict, echo, engine: Engine | None) -> pd.DataFrame:
    """Every staged attribute and the run's end in one transaction; returns the label counts. ``meta``: the
    catalogue's ``method`` and the attributes to flag as not meaningful (``random_weights``: True for all, or
    their names), else what the batches' frames said in their attrs."""
    staged: dict[str, list[tuple[str, int]]] = {a: [] for a in cls.attributes}
    for k, v in found.items():
        staged.setdefault(k, []).extend(v)
    counts: dict[tuple[str, str], int] = {}
    attrs = dict(meta)
    for c, a in infos:
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + v
        attrs = attrs or a
    flags = attrs.get("random_weights", False)
    flagged = set(staged) if flags is True else set(flags or ())
    checkpoint("annotate.computed")
    with Store.writer(store_path) as st, st.transaction():   # every attribute and the run's end, or nothing
        for group, rw in (({a: v for a, v in staged.items() if a not in flagged}, random_weights),
                          ({a: v for a, v in staged.items() if a in flagged}, True)):
            if group:
                st.register_annotations(group, run_id=run_id, method=attrs.get("method", cls.method),
                                        descriptions=cls.attributes, imputed=cls.imputed, random_weights=rw)
        st.replace_stage_rejects("annotate", f"{cls.name}: ", plugin_rejects("annotate", cls.name, rejected, run_id))
        checkpoint("annotate.written")
        st.end_run(run_id, rows_in=n_samples, rows_out=sum(counts.values()), rows_rejected=len(rejected),
                   note=f"engine {(engine or LOCAL).describe()}")
    from audit.store.columns import refresh

    refresh(store_path, groups=sorted(staged), echo=echo)   # the pages' pool-order columns
    echo_rejects(cls.name, rejected, echo)
    frame = pd.DataFrame([(a, lab, k) for (a, lab), k in sorted(counts.items())], columns=["attribute", "label", "n"])
    _echo_counts(frame, echo)
    return frame
