"""The map stage over a store: stream one model's vectors, fit and place (layout.py), store x/y per row.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
from audit.analyses.embedmap.layout import KNNIndex, MapParams, choose_knn, fit_pca, fit_umap, project, transform_chunk


# ---- the stage ------------------------------------------------------------------------------------------
def compute_map(store, model: str, params: MapParams, *, seed: int = 0,
                echo: Callable[[str], None] = print, timings: dict | None = None) -> dict:
    """Fit and apply the map on an open store; returns {"uid", "x", "y", "fit", "skipped", "knn", "fit_rows"}.

    Reads vectors with audit.vectors.iter_vectors, one part at a time (three passes)."""
    from audit.store.vectors import iter_vectors

    params.check()
    t0 = time.perf_counter()
    timings = timings if timings is not None else {}
    col = params.column
    n = sum(len(u) for u, _ in iter_vectors(store, model, columns=()))
    if n < 3:
        raise ValueError(f"{model} has {n} embedded samples; a map needs at least 3")
    rng = np.random.default_rng(seed)
    n_fit = min(params.fit_sample, n)
    fit_pos = np.sort(rng.choice(n, size=n_fit, replace=False))
    is_fit = np.zeros(n, dtype=bool)
    is_fit[fit_pos] = True

    # pass 1: the fit rows' vectors
    fit_uids, fit_x, start = [], [], 0
    for u, cols in iter_vectors(store, model, columns=(col,)):
        sel = np.flatnonzero(is_fit[start:start + len(u)])
        if len(sel):
            fit_uids.extend(u[i] for i in sel)
            fit_x.append(cols[col][sel])
        start += len(u)
    x = np.concatenate(fit_x)
    finite = np.isfinite(x).all(axis=1)
    x, fit_uids = x[finite], [v for v, f in zip(fit_uids, finite) if f]
    skipped = int((~finite).sum())
    if len(x) < 3:
        raise ValueError(f"{model}: fewer than 3 finite vectors in the fit sample")
    timings["read_fit_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    pca = fit_pca(x, params.pca, seed) if params.pca else None
    z_fit = project(x, pca)
    del x, fit_x
    kind = choose_knn(params.knn, len(z_fit), n - n_fit)
    index = KNNIndex(z_fit, kind, min(params.n_neighbors, len(z_fit) - 1), seed)
    reducer, fit_xy = fit_umap(z_fit, index, params, seed)
    timings["fit_s"] = time.perf_counter() - t1
    echo(f"{model}: UMAP fitted on {len(z_fit):,} of {n:,} rows ({'PCA ' + str(z_fit.shape[1]) + ' dims, ' if pca else ''}"
         f"{kind} neighbours, {timings['fit_s']:.1f} s)")

    # pass 2: every other row, in chunks
    t2 = time.perf_counter()
    uids, xs, ys, fits = [fit_uids], [fit_xy[:, 0]], [fit_xy[:, 1]], [np.ones(len(fit_uids), dtype=bool)]
    start, done = 0, 0
    for u, cols in iter_vectors(store, model, columns=(col,)):
        rest = np.flatnonzero(~is_fit[start:start + len(u)])
        start += len(u)
        for s in range(0, len(rest), params.chunk):
            sel = rest[s:s + params.chunk]
            v = cols[col][sel]
            ok = np.isfinite(v).all(axis=1)
            skipped += int((~ok).sum())
            if not ok.any():
                continue
            xy = transform_chunk(reducer, index, project(v[ok], pca), n_epochs=params.transform_epochs)
            uids.append([u[i] for i in sel[ok]])
            xs.append(xy[:, 0])
            ys.append(xy[:, 1])
            fits.append(np.zeros(int(ok.sum()), dtype=bool))
            done += int(ok.sum())
    timings["transform_s"] = time.perf_counter() - t2
    timings["transform_rows"] = done
    if done:
        echo(f"{model}: placed {done:,} more rows in chunks of {params.chunk:,} ({timings['transform_s']:.1f} s)")
    return {"uid": [v for part in uids for v in part], "x": np.concatenate(xs), "y": np.concatenate(ys),
            "fit": np.concatenate(fits), "skipped": skipped, "knn": kind, "fit_rows": len(z_fit), "rows": n}


def build_map(store_path: str, model: str | None, params: MapParams | None = None, *, seed: int = 0,
              force: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Compute (or keep, with the same parameters) the map of one model and store its coordinates."""
    import pandas as pd

    from audit.scores.base import resolve_model
    from audit.store import Store, param_key
    from audit.store.results import map_catalog, write_map

    params = params or MapParams()
    params.check()
    with Store.writer(store_path) as st:
        model = resolve_model(st, model)
        rw = bool(st.model_info(model)["random_weights"])
        full = {**asdict(params), "model": model, "seed": seed}
        done = st.find_done_run("map", model, param_key(full))
        if done and not force and model in set(map_catalog(st)["model"]):
            echo(f"map of {model} already computed with these parameters (run {done}); nothing to do")
            return {"model": model, "run_id": done, "reused": True}
        run_id = st.start_run("map", model, params=full, model=model, random_weights=rw)
    t0 = time.perf_counter()
    timings: dict = {}
    try:
        with Store.detached(store_path) as rd:   # holds the file only per query: other stages write meanwhile
            got = compute_map(rd, model, params, seed=seed, echo=echo, timings=timings)
    except Exception as exc:
        with Store.writer(store_path) as st:
            st.end_run(run_id, status="failed", note=str(exc)[:500])
        raise
    frame = pd.DataFrame({"uid": pd.Series(got["uid"], dtype="string"), "x": got["x"], "y": got["y"],
                          "fit": got["fit"]})
    with Store.writer(store_path) as st:
        write_map(st, model, frame, run_id=run_id, column=params.column, fit_rows=got["fit_rows"],
                  skipped=got["skipped"], knn=got["knn"], params_json=json.dumps(full), random_weights=rw)
        st.end_run(run_id, rows_in=got["rows"], rows_out=len(frame), rows_rejected=got["skipped"],
                   note=f"fit on {got['fit_rows']:,} rows; {got['knn']} neighbours"
                        + (f"; {got['skipped']} rows with non-finite vectors not placed" if got["skipped"] else ""))
    echo(f"map of {model}: {len(frame):,} rows stored ({time.perf_counter() - t0:.1f} s)"
         + (" [RANDOM-WEIGHT MODEL: the layout carries no meaning]" if rw else ""))
    return {"model": model, "run_id": run_id, "rows": len(frame), "fit_rows": got["fit_rows"],
            "skipped": got["skipped"], "knn": got["knn"], "timings": timings, "reused": False}
