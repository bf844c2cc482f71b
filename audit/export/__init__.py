"""Export: the kept subset as CSV, Parquet or a DataComp uid .npy, with a manifest (writer.py); csvsafe.py
neutralises formula cells in every CSV the tool writes."""
