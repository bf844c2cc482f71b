"""The score interface and its runner.

A score is a class with ``name``, ``version``, ``add_arguments(parser)`` and ``compute(ctx)``. ``compute``
returns {column name: values aligned with ctx.uids}; column names start with the score's name. The runner
(`run_score`) owns the I/O: it reads what the score needs, records the run, writes the values, and makes a
re-run with the same parameters a no-op. Score and decide are separate: thresholds live in selection.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

import numpy as np

from audit.killpoints import checkpoint
from audit.registry import PlugIn, Registry
from audit.store import Store, StoreError, failed_run_guard, slug
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
              seed: int = 0, force: bool = False, echo: Callable[[str], None] = print) -> list[str]:
    """Compute and store one score. Returns the stored score names."""
    cls = SCORES.get(name)
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
        uids = st.sample_uids()
    # compute without holding the write lock
    with failed_run_guard(store_path, run_id), Store.detached(store_path) as rd:
        ctx = ScoreContext(store=rd, uids=uids, model=model, params=full, rng=np.random.default_rng(seed), echo=echo)
        checkpoint("score.computing")
        scorer = cls()
        values = scorer.compute(ctx)
    if ctx.inputs:   # a score computed from a random-weight or simulated score carries that flag on
        with Store.reader(store_path) as rd:
            cat = rd.score_catalog().set_index("name")
        used = cat.loc[[n for n in dict.fromkeys(ctx.inputs) if n in cat.index]]
        random_weights = random_weights or bool(used["random_weights"].fillna(False).astype(bool).any())
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
        v = np.asarray(v, dtype=float)
        ok = v[~np.isnan(v)]
        summary = f"mean {ok.mean():.4f}, min {ok.min():.4f}, max {ok.max():.4f}" if len(ok) else "no values"
        echo(f"{out_name}: {len(ok)} of {len(v)} samples scored ({summary})"
             + (" [RANDOM-WEIGHT MODEL: not meaningful]" if random_weights else ""))
    return list(values)


# ---- appended (scores area): per-run descriptions -------------------------------------------------
def _description(scorer: Score, column: str) -> str:
    """A score instance may set ``run_description`` (str, or {column: str}) in compute(), e.g. to say
    which target set it used; otherwise the class description is stored."""
    desc = getattr(scorer, "run_description", None)
    if isinstance(desc, dict):
        desc = desc.get(column)
    return desc or type(scorer).description


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
