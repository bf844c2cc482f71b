"""The demo's analysis steps: each runs one analysis on the demo store with settings that fit its time budget.

STEPS lists them in the order the demo runs them; each is ``step(store_path, *, seed, echo)``.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from audit.analyses.balance.core import BalanceError, DEFAULT_BUDGET, DEMO_EPS_ASSOC, DEMO_EPS_REP, DEMO_ZS_PROMPTS, compare, result_summary, run_m4
from audit.analyses.balance.run import save_result, clip_filter_q, default_clip_score, default_model, load_inputs, metaclip_q
from audit.analyses.embedmap.layout import MapParams
from audit.analyses.embedmap.run import build_map
from audit.analyses.origin.run import OriginParams, run_origin


DEMO_MODEL = "datacomp_l14"
DEMO_PARAMS = MapParams(fit_sample=4000, n_epochs=200, knn="exact", transform_epochs=20)


def map_step(store: str, *, seed: int = 0, echo: Callable[[str], None] = print) -> dict | None:
    """The demo's map: datacomp_l14 image vectors, fitted on 4,000 rows (200 epochs), exact neighbours, the
    other rows placed with 20 epochs (the demo's time budget; the CLI defaults fit on up to 50,000 rows)."""
    from audit.store import Store

    with Store.reader(store) as rd:
        models = rd.models()["model"].tolist()
    if DEMO_MODEL not in models:
        echo(f"no {DEMO_MODEL} embeddings in this store; map skipped")
        return None
    return build_map(store, DEMO_MODEL, DEMO_PARAMS, seed=seed, echo=echo)


def origin_step(store: str, *, seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    """The demo's probe by source: every model, captions and images, 800 samples per source.

    Simulated sources carry per-source image style offsets (audit.simulate.SOURCES), so the image families
    should find them; the sample photos are embedded by a different (random-weight) model, so they are
    probed per model. Concepts are the simulator's own (its text encoder knows only those words).
    """
    from audit.demo.simulate import CONCEPTS

    params = OriginParams(by="source", max_per_source=800, max_images_per_source=300, concepts=tuple(CONCEPTS))
    t0 = time.perf_counter()
    result = run_origin(store, params, seed=seed, echo=echo)
    echo(f"origin probe stored ({time.perf_counter() - t0:.1f} s)")
    return result


# ---------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------
def demo_settings(store) -> dict | None:
    """The default balancing of the demo: caption gender (woman vs man), proxies caption age and zero-shot
    person concepts (when a model with a text encoder exists); None when the store lacks caption_gender."""
    if "caption_gender" not in store.attributes():
        return None
    proxies = ["caption_age"] if "caption_age" in store.attributes() else []
    model = default_model(store)
    if model is not None and model.startswith("datacomp_"):
        proxies.append("zs:" + "|".join(DEMO_ZS_PROMPTS))
    # The simulated pool has no built-in gender × concept association (AB ≈ 0.001, noise level), so the demo
    # uses tight tolerances to show what balancing moves; the CLI defaults are ε_R = ε_A = 0.01.
    return {"attribute": "caption_gender", "groups": ["woman", "man"], "proxies": proxies, "target": "uniform",
            "budget": DEFAULT_BUDGET, "eps_rep": DEMO_EPS_REP, "eps_assoc": DEMO_EPS_ASSOC, "utility": None,
            "model": model if any(p.startswith("zs:") for p in proxies) else None}


def balance_step(store: str, *, seed: int = 0, echo: Callable[[str], None] = print) -> None:
    """Default M4 balancing of the demo store, with MetaCLIP and CLIP-score filtering at the same budget;
    stored as scores m4_q / m4_keep and meta 'balance.m4' (the Balancing page's defaults)."""
    from audit.store import Store

    t0 = time.perf_counter()
    with Store.reader(store) as st:
        cfg = demo_settings(st)
        if cfg is None:
            echo("balance: no caption_gender attribute; skipped")
            return
        try:
            inputs = load_inputs(st, cfg["attribute"], cfg["proxies"], groups=cfg["groups"], target=cfg["target"],
                                 model=cfg["model"])
        except BalanceError as exc:
            echo(f"balance: skipped ({exc})")
            return
        res, keep = run_m4(inputs, budget=cfg["budget"], eps_rep=cfg["eps_rep"], eps_assoc=cfg["eps_assoc"],
                           seed=seed)
        methods = {"pool (no filter)": np.ones(len(res.q)), "M4": res.q}
        kept = {"pool (no filter)": len(res.q), "M4": int(keep.sum())}
        extra = {}
        score = default_clip_score(st)
        if score:
            q_clip, tau = clip_filter_q(st, score, cfg["budget"])
            methods[f"CLIP score top {cfg['budget']:.0%}"] = q_clip
            kept[f"CLIP score top {cfg['budget']:.0%}"] = int(q_clip.sum())
            extra["clip_score"] = score
            extra["clip_tau"] = tau
        try:
            q_mc, keep_mc, info = metaclip_q(st, budget=cfg["budget"], seed=seed)
            methods["MetaCLIP"] = q_mc
            kept["MetaCLIP"] = int(keep_mc.sum())
            extra["metaclip"] = info
        except Exception as exc:  # MetaCLIP is a comparison only; say why it is missing
            extra["metaclip_error"] = str(exc)
        table, _ = compare(inputs, methods, kept)
    summary = result_summary(inputs, res, keep, cfg["budget"], cfg["eps_rep"], cfg["eps_assoc"])
    summary["comparison"] = table.to_dict(orient="records")
    summary.update(extra)
    save_result(store, "m4", {**cfg, "seed": seed}, inputs.uids, res.q, keep, summary, description="M4 balancing (demo)")
    echo(f"balance: M4 on caption_gender (woman/man) at η={cfg['budget']:g}: {res.status}; "
         f"RB {res.rb_before:.4f} → {res.rb:.4f}, AB {res.ab_before:.4f} → {res.ab:.4f}; "
         f"kept {int(keep.sum()):,} of {len(res.q):,} ({time.perf_counter() - t0:.1f} s)")


def gold_step(store: str, *, seed: int = 0, echo: Callable[[str], None] = print) -> None:
    """A seeded gold sample of 1,000 rows from the simulator's truth (perceived gender; 'none' = no person ->
    unknown), imported as gold_caption_gender the way a user imports hand labels, then measured."""
    from pathlib import Path

    import pandas as pd

    from audit.measure.gold import accuracy, format_accuracy, gold_labels, gold_name, imputed_labels, import_gold
    from audit.store import Store

    root = Path(store).with_suffix("")
    sim = root.parent / (root.name + "_inputs") / "sim"
    truth = pd.read_parquet(sim / "truth.parquet", columns=["uid", "gender", "bad"])
    truth = truth[truth["bad"] == "none"]          # rows the ingest rejected are not samples
    gold_file = sim / "gold_gender.csv"
    truth[["uid", "gender"]].rename(columns={"gender": "label"}).to_csv(gold_file, index=False)
    with Store.reader(store) as st:
        if "caption_gender" not in st.attributes():
            echo("no caption_gender attribute: gold sample skipped")
            return
    echo(import_gold(store, gold_name("caption_gender"), str(gold_file), mapping={"none": "unknown"}, sample=1000,
                     seed=seed))
    with Store.reader(store) as st:
        gold = gold_labels(st, gold_name("caption_gender"))
        imputed = imputed_labels(st, "caption_gender", gold.index)
    for line in format_accuracy(accuracy(gold, imputed, attribute="caption_gender", method="caption lexicon")):
        echo(line)

STEPS: list[Callable] = [map_step, origin_step, balance_step, gold_step]
# Steps that need only what is ingested and embedded, not the scores or labels: the builder starts them in a
# second process after ingest, so on two cores they overlap the scores and annotators (the map's UMAP alone is
# ~25 s, half of it numba compiling).
EARLY_STEPS: tuple[str, ...] = ("map_step", "origin_step")


def run_captured(step_name: str, store: str, seed: int) -> list[str]:
    """Run one step by name and return what it printed (for a worker process; the builder echoes it)."""
    lines: list[str] = []
    step = {s.__name__: s for s in STEPS}[step_name]
    step(store, seed=seed, echo=lines.append)
    return lines
