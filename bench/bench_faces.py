"""Face detection precision and recall on scikit-image's ``lfw_subset`` (100 face crops, 100 non-face crops).

    .venv/bin/python bench/bench_faces.py [--scale 4]

The crops are 25 × 25 grey images; each is upscaled (bicubic, ``--scale``) to give the detectors the ≥ 40 px faces the
annotator expects, and a detection anywhere counts as "face found". Both detectors of ``annotate faces`` run with
their defaults (Haar with its eye check; dlib HOG). Prints a table with Wilson 95% intervals. An image-level
check: these are tight crops, not web photos, so the figures are an upper bound on what the annotator does on a
pool (small faces, profiles and occlusion there are harder).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.annotators.faces import HaarDetector, HogDetector  # noqa: E402
from audit.measure.metrics import wilson  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=4)
    a = ap.parse_args()
    import skimage.data
    from PIL import Image

    x = skimage.data.lfw_subset()                 # (200, 25, 25) float in [0, 1]: 100 faces then 100 non-faces
    truth = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    side = 25 * a.scale
    imgs = [np.asarray(Image.fromarray((im * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC).convert("RGB"))
            for im in x]
    print(f"lfw_subset: {len(imgs)} crops upscaled to {side} × {side}\n")
    print("| detector | found on faces (recall) | found on non-faces | precision | s/image |\n|---|---|---|---|---|")
    for name, det in (("haar (default, eye check)", HaarDetector()), ("hog (dlib)", HogDetector())):
        t = time.perf_counter()
        found = np.array([len(det(im)) > 0 for im in imgs])
        dt = (time.perf_counter() - t) / len(imgs)
        tp, fp = int((found & truth).sum()), int((found & ~truth).sum())
        rlo, rhi = wilson(tp, 100)
        plo, phi = wilson(tp, tp + fp) if tp + fp else (np.nan, np.nan)
        prec = tp / (tp + fp) if tp + fp else float("nan")
        print(f"| {name} | {tp}/100 = {tp / 100:.2f} [{float(rlo):.2f}, {float(rhi):.2f}] | {fp}/100 | "
              f"{prec:.2f} [{float(plo):.2f}, {float(phi):.2f}] | {dt:.4f} |")


if __name__ == "__main__":
    main()
