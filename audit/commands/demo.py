"""`python -m audit demo`: build the demo store offline (audit/demo)."""
from __future__ import annotations

import os

from audit.cli import store_arg


def configure(p) -> None:
    p.add_argument("--rows", type=int, default=100_000, help="simulated pool size (default: %(default)s)")
    store_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-photos", action="store_true", help="skip the real photos and the open_clip model")
    p.add_argument("--if-missing", action="store_true", help="do nothing if the store exists")
    p.set_defaults(func=run)


def run(a) -> int:
    from audit.demo.builder import build_demo

    if a.if_missing and os.path.exists(a.store):
        print(f"demo store exists: {a.store}")
        return 0
    build_demo(a.store, rows=a.rows, seed=a.seed, photos=not a.no_photos)
    return 0
