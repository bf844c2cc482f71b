"""Measure who is kept: metrics.py (rates with Wilson intervals, between-group gaps), fairness.py (group tables,
exclusion amplification, agreement), report.py (the report table shared by the CLI and the page)."""
