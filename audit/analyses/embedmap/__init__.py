"""Embedding map: layout.py (PCA, neighbours, UMAP fit and chunked placement, selection helpers), run.py (the map
stage over a store)."""
