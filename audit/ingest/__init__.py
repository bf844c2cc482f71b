"""Ingest: turn a source into `samples` rows, and every row that cannot be used into a `rejects` row.

One file per source format (folder, webdataset, parquet, datacomp) fills a ``Batch`` (accounting.py);
run.py checks duplicates and writes each input file in one short transaction.
"""
