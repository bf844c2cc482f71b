"""Spreadsheet-safe cells for every CSV the tool writes (CSV/formula injection), and strict JSON.

A text cell that a spreadsheet would run as a formula (it starts with = + - @, a tab or a carriage return,
also after leading spaces or newlines) is prefixed with a quote, as OWASP advises. Number columns are left
as they are. Every CSV writer of the project (export, report, balance weights, MetaCLIP entries, page
downloads) goes through ``to_csv``.
"""
from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value):
    """Prefix spreadsheet-formula starts (after any leading whitespace) with a quote; non-strings pass."""
    if isinstance(value, str) and (value.startswith(_FORMULA_START) or value.lstrip(" \t\r\n").startswith(
            _FORMULA_START[:4])):
        return "'" + value
    return value


def neutralise(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(neutralise_cell)
    return out


def to_csv(frame: pd.DataFrame, path_or_buf=None, **kw):
    """``DataFrame.to_csv`` of the neutralised frame (index off unless asked for)."""
    kw.setdefault("index", False)
    return neutralise(frame).to_csv(path_or_buf, **kw)


def json_safe(obj: Any) -> Any:
    """The same structure with NaN/inf floats as null and numpy/pandas scalars as plain Python, so that
    ``json.dumps(..., allow_nan=False)`` writes strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (ValueError, TypeError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def strict_json(obj: Any, **kw) -> str:
    return json.dumps(json_safe(obj), allow_nan=False, **kw)
