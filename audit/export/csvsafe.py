"""Spreadsheet-safe cells for every CSV the tool writes (formula injection: a cell starting with =, +, -, @ ...).
"""
from __future__ import annotations


import pandas as pd



_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value):
    """Prefix spreadsheet-formula starts with a quote (OWASP CSV injection advice); non-strings pass."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def neutralise(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(neutralise_cell)
    return out
