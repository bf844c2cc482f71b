"""Dataset-origin probe: features.py (image transformation features), probe.py (linear probes, controls,
result views), run.py (gather each feature family from a store, probe it, store the result)."""
