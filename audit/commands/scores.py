"""`python -m audit scores`: list the scores of a store with their provenance flags."""
from __future__ import annotations


from audit.cli import store_arg


def configure(p) -> None:
    store_arg(p)
    p.set_defaults(func=run)


def run(a) -> int:
    from audit.store import Store

    with Store.reader(a.store) as st:
        cat = st.score_catalog()
    for r in cat.itertuples():
        flags = " [random weights]" if r.random_weights else ""
        flags += " [simulated]" if r.simulated else ""
        model = r.model if isinstance(r.model, str) else ""  # NaN for scores that use no embeddings
        print(f"{r.name}\t{r.kind}\t{model}{flags}")
    return 0
