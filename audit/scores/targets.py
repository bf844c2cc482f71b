"""Target sets for NormSim, VAS and the image-based filter: a file of embeddings, or class-name prompts.

The reference target of NormSim/VAS (methods.md §2.3, §3.1) is a set of *image* embeddings of the same
encoder (ImageNet-1k train images, or the training splits of the evaluation tasks); DataComp's image-based
filter uses the same ImageNet-1k image embeddings (§1.4 f). Two ways to give one here:

* ``--target FILE``: ``.npy`` of shape (M, d), or Parquet with one list/array column of length d (``img``,
  ``embedding``, ``image_features`` or the only list column). Rows are L2-normalised on load.
* ``--classes SPEC``: class names embedded as prompts (``--template``, default ``"a photo of a {}."``) by the
  text encoder of the same model (audit.embed.textenc). This is a *text proxy* of an image target: CLIP's text
  and image embeddings sit in different cones (the modality gap), so absolute values differ from an image
  target; the score's description and the dashboard say "text proxy". SPEC is a comma list, a file (one
  name per line, or a JSON list), or ``imagenet`` (open_clip's 1,000 ImageNet-1k class names).
"""
from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.scores.base import read_string_list

DEFAULT_TEMPLATE = "a photo of a {}."
# The demo pool's object concepts that are also ImageNet-1k classes or class words (audit.simulate.CONCEPTS).
# Used as the demo's text-proxy target: "an ImageNet-like object target" (people concepts are not in it).
DEMO_CLASSES = ["dog", "cat", "car", "shoe", "phone", "pizza", "bicycle", "bird", "mountain", "beach", "house"]

ERR_NO_TARGET = "give a target: --target FILE (.npy or Parquet embeddings of the same model) or --classes NAMES"
ERR_BOTH = "give either --target FILE or --classes NAMES, not both"


class TargetError(ValueError):
    """A target set that cannot be read or does not fit the model."""


@dataclass
class Target:
    vectors: np.ndarray      # (M, d) float32, rows L2-normalised
    label: str               # what the target is, for descriptions and the UI
    text_proxy: bool         # True when the target is class-name prompts through a text encoder


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("target set")
    g.add_argument("--target", metavar="FILE",
                   help="embeddings of the target set, same model: .npy (M, d) or Parquet with a list column")
    g.add_argument("--classes", metavar="SPEC",
                   help="class names as prompts through the model's text encoder (a TEXT PROXY of the target): "
                        "comma list, a file (one per line or JSON list), or 'imagenet'")
    g.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt template for --classes (default: %(default)r)")
    g.add_argument("--text-model", help="open_clip MODEL:TAG to embed prompts (needed for real DataComp npz stores)")


def fingerprint(path: str | Path) -> str:
    """Content hash for small files, size+mtime for big ones (so a changed target reruns the score)."""
    p = Path(path)
    st = p.stat()
    if st.st_size <= 256 * 2**20:
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return f"size{st.st_size}-mtime{st.st_mtime_ns}"


def imagenet_classnames() -> list[str]:
    """open_clip's 1,000 ImageNet-1k class names, read from its metadata file without importing open_clip
    (importing the package costs seconds; the file defines plain tuples)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise TargetError("the 'imagenet' class list comes from open_clip, which is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "zero_shot_metadata.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_zero_shot_metadata", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return list(mod.IMAGENET_CLASSNAMES)


def class_names(spec: str) -> list[str]:
    """Class names from a comma list, a file (lines or JSON list) or 'imagenet'."""
    if spec.strip().lower() == "imagenet":
        return imagenet_classnames()
    p = Path(spec)
    if p.suffix and p.exists():
        names = read_string_list(spec, "class list", error=TargetError)
    elif p.suffix and not p.exists() and "," not in spec:
        raise TargetError(f"class file not found: {spec}")
    else:
        names = spec.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise TargetError(f"no class names in {spec!r}")
    return names


def target_params(args: argparse.Namespace) -> dict:
    """The target part of a score's parameters (what makes two runs differ)."""
    target, classes = getattr(args, "target", None), getattr(args, "classes", None)
    if target and classes:
        raise TargetError(ERR_BOTH)
    if not target and not classes:
        raise TargetError(ERR_NO_TARGET)
    if target:
        if not Path(target).exists():
            raise TargetError(f"target file not found: {target}")
        return {"target": str(Path(target).resolve()), "target_fingerprint": fingerprint(target)}
    return {"classes": class_names(classes), "template": args.template, "text_model": args.text_model}


def finite_unit_rows(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ok, rows): rows of ``f`` whose values are all finite, L2-normalised in place (f is float32 from
    audit.store.vectors, ours to modify). ok: (n,) bool; rows: (ok.sum(), d)."""
    sq = np.einsum("ij,ij->i", f, f)
    ok = np.isfinite(sq) & (sq > 0)
    if not ok.all():
        f, sq = f[ok], sq[ok]
    f /= np.sqrt(sq)[:, None].astype(f.dtype)
    return ok, f


def normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(n == 0):
        bad = int((~np.isfinite(x).all(axis=1) | (n[:, 0] == 0)).sum())
        raise TargetError(f"the target has {bad} row(s) with NaN/inf values or zero norm")
    return x / n


def read_embeddings(path: str | Path) -> np.ndarray:
    """(M, d) float32 from .npy or Parquet (not normalised)."""
    p = Path(path)
    if p.suffix == ".npy":
        try:
            x = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise TargetError(f"{p}: not a numeric .npy array ({exc})") from None
    elif p.suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        lists = [f.name for f in table.schema
                 if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type) or pa.types.is_large_list(f.type)]
        col = next((c for c in ("img", "embedding", "image_features") if c in lists), None)
        if col is None:
            if len(lists) != 1:
                raise TargetError(f"{p}: cannot tell which column holds the embeddings; name it 'img' or "
                                  f"'embedding' (list columns: {', '.join(lists) or 'none'})")
            col = lists[0]
        x = np.array(table.column(col).to_pylist(), dtype=np.float32)
    else:
        raise TargetError(f"{p}: target embeddings must be .npy or .parquet")
    if x.ndim != 2 or x.shape[0] == 0:
        raise TargetError(f"{p}: expected a non-empty (M, d) matrix, got shape {x.shape}")
    return x.astype(np.float32, copy=False)


def load_target(store, model: str, params: dict) -> Target:
    """Resolve the target of ``params`` (from target_params) in the space of ``model``."""
    dim = int(store.model_info(model)["dim"])
    if params.get("target"):
        x = read_embeddings(params["target"])
        if x.shape[1] != dim:
            raise TargetError(f"target {params['target']} has dimension {x.shape[1]} but {model} has {dim}: "
                              "the target must be embedded by the same model")
        return Target(normalise_rows(x), f"{x.shape[0]:,} embeddings from {Path(params['target']).name}", False)
    classes = params.get("classes")
    if not classes:
        raise TargetError(ERR_NO_TARGET)
    from audit.embed.textenc import text_encoder

    encode, enc_label = text_encoder(store, model, text_model=params.get("text_model"))
    template = params.get("template") or DEFAULT_TEMPLATE
    prompts = [template.format(c) if "{}" in template else f"{template} {c}" for c in classes]
    x = np.asarray(encode(prompts), dtype=np.float32)
    if x.shape[1] != dim:
        raise TargetError(f"the text encoder gives dimension {x.shape[1]} but {model} has {dim}")
    shown = ", ".join(classes[:6]) + (", …" if len(classes) > 6 else "")
    return Target(normalise_rows(x), f"TEXT PROXY: {len(classes)} class prompts ({shown}) via {enc_label}", True)
