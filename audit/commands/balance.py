"""`python -m audit balance m4|metaclip ...`: data balancing weights (audit/analyses/balance).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from audit.analyses.balance.core import BalanceError, DEFAULT_EPS_ASSOC, DEFAULT_EPS_REP, M4_NOTE, MIN_GROUP, compare, describe_attribute, parse_proxies, result_summary, run_m4, summary_lines, weights_frame
from audit.analyses.balance.run import iter_weights, record_run, save_batches, save_result, streamed_summary, weights_writer, load_inputs, metaclip_index, metaclip_q, run_m4_streaming
from audit.cli import store_arg

STREAM_MEMORY = "1GB"   # DuckDB memory_limit of --stream: its sorts spill to disk past it


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def _eps(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    v = float(text)
    if v < 0:
        raise argparse.ArgumentTypeError("tolerances must be ≥ 0 (or 'off')")
    return v


def _budget(text: str) -> float:
    v = float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"budget must be in (0, 1], got {v}")
    return v


def configure(p) -> None:
    p.description = ("Per-sample weights that balance the pool; before/after RB and AB "
                                   "(methods.md §5.1). See docs/balancing.md.")
    ss = p.add_subparsers(dest="balancer", required=True, metavar="{m4,metaclip}")

    m = ss.add_parser("m4", help="M4 moment matching (this project's formulation, methods.md §5.1)",
                      description=M4_NOTE)
    store_arg(m)
    m.add_argument("--attribute", required=True, help="sensitive attribute (e.g. caption_gender)")
    m.add_argument("--proxies", default="",
                   help="comma-separated: ATTR (one column per label), ATTR=LABEL, zs:PROMPT|PROMPT|... (zero-shot)")
    m.add_argument("--groups", help="comma-separated groups to balance (default: labels with ≥ --min-group rows, "
                                    "not unknown/multiple)")
    m.add_argument("--min-group", type=int, default=MIN_GROUP)
    m.add_argument("--budget", type=_budget, required=True, metavar="ETA", help="kept fraction η in (0, 1]")
    m.add_argument("--target", default="uniform", help="uniform, pool, G=P,G=P or P,P (default: %(default)s)")
    m.add_argument("--eps-rep", type=_eps, default=DEFAULT_EPS_REP, metavar="E",
                   help="representation tolerance ε_R on RB, or 'off' (default: %(default)s)")
    m.add_argument("--eps-assoc", type=_eps, default=DEFAULT_EPS_ASSOC, metavar="E",
                   help="association tolerance ε_A on AB, or 'off' (default: %(default)s)")
    m.add_argument("--utility", metavar="SCORE", help="a stored score: sample proportionally to it (t_i = η u_i/ū)")
    m.add_argument("--model", help="embedding model for zs: proxies (default: datacomp_l14 if present)")
    m.add_argument("--seed", type=int, default=0, help="seed of the Bernoulli keep draw")
    m.add_argument("--out", required=True, help="output .csv or .parquet: uid, q, keep")
    m.add_argument("--save", action="store_true", help="also store q and keep as scores m4_q / m4_keep")
    m.add_argument("--stream", action="store_true",
                   help="mini-batch variant: read the pool --batch-rows at a time (for pools that do not fit in memory)")
    m.add_argument("--batch-rows", type=int, default=200_000)
    m.set_defaults(func=_run_m4)

    mc = ss.add_parser("metaclip", help="MetaCLIP balancing (methods.md §4.3), optionally at a matched budget")
    store_arg(mc)
    mc.add_argument("--budget", type=_budget, metavar="ETA",
                    help="choose t so that the expected kept fraction is η (for comparison with M4)")
    mc.add_argument("--t", type=float, help="balancing threshold t (default: the stored metaclip run's)")
    mc.add_argument("--metadata", metavar="FILE", help="metadata entries (default: what the metaclip score used)")
    mc.add_argument("--attribute", help="also report RB/AB on this attribute")
    mc.add_argument("--proxies", default="", help="proxies for AB (as for m4)")
    mc.add_argument("--target", default="uniform")
    mc.add_argument("--model", help="embedding model for zs: proxies")
    mc.add_argument("--seed", type=int, default=0)
    mc.add_argument("--out", required=True, help="output .csv or .parquet: uid, q (= P(keep)), keep")
    mc.set_defaults(func=_run_metaclip)


def _groups_arg(text: str | None) -> list[str] | None:
    return [g.strip() for g in text.split(",") if g.strip()] if text else None


def _run_m4(a) -> int:
    from audit.store import Store

    params = {"attribute": a.attribute, "proxies": parse_proxies(a.proxies), "groups": _groups_arg(a.groups),
              "budget": a.budget, "target": a.target, "eps_rep": a.eps_rep, "eps_assoc": a.eps_assoc,
              "utility": a.utility, "model": a.model, "seed": a.seed, "stream": a.stream}
    t0 = time.perf_counter()
    if a.stream:
        if a.batch_rows < 1:
            raise BalanceError("--batch-rows must be ≥ 1")
        # DuckDB's sorts of each pass spill past 1 GB instead of growing with the pool (3.0 GB peak at 12.8M rows)
        with Store.reader(a.store, memory_limit=STREAM_MEMORY) as st:
            res, kept, grp, cols, tgt = run_m4_streaming(
                st, a.attribute, a.proxies, out=a.out, groups=_groups_arg(a.groups), target=a.target,
                utility=a.utility, budget=a.budget, eps_rep=a.eps_rep, eps_assoc=a.eps_assoc, seed=a.seed,
                batch_rows=a.batch_rows)
        for line in summary_lines(f"M4 (streamed in batches of {a.batch_rows:,}; {res.passes} passes) on "
                                  f"{a.attribute}", grp, tgt, res, res.n, kept, a.budget, a.eps_rep, a.eps_assoc, cols):
            print(line)
        if a.save:
            with Store.reader(a.store, memory_limit=STREAM_MEMORY) as st:
                summary = streamed_summary(st, a.attribute, res, kept, grp, cols, tgt, a.budget, a.eps_rep,
                                           a.eps_assoc)
            save_batches(a.store, "m4", params, iter_weights(a.out), summary, description="M4 balancing (streamed)")
            print("stored as scores m4_q, m4_keep (the Balancing page shows this run on large pools)")
        else:
            record_run(a.store, "m4", params, res.n, kept, f"{res.status}: {res.message}")
        print(f"weights -> {a.out} ({time.perf_counter() - t0:.1f} s)")
        return 0 if res.status != "not converged" else 1
    with Store.reader(a.store) as st:
        inputs = load_inputs(st, a.attribute, a.proxies, groups=_groups_arg(a.groups), target=a.target,
                             utility=a.utility, model=a.model, min_group=a.min_group)
    res, keep = run_m4(inputs, budget=a.budget, eps_rep=a.eps_rep, eps_assoc=a.eps_assoc, seed=a.seed)
    write, close = weights_writer(a.out)
    write(weights_frame(inputs.uids, res.q, keep))
    close()
    for n in inputs.notes:
        print("note: " + n)
    for line in summary_lines(f"M4 on {describe_attribute(inputs)}", inputs.groups, inputs.target, res,
                              len(res.q), int(keep.sum()), a.budget, a.eps_rep, a.eps_assoc, inputs.proxies):
        print(line)
    summary = result_summary(inputs, res, keep, a.budget, a.eps_rep, a.eps_assoc)
    if a.save:
        save_result(a.store, "m4", params, inputs.uids, res.q, keep, summary, description="M4 balancing")
        print("stored as scores m4_q, m4_keep")
    else:
        record_run(a.store, "m4", params, len(res.q), int(keep.sum()), f"{res.status}: {res.message}")
    print(f"weights -> {a.out} ({time.perf_counter() - t0:.1f} s; solve {res.seconds:.1f} s)")
    return 0 if res.status != "not converged" else 1


def _run_metaclip(a) -> int:
    from audit.store import Store

    if a.t is not None and a.t <= 0:
        raise BalanceError(f"--t must be > 0, got {a.t}")
    if a.budget is not None and a.t is not None:
        raise BalanceError("give --budget or --t, not both")
    with Store.reader(a.store) as st:
        if a.metadata:
            idx = metaclip_index(st, metadata=a.metadata)
            q, keep, info = metaclip_q(st, budget=a.budget, t=a.t or idx.stored_t or 20_000.0, index=idx, seed=a.seed) \
                if a.budget is None else metaclip_q(st, budget=a.budget, index=idx, seed=a.seed)
        else:
            q, keep, info = metaclip_q(st, budget=a.budget, t=a.t, seed=a.seed)
        uids = st.sample_uids()
        inputs = None
        if a.attribute:
            inputs = load_inputs(st, a.attribute, a.proxies, target=a.target, model=a.model)
    write, close = weights_writer(a.out)
    write(weights_frame(uids, q, keep))
    close()
    t_txt = "?" if info["t"] is None else f"{info['t']:,.4g}"
    print(f"MetaCLIP balancing: t = {t_txt}" + (f" (chosen so that Σ P(keep) = η·n, η={a.budget:g})" if a.budget else ""))
    print(f"entries: {info['source']}")
    if info.get("matched") is not None:
        print(f"captions with at least one matched entry: {info['matched']:,} of {len(q):,} (others are never kept)")
    print(f"expected kept Σ P(keep) = {q.sum():,.1f} ({q.mean():.1%}); seeded draw keeps {int(keep.sum()):,}")
    if inputs is not None:
        table, _ = compare(inputs, {"pool": np.ones(len(q)), "MetaCLIP": q})
        for n in inputs.notes:
            print("note: " + n)
        print(f"on {describe_attribute(inputs)}: RB {table['RB'][0]:.4f} → {table['RB'][1]:.4f}, "
              f"AB {table['AB'][0]:.4f} → {table['AB'][1]:.4f}")
    record_run(a.store, "metaclip", {"budget": a.budget, "t": info["t"], "metadata": a.metadata, "seed": a.seed},
                len(q), int(keep.sum()), info["source"])
    print(f"weights -> {a.out}")
    return 0
