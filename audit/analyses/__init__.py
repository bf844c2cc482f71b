"""Analyses of a whole pool, one folder each: balance (M4, MetaCLIP), origin (dataset-origin probe), embedmap
(UMAP map). Each folder has its pure maths (core.py / probe.py / layout.py) and a run.py that reads the store,
calls the maths and writes the result back; the command and the demo step call run.py."""
