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

from audit.killpoints import checkpoint
from audit.registry import PlugIn, Registry
from audit.store import Store, failed_run_guard, param_key

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

    def compute(self, ctx: AnnotatorContext) -> pd.DataFrame:
        raise NotImplementedError


ANNOTATORS: Registry[type[Annotator]] = Registry("annotator")


def run_annotator(name: str, store_path: str, *, params: dict | None = None, model: str | None = None,
                  seed: int = 0, force: bool = False, echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Compute and store one annotator's attributes; returns label counts per attribute."""
    cls = ANNOTATORS.get(name)
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
    counts = frame.groupby(["attribute", "label"]).size().rename("n").reset_index()
    for attr, sub in counts.groupby("attribute"):
        top = ", ".join(f"{r.label} {r.n}" for r in sub.sort_values("n", ascending=False).head(8).itertuples())
        echo(f"{attr}: {top}")
    return counts
