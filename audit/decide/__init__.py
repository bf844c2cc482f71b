"""Decide who is kept: selection.py (keep rules, DataComp top fractions), recipes.py (AND / THEN recipes of the
papers, per-sample reasons), preview.py (the Filter preview's fast per-group tables)."""
