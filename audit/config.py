"""Settings read from the environment, shared by the CLI and the dashboard (no heavy imports)."""
from __future__ import annotations

import os

DEMO_STORE = "data/demo.duckdb"


def default_store() -> str:
    """The store a command or the dashboard uses when none is given: ``$AUDIT_STORE``, else the demo store."""
    return os.environ.get("AUDIT_STORE", DEMO_STORE)
