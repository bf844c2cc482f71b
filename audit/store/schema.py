"""Every table of the store (DDL), the allow-lists of columns, and the checks for identifiers.

Contract tables (other tools read them): ``samples`` (uid unique), ``rejects`` (reason), ``runs`` and
``embeddings`` (uid, model, img, txt; a view over the Parquet vectors, read as FLOAT arrays). ``samples``,
``scores``, ``annotations`` and ``embedding_map`` are views over Parquet parts (parts.py holds their columns).
"""
from __future__ import annotations

import re



SCHEMA_VERSION = 2   # 2: samples, scores, annotations, embedding_map as Parquet parts (parts.py)

# Columns of `samples` a user may group by in the dashboard (allow-list for GROUP BY identifiers).
SAMPLE_GROUP_COLUMNS = ("source", "domain", "tld", "simulated")
SAMPLE_COLUMNS = (
    "uid", "source", "caption", "url", "domain", "tld", "width", "height",
    "image_ref", "sha256", "simulated", "ingest_run", "stored_width", "stored_height", "uid_given",
)

DDL = [
    """CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)""",
    """CREATE SEQUENCE IF NOT EXISTS run_ids START 1""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id INTEGER PRIMARY KEY, stage VARCHAR, name VARCHAR, version INTEGER,
        model VARCHAR, pretrained VARCHAR, random_weights BOOLEAN, params VARCHAR, param_key VARCHAR,
        status VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP,
        rows_in BIGINT, rows_out BIGINT, rows_rejected BIGINT, note VARCHAR, pid INTEGER, host VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS rejects (
        source_ref VARCHAR, stage VARCHAR, reason VARCHAR, detail VARCHAR, source VARCHAR,
        uid VARCHAR, run_id INTEGER, url VARCHAR, caption VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS ingested_inputs (
        path VARCHAR, fingerprint VARCHAR, format VARCHAR, source VARCHAR, rows_in BIGINT,
        accepted BIGINT, rejected BIGINT, run_id INTEGER)""",
    """CREATE TABLE IF NOT EXISTS embedding_models (
        model VARCHAR PRIMARY KEY, dim INTEGER, backend VARCHAR, arch VARCHAR, pretrained VARCHAR,
        random_weights BOOLEAN, run_id INTEGER, folder VARCHAR, simulated BOOLEAN)""",
    """CREATE TABLE IF NOT EXISTS score_catalog (
        name VARCHAR PRIMARY KEY, run_id INTEGER, kind VARCHAR, model VARCHAR,
        random_weights BOOLEAN, simulated BOOLEAN, description VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS attribute_catalog (
        attribute VARCHAR PRIMARY KEY, run_id INTEGER, method VARCHAR, imputed BOOLEAN,
        random_weights BOOLEAN, description VARCHAR)""",
    # analysis results (audit/store/results.py)
    """CREATE TABLE IF NOT EXISTS origin_results (
        run_id INTEGER, by_column VARCHAR, created TIMESTAMP, result VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS map_catalog (
        model VARCHAR PRIMARY KEY, run_id INTEGER, column_name VARCHAR, n_rows BIGINT, fit_rows BIGINT,
        skipped BIGINT, knn VARCHAR, params VARCHAR, random_weights BOOLEAN, created TIMESTAMP)""",
]

# Columns `samples` gained while it was a table (stores of layout 1, before their rows move to parts)
LEGACY_SAMPLE_MIGRATIONS = [
    "ALTER TABLE samples ADD COLUMN IF NOT EXISTS stored_width INTEGER",
    "ALTER TABLE samples ADD COLUMN IF NOT EXISTS stored_height INTEGER",
    "ALTER TABLE samples ADD COLUMN IF NOT EXISTS uid_given BOOLEAN",
]

# Columns added after a table first shipped: a store written by an older version gains them on open.
MIGRATIONS = [
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER",
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR",
    "ALTER TABLE rejects ADD COLUMN IF NOT EXISTS url VARCHAR",
    "ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS simulated BOOLEAN",
    "ALTER TABLE rejects ADD COLUMN IF NOT EXISTS caption VARCHAR",
    # binary little-endian float16 vector (store/vectors.py) -> FLOAT[], for the embeddings view: hex digits in
    # fours ("LLHH"), byte-swapped to the 16-bit pattern v, then sign · mantissa · 2^exponent (subnormals, inf, NaN)
    "CREATE MACRO IF NOT EXISTS audit_half_vector(b) AS list_transform("
    "  list_transform(regexp_extract_all(hex(b), '....'), lambda x: ('0x' || x[3:4] || x[1:2])::INTEGER),"
    "  lambda v: ((CASE WHEN v >= 32768 THEN -1.0 ELSE 1.0 END) * (CASE"
    "    WHEN ((v >> 10) & 31) = 0 THEN (v & 1023) * 5.960464477539063e-08"
    "    WHEN ((v >> 10) & 31) = 31 THEN CASE WHEN (v & 1023) = 0 THEN 'inf'::DOUBLE ELSE 'nan'::DOUBLE END"
    "    ELSE (1024 + (v & 1023)) * pow(2.0, ((v >> 10) & 31) - 25) END))::FLOAT)",
]
REJECT_COLUMNS = ("source_ref", "stage", "reason", "detail", "source", "uid", "run_id", "url", "caption")

_EMPTY_EMBEDDINGS_VIEW = (
    "CREATE OR REPLACE VIEW embeddings AS SELECT NULL::VARCHAR AS uid, NULL::VARCHAR AS model, "
    "NULL::FLOAT[] AS img, NULL::FLOAT[] AS txt WHERE false"
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class StoreError(RuntimeError):
    """A store problem a user can act on (missing file, locked file, unknown name)."""


def ident(name: str) -> str:
    """Return ``name`` double-quoted for SQL after checking it is a plain identifier."""
    if not _IDENT.match(name):
        raise StoreError(f"not a valid column or score name: {name!r}")
    return f'"{name}"'


def slug(text: str) -> str:
    """Lower-case identifier-safe form of a model or score name (``ViT-B-32`` -> ``vit_b_32``)."""
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return s if s and not s[0].isdigit() else f"m_{s}"
