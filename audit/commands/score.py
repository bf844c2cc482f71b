"""`python -m audit score NAME`: compute one registered score (audit/scores) and store it."""
from __future__ import annotations


from audit import engine
from audit.cli import store_arg


def configure(p) -> None:
    from audit.scores import SCORES

    p.description = "Scores: " + ", ".join(SCORES.names())
    ss = p.add_subparsers(dest="score", required=True, metavar="SCORE")
    for cls in SCORES:
        q = ss.add_parser(cls.name, help=cls.description)
        store_arg(q)
        if cls.uses_model:
            q.add_argument("--model", help="embedding model key in the store (e.g. datacomp_l14)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--force", action="store_true", help="recompute even if done with these parameters")
        cls.add_arguments(q)
        engine.add_arguments(q)
        q.set_defaults(func=run, score_cls=cls)


def run(a) -> int:
    from audit.scores.base import run_score

    cls = a.score_cls
    run_score(cls.name, a.store, model=getattr(a, "model", None), params=cls.params_from_args(a), seed=a.seed,
              force=a.force, engine=engine.from_args(a))
    return 0
