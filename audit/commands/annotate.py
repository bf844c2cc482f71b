"""`python -m audit annotate NAME`: run one registered annotator (audit/annotators)."""
from __future__ import annotations


from audit import engine
from audit.cli import store_arg


def configure(p) -> None:
    from audit.annotators import ANNOTATORS

    ss = p.add_subparsers(dest="annotator", required=True, metavar="NAME")
    for cls in ANNOTATORS:
        q = ss.add_parser(cls.name, help=cls.method)
        store_arg(q)
        q.add_argument("--model", help="embedding model key, for annotators that use embeddings")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--force", action="store_true")
        cls.add_arguments(q)
        engine.add_arguments(q)
        q.set_defaults(func=run, ann_cls=cls)


def run(a) -> int:
    from audit.annotators.base import run_annotator

    cls = a.ann_cls
    run_annotator(cls.name, a.store, params=cls.params_from_args(a), model=a.model, seed=a.seed, force=a.force,
                  engine=engine.from_args(a))
    return 0
