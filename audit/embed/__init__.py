"""Embed: image and text vectors of every sample with an image (runner.py), through a backend.

base.py the Embedder interface and backend table; open_clip_backend.py, transformers_backend.py the backends;
textenc.py prompt encoders matched to a stored model; torchutil.py the bf16 autocast trial.
"""
