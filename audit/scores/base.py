"""The score interface and its runner.

A score is a class with ``name``, ``version``, ``add_arguments(parser)`` and ``compute(ctx)``. ``compute``
returns {column name: values aligned with ctx.uids}; column names start with the score's name. The runner
(`run_score`) owns the I/O: it reads what the score needs, records the run, writes the values, and makes a
re-run with the same parameters a no-op. Score and decide are separate: thresholds live in selection.py.
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

import numpy as np

from audit.engine import LOCAL, Engine, echo_rejects, over_samples, plugin_rejects, require_local, stage
from audit.killpoints import checkpoint
from audit.registry import PlugIn, Registry
from audit.store import Store, StoreError, failed_run_guard, slug
from audit.store import parts
from audit.store.labels import samples_simulated


@dataclass
class ScoreContext:
    store: Store
    uids: list[str]                 # every sample, sorted; outputs align with this
    model: str | None
    params: dict
    rng: np.random.Generator
    echo: Callable[[str], None] = print
    _index: dict = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)   # stored scores this computation read (provenance)

    def score(self, name: str) -> np.ndarray:
        """A stored score for every sample (uid order); recorded, so the output inherits its provenance flags."""
        self.store.check_score(name)
        self.inputs.append(name)
        return self.store.score_frame([name])[name].to_numpy(dtype=float)

    def index(self) -> dict[str, int]:
        if not self._index:
            self._index.update({u: i for i, u in enumerate(self.uids)})
        return self._index

    def iter_vectors(self, columns=("img", "txt")) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield (row positions in ctx.uids, {column: float32 (n, d)}) chunk by chunk."""
        from audit.store.vectors import iter_vectors

        idx = self.index()
        for uids, cols in iter_vectors(self.store, self.model, columns=columns):
            pos = np.fromiter((idx.get(u, -1) for u in uids), dtype=np.int64, count=len(uids))
            if (pos < 0).any():   # samples ingested after this run started: not part of this run
                keep = pos >= 0
                pos, cols = pos[keep], {k: v[keep] for k, v in cols.items()}
            yield pos, cols

    def unit_images(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row positions, L2-normalised float32 image vectors) part by part; rows with NaN stay NaN."""
        from audit.store.vectors import l2_normalise

        for rows, cols in self.iter_vectors(("img",)):
            with np.errstate(invalid="ignore", divide="ignore"):
                yield rows, l2_normalise(cols["img"])

    def samples(self, columns: list[str]):
        return self.store.sample_frame(columns)

    @property
    def random_weights(self) -> bool:
        return bool(self.store.model_info(self.model)["random_weights"]) if self.model else False


class Score(PlugIn):
    description: ClassVar[str] = ""
    uses_model: ClassVar[bool] = True
    # Row-local scores name the sample columns they read and implement compute_rows; the runner then streams
    # them over the samples' parts (audit/store/streamed.py) instead of loading the pool.
    row_columns: ClassVar[tuple[str, ...]] = ()

    def compute_rows(self, frame, params: dict) -> dict[str, np.ndarray]:
        """{column: values} for these samples (a frame of uid + row_columns + row_scores), aligned with its rows."""
        raise NotImplementedError

    # Row-local scores that also need sums over the pool (MetaCLIP's entry counts) declare pool passes: before the
    # rows are scored, each pass maps every batch to a mergeable statistic (``+``: numpy arrays, Counters), and
    # ``pool_finish`` turns the sum into what later passes and compute_rows see as ``params["pooled"]``.
    def pool_passes(self, params: dict) -> int:
        return 0

    def pool_start(self, store: Store, params: dict, echo) -> dict:
        """Once, on the driver, before the first pass: the first ``params["pooled"]`` (e.g. a metadata list)."""
        return {}

    def pool_statistics(self, frame, params: dict):
        """One batch's statistic of the current pass (``params["pooled"]`` holds the earlier passes' results)."""
        raise NotImplementedError

    def pool_finish(self, total, params: dict, echo) -> dict:
        """On the driver after a pass: its merged statistic -> entries added to ``params["pooled"]``."""
        raise NotImplementedError

    def row_scores(self, store: Store, params: dict) -> dict[str, str]:
        """Stored scores a row-local score reads beside its sample columns: {column of compute_rows's frame: stored
        score name}, resolved once on the driver (NaN where a sample has no value); compute_rows and
        run_descriptions then see the mapping as ``params["row_scores"]``. The run inherits their random-weight flag."""
        return {}

    # Vector-local scores (a sample's value depends on its own stored vectors alone: clip, laion-nsfw, aesthetic)
    # name the vector columns they read; the runner streams them over the model's vector parts on either engine.
    vector_columns: ClassVar[tuple[str, ...]] = ()

    def prepare_vectors(self, store: Store, model: str, params: dict, echo) -> tuple[dict, dict[str, str]]:
        """Once per run, before any batch: (what every batch needs: small and picklable, e.g. the weights' path
        and the model's dimension; {output column: the run's description}). Raise here for a run that cannot
        work at all (a wrong dimension), so the run fails instead of rejecting every sample."""
        return {}, {}

    def compute_vectors(self, vectors: dict[str, np.ndarray], prepared: dict) -> dict[str, np.ndarray]:
        """{column: values} for these samples: ``vectors`` holds a float32 (n, d) matrix per vector_columns, and
        their uids (an Arrow string array) under ``uid``."""
        raise NotImplementedError

    # A score of several passes (image-based: the caption rule, k-means on a sample, each vector's cluster, the
    # combined rule) sets multi_pass and implements stream(), built from the engine's passes (engine.over_samples,
    # vector_pass); the runner registers what it staged. Its batch steps are compute_rows / compute_vectors.
    multi_pass: ClassVar[bool] = False

    def stream(self, store: Store, run_id: int, params: dict, model: str | None, engine: Engine | None,
               echo) -> tuple[dict, list, list, dict[str, str]]:
        """(staged parts per output column, batch infos, rejects, {column: description})."""
        raise NotImplementedError

    @classmethod
    def vector_block_rows(cls, params: dict) -> int | None:
        """None: any batch of samples is scored on its own. A number: the score draws from a whole block of
        about this many rows at once (negCLIPLoss's random batches), made of whole vector parts, the same on
        both engines (``streamed.blocks``)."""
        return None

    def run_descriptions(self, params: dict) -> dict[str, str] | None:
        """Per-output descriptions that depend on the run (None: the class description)."""
        return None

    @classmethod
    def output_names(cls, model: str | None, params: dict) -> list[str]:
        return [cls.name if model is None else f"{cls.name}_{slug(model)}"]

    @classmethod
    def complete_params(cls, params: dict) -> dict:
        """Fill in what the run must record however it was called (CLI, demo, a script): e.g. the weights file's
        sha256. Called before the run starts; the result is the run's parameters."""
        return params

    def compute(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        raise NotImplementedError


SCORES: Registry[type[Score]] = Registry("score")


def resolve_model(store: Store, model: str | None) -> str:
    """Accept the exact model key, or a unique prefix (``ViT-B-32`` for ``ViT-B-32:random``)."""
    models = store.models()["model"].tolist()
    if model is None:
        if len(models) == 1:
            return models[0]
        raise StoreError(f"this score needs --model; this store has: {', '.join(models) or 'no embeddings yet'}")
    if model in models:
        return model
    hits = [m for m in models if m.split(":")[0] == model]
    if len(hits) == 1:
        return hits[0]
    raise StoreError(f"no embeddings for model {model!r}; this store has: {', '.join(models) or 'none'}")


def run_score(name: str, store_path: str, *, model: str | None = None, params: dict | None = None,
              seed: int = 0, force: bool = False, echo: Callable[[str], None] = print,
              engine: Engine | None = None) -> list[str]:
    """Compute and store one score (row-local scores on ``engine``, default local). Returns the stored names."""
    cls = SCORES.get(name)
    if not (cls.row_columns or cls.vector_columns or cls.multi_pass):
        require_local(engine, f"score {name}")
    params = cls.complete_params(dict(params or {}))
    with Store.writer(store_path) as st:
        if cls.uses_model:
            model = resolve_model(st, model)
        random_weights = bool(st.model_info(model)["random_weights"]) if model else False
        full = {**params, "model": model, "seed": seed, "version": cls.version}
        from audit.store import param_key

        outputs = cls.output_names(model, params)
        done = st.find_done_run("score", name, param_key(full))
        if done and not force and all(o in st.score_names() for o in outputs):
            echo(f"score {name} already computed with these parameters (run {done}); nothing to do")
            return outputs
        run_id = st.start_run("score", name, params=full, version=cls.version, model=model,
                              random_weights=random_weights)
        streamed = bool(cls.row_columns or cls.vector_columns or cls.multi_pass) and parts.is_parts_table(st, "samples")
        if not streamed:
            require_local(engine, f"score {name} on a store of the older layout")
        uids = None if streamed else st.sample_uids()
    if streamed:
        run = _run_passes if cls.multi_pass else _run_vectors if cls.vector_columns else _run_streamed
        with stage(engine):
            return run(cls, store_path, run_id, full, model, random_weights, echo, engine)
    # compute without holding the write lock
    with failed_run_guard(store_path, run_id), Store.detached(store_path) as rd:
        ctx = ScoreContext(store=rd, uids=uids, model=model, params=full, rng=np.random.default_rng(seed), echo=echo)
        checkpoint("score.computing")
        scorer = cls()
        values = scorer.compute(ctx)
    if ctx.inputs:   # a score computed from a random-weight or simulated score carries that flag on
        with Store.reader(store_path) as rd:
            random_weights = random_weights or inputs_random_weights(rd, ctx.inputs)
    checkpoint("score.computed")
    with Store.writer(store_path) as st, st.transaction():   # every output column and the run's end, or nothing
        sim = samples_simulated(st, uids)   # the run's samples (others may have been ingested meanwhile)
        for out_name, v in values.items():
            scored = ~np.isnan(np.asarray(v, dtype=float))
            simulated_only = bool(scored.any() and sim[scored].all())  # every scored sample is simulated
            st.write_scores(out_name, uids, v, run_id=run_id, kind=name, model=model, random_weights=random_weights,
                            simulated=simulated_only, description=_description(scorer, out_name))
        checkpoint("score.written")
        n_missing = int(sum(np.isnan(np.asarray(v, dtype=float)).sum() for v in values.values()))
        st.end_run(run_id, rows_in=len(uids), rows_out=len(uids), note=f"{n_missing} missing values")
    from audit.store.columns import refresh

    refresh(store_path, scores=list(values), echo=echo)   # the pages' pool-order columns of these scores
    for out_name, v in values.items():
        _echo_summary(out_name, _value_stats(v), len(v), random_weights, echo)
    return list(values)


def inputs_random_weights(store: Store, names: list[str]) -> bool:
    """Whether any of these stored scores (a computation's inputs) came from a random-weight model."""
    cat = store.score_catalog().set_index("name")
    used = cat.loc[[n for n in dict.fromkeys(names) if n in cat.index]]
    return bool(used["random_weights"].fillna(False).astype(bool).any())


def _value_stats(v) -> dict:
    """count, sum, min, max of the finite values (mergeable across batches)."""
    v = np.asarray(v, dtype=float)
    ok = v[~np.isnan(v)]
    return {"n": int(len(ok)), "sum": float(ok.sum()), "min": float(ok.min()) if len(ok) else np.inf,
            "max": float(ok.max()) if len(ok) else -np.inf}


def _merged_stats(infos: list[dict]) -> dict[str, dict]:
    """Per output column, the batches' statistics merged: min of ``min``, max of ``max``, sums of the others."""
    stats: dict[str, dict] = {}
    for info in infos:
        for col, d in info.items():
            if col not in stats:
                stats[col] = dict(d)
                continue
            t = stats[col]
            for key, v in d.items():
                t[key] = min(t[key], v) if key == "min" else max(t[key], v) if key == "max" else t[key] + v
    return stats


def _echo_summary(out_name: str, stats: dict, n: int, random_weights: bool, echo) -> None:
    k = stats["n"]
    summary = (f"mean {stats['sum'] / k:.4f}, min {stats['min']:.4f}, max {stats['max']:.4f}" if k else "no values")
    echo(f"{out_name}: {k} of {n} samples scored ({summary})"
         + (" [RANDOM-WEIGHT MODEL: not meaningful]" if random_weights else ""))


# ---- row-local scores, streamed over the samples' parts ---------------------------------------------------------
def _score_batch(payload: tuple, frame) -> tuple[dict, dict]:
    """One batch of samples: a (uid, name, value) frame per output column; per column the value statistics and
    (scored, scored and simulated) counts, for the catalogue's simulated flag."""
    import pandas as pd

    name, params = payload
    values = SCORES.get(name)().compute_rows(frame.drop(columns=["simulated"]), params)
    sim = frame["simulated"].fillna(False).to_numpy(bool)
    out, info = {}, {}
    for col, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        scored = ~np.isnan(v)
        out[col] = pd.DataFrame({"uid": frame["uid"].to_numpy(), "name": col, "value": v})
        info[col] = {**_value_stats(v), "scored": int(scored.sum()), "simulated": int((scored & sim).sum())}
    checkpoint("score.batch")
    return out, info


def _pool_batch(payload: tuple, frame) -> tuple[dict, object]:
    """One batch's statistic of a pool pass (nothing staged)."""
    name, params = payload
    stat = SCORES.get(name)().pool_statistics(frame, params)
    checkpoint("score.pool_batch")
    return {}, stat


def _run_streamed(cls, store_path: str, run_id: int, params: dict, model: str | None, random_weights: bool,
                  echo, engine: Engine | None) -> list[str]:
    outputs = cls.output_names(model, params)
    scorer = cls()
    with failed_run_guard(store_path, run_id), Store.detached(store_path) as rd:
        inputs = scorer.row_scores(rd, params)
        if inputs:   # the batches see the resolved names; the run inherits the inputs' random-weight flag
            params = {**params, "row_scores": inputs}
            random_weights = random_weights or inputs_random_weights(rd, [rd.check_score(n) for n in inputs.values()])
        checkpoint("score.computing")
        passes = scorer.pool_passes(params)
        if passes:
            params = {**params, "pooled": scorer.pool_start(rd, params, echo)}
        for _ in range(passes):   # sums over the pool, a batch at a time, on the same engine
            stats = over_samples(engine, rd, _pool_batch, (cls.name, params), columns=list(cls.row_columns),
                                 table="scores", run_id=run_id, scores=inputs)[1]
            total = functools.reduce(operator.add, stats) if stats else None
            params = {**params, "pooled": {**params["pooled"], **scorer.pool_finish(total, params, echo)}}
        staged, infos, n, rejected = over_samples(engine, rd, _score_batch, (cls.name, params),
                                                  columns=[*cls.row_columns, "simulated"], table="scores",
                                                  run_id=run_id, scores=inputs)
    stats = _merged_stats(infos)
    names = [c for c in outputs if c in stats] + [c for c in stats if c not in outputs]
    simulated = {c: bool(stats[c]["scored"] and stats[c]["simulated"] == stats[c]["scored"]) for c in names}
    return _register(cls, store_path, run_id, names, staged, infos, rejected, n, model, random_weights,
                     scorer.run_descriptions(params) or {}, simulated, engine, echo)


# ---- vector-local scores, streamed over the model's vector parts -----------------------------------------------
def _vector_batch(payload: tuple, vectors: dict) -> tuple[dict, dict]:
    """One batch of vectors (``engine.over_vectors``): a (uid, name, value) table per output column and the value
    statistics."""
    import pyarrow as pa

    name, prepared = payload
    values = SCORES.get(name)().compute_vectors(vectors, prepared)
    out, info = {}, {}
    for col, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        out[col] = pa.table({"uid": vectors["uid"], "name": pa.array([col] * len(v), pa.string()),
                             "value": pa.array(v)})
        info[col] = _value_stats(v)
    checkpoint("score.batch")
    return out, info


def vector_pass(name: str, rd: Store, model: str, prepared: dict, outputs: list[str], *, run_id: int,
                engine: Engine | None, block_rows: int | None = None) -> tuple[dict, list, list]:
    """Score ``name``'s compute_vectors over the model's vector parts a batch at a time (bounded memory on either
    engine); every sample without a vector gets a NaN row in each of ``outputs`` (as the in-memory path wrote; a
    rejected sample has no row, as for the row-local scores). -> (staged parts per column, infos, rejects)."""
    from audit.engine import over_vectors

    staged, infos, _, rejected, files = over_vectors(engine, rd, model, _vector_batch, (name, prepared),
                                                     columns=SCORES.get(name).vector_columns, table="scores",
                                                     run_id=run_id, block_rows=block_rows)
    stage_missing_vectors(rd, files, outputs, staged, run_id=run_id)
    return staged, infos, rejected


def stage_missing_vectors(rd: Store, files: list[str], outputs: list[str], staged: dict, *, run_id: int) -> None:
    """A NaN row in each of ``outputs`` for every sample without a vector in ``files`` (the model's vector parts a
    pass read), staged beside ``staged``'s parts."""
    import pyarrow as pa

    from audit.store.streamed import BATCH_ROWS
    from audit.store.vectors import samples_without_vectors

    root = rd.parts_dir()
    for uids in samples_without_vectors(rd, files, BATCH_ROWS):
        for col in outputs:
            nan = pa.table({"uid": uids, "name": pa.array([col] * len(uids), pa.string()),
                            "value": pa.array(np.full(len(uids), np.nan))})
            staged.setdefault(col, []).append(parts.stage_part(root, "scores", col, nan, run_id=run_id))


def _run_vectors(cls, store_path: str, run_id: int, params: dict, model: str, random_weights: bool,
                 echo, engine: Engine | None) -> list[str]:
    """A vector-local score on ``engine`` (``vector_pass``), registered in one transaction."""
    outputs = cls.output_names(model, params)
    with failed_run_guard(store_path, run_id), Store.detached(store_path, memory_limit="1GB") as rd:
        scorer = cls()
        prepared, desc = scorer.prepare_vectors(rd, model, params, echo)
        n_samples = int(rd.count("samples"))
        checkpoint("score.computing")
        staged, infos, rejected = vector_pass(cls.name, rd, model, prepared, outputs, run_id=run_id, engine=engine,
                                              block_rows=cls.vector_block_rows(params))
        simulated = _simulated(rd, staged, outputs)
    return _register(cls, store_path, run_id, outputs, staged, infos, rejected, n_samples, model, random_weights,
                     desc, simulated, engine, echo)


def _run_passes(cls, store_path: str, run_id: int, params: dict, model: str, random_weights: bool,
                echo, engine: Engine | None) -> list[str]:
    """A multi-pass score (``Score.stream``: e.g. image-based's caption rule, k-means, assignment), registered in
    one transaction."""
    outputs = cls.output_names(model, params)
    with failed_run_guard(store_path, run_id), Store.detached(store_path, memory_limit="1GB") as rd:
        n_samples = int(rd.count("samples"))
        checkpoint("score.computing")
        staged, infos, rejected, desc = cls().stream(rd, run_id, params, model, engine, echo)
        simulated = _simulated(rd, staged, outputs)
    return _register(cls, store_path, run_id, outputs, staged, infos, rejected, n_samples, model, random_weights,
                     desc, simulated, engine, echo)


def _simulated(rd: Store, staged: dict, outputs: list[str]) -> dict[str, bool]:
    from audit.store.vectors import all_scored_simulated

    return {col: all_scored_simulated(rd, [rd.parts_dir() / f for f, _ in staged.get(col, [])]) for col in outputs}


def _register(cls, store_path: str, run_id: int, outputs: list[str], staged: dict, infos: list, rejected: list,
              n_samples: int, model: str, random_weights: bool, desc: dict, simulated: dict, engine: Engine | None,
              echo) -> list[str]:
    """Every output column's staged parts, the rejects and the run's end, in one transaction; then the summary."""
    stats = _merged_stats(infos)
    checkpoint("score.computed")
    with Store.writer(store_path) as st, st.transaction():   # every output column and the run's end, or nothing
        for col in outputs:
            st.register_scores(col, staged.get(col, []), run_id=run_id, kind=cls.name, model=model,
                               random_weights=random_weights, simulated=simulated[col],
                               description=desc.get(col) or cls.description)
        st.replace_stage_rejects("score", f"{cls.name}: ", plugin_rejects("score", cls.name, rejected, run_id))
        checkpoint("score.written")
        missing = sum(n_samples - stats.get(c, {"n": 0})["n"] for c in outputs)
        st.end_run(run_id, rows_in=n_samples, rows_out=n_samples - len(rejected), rows_rejected=len(rejected),
                   note=f"{missing} missing values; engine {(engine or LOCAL).describe()}")
    from audit.store.columns import refresh

    refresh(store_path, scores=outputs, echo=echo)
    echo_rejects(cls.name, rejected, echo)
    for col in outputs:
        _echo_summary(col, stats.get(col, _value_stats([])), n_samples, random_weights, echo)
    return outputs


# ---- appended (scores area): per-run descriptions -------------------------------------------------
def _description(scorer: Score, column: str) -> str:
    """A score instance may set ``run_description`` (str, or {column: str}) in compute(), e.g. to say
    which target set it used; otherwise the class description is stored."""
    desc = getattr(scorer, "run_description", None)
    if isinstance(desc, dict):
        desc = desc.get(column)
    return desc or type(scorer).description


def keyed_uniforms(uids, rows: np.ndarray, keys: np.ndarray, seed: int) -> np.ndarray:
    """A uniform in [0, 1) for each pair (``uids[rows[i]]``, ``keys[i]``), a function of (seed, uid, key) alone: the
    same for a sample whatever batch, worker or engine draws it. SipHash of the uid (pandas' hash_array, keyed by
    the seed), mixed with the integer key by splitmix64, top 53 bits."""
    import pandas as pd

    key = f"{int(seed) & (2**64 - 1):016x}"
    h = pd.util.hash_array(np.asarray(uids, dtype=object), hash_key=key, categorize=False)
    with np.errstate(over="ignore"):
        x = h[rows] ^ (np.asarray(keys).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def read_string_list(path: str, what: str, *, error: type[Exception] = ValueError) -> list[str]:
    """Strings from a file: a JSON list of strings, or one entry per line (lines as written)."""
    import json
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(e, str) for e in items):
            raise error(f"{path}: a JSON {what} must be a list of strings")
        return items
    return text.splitlines()
