"""`python -m audit origin`: the dataset-origin probe (audit/analyses/origin).
"""
from __future__ import annotations

import argparse


from audit.analyses.origin.probe import HOLDOUT_MIN_N, MIN_PER_CLASS, NOTE
from audit.analyses.origin.run import ALL_FAMILIES, OriginParams, run_origin
from audit.cli import store_arg


# ---- CLI and demo ---------------------------------------------------------------------------------------
def configure(p) -> None:
    p.description = ("Predict each sample's source (or --by column) from one feature family at a time, with a "
                    "shuffled-label control. " + NOTE)
    store_arg(p)
    p.add_argument("--by", default="source", help="class column: source (default), domain, tld or an attribute")
    p.add_argument("--out", help="also write the result as JSON to this file")
    p.add_argument("--models", help="comma-separated embedding models (default: every stored model)")
    p.add_argument("--families", help="comma-separated families (default: all): " + ", ".join(ALL_FAMILIES))
    p.add_argument("--max-per-source", type=int, default=5000,
                   help="random samples per class for embedding and caption families (default: %(default)s)")
    p.add_argument("--max-images-per-source", type=int, default=1000,
                   help="images per class decoded for the transformation features (default: %(default)s)")
    p.add_argument("--concepts", help="comma-separated zero-shot concepts (default: 30 everyday concepts)")
    p.add_argument("--test-size", type=float, default=0.25, help="hold-out share (default: %(default)s)")
    p.add_argument("--folds", type=int, default=5, help=f"k for k-fold below {HOLDOUT_MIN_N} samples")
    p.add_argument("--C", type=float, default=0.1,
                   help="inverse L2 regularisation strength on standardised features (default: %(default)s)")
    p.add_argument("--no-control", action="store_true", help="skip the shuffled-label control")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="recompute even if done with these parameters")
    p.set_defaults(func=_run_cli)


def _split(s: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in s.split(",") if x.strip()) if s else None


def params_from_args(a: argparse.Namespace) -> OriginParams:
    fams = _split(a.families)
    if fams:
        bad = [f for f in fams if f not in ALL_FAMILIES]
        if bad:
            raise ValueError(f"unknown feature families: {', '.join(bad)}; known: {', '.join(ALL_FAMILIES)}")
    if not 0.05 <= a.test_size <= 0.5:
        raise ValueError(f"--test-size must be in [0.05, 0.5], got {a.test_size}")
    if a.max_per_source < MIN_PER_CLASS or a.max_images_per_source < 1:
        raise ValueError(f"--max-per-source must be at least {MIN_PER_CLASS}")
    return OriginParams(by=a.by, models=_split(a.models), families=fams, max_per_source=a.max_per_source,
                        max_images_per_source=a.max_images_per_source, concepts=_split(a.concepts),
                        test_size=a.test_size, folds=a.folds, C=a.C, control=not a.no_control)


def _run_cli(a: argparse.Namespace) -> int:
    from audit.store import Store, StoreError

    params = params_from_args(a)
    with Store.reader(a.store) as rd:  # clear messages before any work
        if params.models:
            known = rd.models()["model"].tolist()
            for m in params.models:
                if m not in known:
                    raise StoreError(f"no embeddings for model {m!r}; this store has: {', '.join(known) or 'none'}")
    result = run_origin(a.store, params, seed=a.seed, force=a.force, out=a.out)
    if result.get("status") != "ok":
        print(f"error: {result.get('message')}")
        return 1
    print(NOTE)
    return 0
