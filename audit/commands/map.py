"""`python -m audit map`: UMAP map of one model's embeddings (audit/analyses/embedmap).
"""
from __future__ import annotations

import argparse

from audit.analyses.embedmap.layout import FIT_MAX, MapParams
from audit.analyses.embedmap.run import build_map
from audit.cli import store_arg


# ---- CLI and demo ----------------------------------------------------------------------------------------
def configure(p) -> None:
    p.description = ("Fit UMAP (umap-learn) on a sample (at most 50,000 rows) of one model's "
                                          "embeddings, place every other row on the fitted map in chunks (umap's "
                                          "transform steps), store x/y per row.")
    store_arg(p)
    p.add_argument("--model", help="embedding model key (default: the only one)")
    p.add_argument("--column", choices=["img", "txt"], default="img", help="image or text vectors (default: img)")
    p.add_argument("--fit-sample", type=int, default=FIT_MAX, help="rows UMAP is fitted on (default/max: %(default)s)")
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--min-dist", type=float, default=0.1)
    p.add_argument("--n-epochs", type=int, default=None, help="UMAP epochs (default: umap-learn's)")
    p.add_argument("--pca", type=int, default=50, help="PCA components before UMAP, 0 for none (default: 50)")
    p.add_argument("--transform-epochs", type=int, default=None,
                   help="epochs when placing new rows (default: umap's rule, 30 for chunks over 10,000 rows)")
    p.add_argument("--chunk", type=int, default=20_000, help="rows placed per transform call (default: %(default)s)")
    p.add_argument("--knn", choices=["auto", "exact", "nndescent"], default="auto",
                   help="neighbour search: exact (brute force) or nndescent (approximate); auto picks by size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="recompute even if done with these parameters")
    p.set_defaults(func=_run_cli)


def _run_cli(a: argparse.Namespace) -> int:
    params = MapParams(column=a.column, fit_sample=a.fit_sample, n_neighbors=a.n_neighbors, min_dist=a.min_dist,
                       n_epochs=a.n_epochs, pca=a.pca, chunk=a.chunk, knn=a.knn,
                       transform_epochs=a.transform_epochs)
    build_map(a.store, a.model, params, seed=a.seed, force=a.force)
    return 0
