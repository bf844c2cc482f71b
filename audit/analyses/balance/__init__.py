"""Balancing: m4.py (the M4 solver, methods.md §5.1), core.py (memberships, targets, proxies, comparison),
run.py (inputs from a store, MetaCLIP (§4.3), stored results)."""
