"""Build the demo store offline: a simulated DataComp-format pool plus real photos shipped in wheels.

(a) The simulated pool (audit.demo.simulate) is written as parquet + npz shards, one per simulated source, and
    ingested through the `datacomp` path; its rows are flagged ``simulated``.
(b) Real photos from scikit-image, matplotlib and scikit-learn, with captions written for them, go through
    the `folder` path and are embedded with open_clip ViT-B-32 with *random* weights (no hub here), so their
    CLIP scores are labelled as random-weight results.
Then every registered score and annotator that declares demo runs (`demo_runs`), and the analyses in
audit/demo/steps.py.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

# (file name, loader, caption). Loaders return arrays or a file path; captions describe the picture.
PHOTOS = [
    ("astronaut.png", "skimage:astronaut", "portrait of astronaut Eileen Collins, a woman in an orange NASA flight suit"),
    ("camera.png", "skimage:camera", "black and white photo of a man with a camera on a tripod"),
    ("coffee.png", "skimage:coffee", "a cup of coffee on a saucer with a spoon"),
    ("chelsea.png", "skimage:chelsea", "a tabby cat looking to the side"),
    ("rocket.png", "skimage:rocket", "a rocket on the launch pad against a blue sky"),
    ("coins.png", "skimage:coins", "old greek coins on a dark background"),
    ("moon.png", "skimage:moon", "the surface of the moon with craters"),
    ("page.png", "skimage:page", "a scanned page of printed text"),
    ("text.png", "skimage:text", "hand written text on a board"),
    ("clock.png", "skimage:clock", "a clock on a wall, black and white"),
    ("horse.png", "skimage:horse", "silhouette of a horse"),
    ("hubble.png", "skimage:hubble_deep_field", "hubble deep field image of distant galaxies"),
    ("ihc.png", "skimage:immunohistochemistry", "microscope image of stained tissue"),
    ("retina.png", "skimage:retina", "photograph of a human retina"),
    ("cell.png", "skimage:cell", "microscopy image of a cell"),
    ("colorwheel.png", "skimage:colorwheel", "a colour wheel with the full hue range"),
    ("brick.png", "skimage:brick", "texture of a brick wall"),
    ("grass.png", "skimage:grass", "close-up texture of grass"),
    ("gravel.png", "skimage:gravel", "texture of gravel stones"),
    ("logo.png", "skimage:logo", "the scikit-image logo, a snake"),
    ("microaneurysms.png", "skimage:microaneurysms", "retinal image with microaneurysms"),
    ("motorcycle.png", "skimage:stereo_motorcycle", "a motorcycle in a garage"),
    ("grace_hopper.jpg", "mpl:grace_hopper.jpg", "portrait of computer scientist Grace Hopper, an older woman in navy uniform"),
    ("china.jpg", "sklearn:china.jpg", "a chinese temple with trees in front"),
    ("flower.jpg", "sklearn:flower.jpg", "a pink flower with a bee"),
]
# Deliberately broken rows, so the demo shows the rejects path of the folder format.
BROKEN = [("corrupt.jpg", "corrupt", "this file is not an image"), ("blank_caption.png", "skimage:camera", "   "),
          ("missing.png", "missing", "the file is not there")]


def _load(spec: str):
    kind, _, name = spec.partition(":")
    if kind == "skimage":
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if isinstance(img, tuple) else img
    if kind == "mpl":
        import matplotlib.cbook

        return Path(matplotlib.cbook.get_sample_data(name, asfileobj=False))
    if kind == "sklearn":
        import sklearn.datasets

        return sklearn.datasets.load_sample_image(name)
    return None


def write_photos(folder: Path) -> Path:
    """Write the wheel photos and captions.csv into ``folder``; returns the captions file."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for fname, spec, caption in PHOTOS + BROKEN:
        dest = folder / fname
        if spec == "corrupt":
            dest.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg header only")
        elif spec != "missing":
            img = _load(spec)
            if isinstance(img, Path):
                dest.write_bytes(img.read_bytes())
            else:
                arr = np.asarray(img)
                if arr.dtype == bool:
                    arr = arr.astype(np.uint8) * 255
                Image.fromarray(arr).convert("RGB").save(dest)
        rows.append({"file": fname, "caption": caption, "url": f"https://sample-photos.example.org/{fname}"})
    cap = folder / "captions.csv"
    with open(cap, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "caption", "url"])
        w.writeheader()
        w.writerows(rows)
    return cap


def record_simulator(store: str, cfg) -> None:
    """Write meta 'simulator': the seed, the size and the latent directions of each simulated embedding space, so
    prompts can be embedded in the simulated space (audit/embed/textenc.py) without importing the simulator."""
    import base64

    from audit.demo.simulate import latent_directions
    from audit.store import Store
    from audit.store.results import meta_put

    spaces = {}
    for dim in cfg.dims:
        dirs = latent_directions(dim, cfg.seed)
        data = np.stack(list(dirs.values())).astype("<f8").tobytes()
        spaces[str(dim)] = {"keys": list(dirs), "float64_b64": base64.b64encode(data).decode("ascii")}
    with Store.writer(store) as st:
        meta_put(st, "simulator", json.dumps({"seed": cfg.seed, "rows": cfg.rows, "text_directions": spaces}))


def build_demo(store: str, *, rows: int = 100_000, seed: int = 0, photos: bool = True, echo=print) -> None:
    from audit.annotators.base import run_annotator
    from audit.ingest.run import ingest
    from audit.scores.base import run_score
    from audit.demo.simulate import SOURCES, SimConfig, write_pool

    t0 = time.perf_counter()
    root = Path(store).with_suffix("")
    root = root.parent / (root.name + "_inputs")
    pool = root / "sim" / "pool"
    echo(f"[1/6] simulating {rows} rows in DataComp format -> {pool}")
    write_pool(pool, SimConfig(rows=rows, seed=seed))
    for name in ("truth.parquet", "latent.json"):  # keep the ground truth out of the ingested folder
        (pool / name).replace(pool.parent / name)
    from audit.store import Store

    record_simulator(store, SimConfig(rows=rows, seed=seed))
    echo("[2/6] ingesting the simulated pool (datacomp format)")
    for name in SOURCES:
        ingest("datacomp", [str(pool / f"{name}.parquet")], store_path=store, source=name, simulated=True, progress=False,
               echo=lambda s: echo("    " + s))
    if photos:
        echo("[3/6] real photos from installed wheels (folder format), embedded with open_clip ViT-B-32, RANDOM weights")
        cap = write_photos(root / "photos")
        ingest("folder", [str(cap.parent)], store_path=store, source="sample-photos", progress=False, echo=lambda s: echo("    " + s))
        from audit.embed.runner import embed

        embed(store, model="ViT-B-32", pretrained="none", batch_size=16, workers=0, progress=False, precision="fp32",
              echo=lambda s: echo("    " + s))
    from audit.annotators import ANNOTATORS
    from audit.scores import SCORES

    with Store.reader(store) as st:
        models = st.models()["model"].tolist()
    echo("[4/6] scores")
    for cls in SCORES:
        for model, params in cls.demo_runs(models):
            run_score(cls.name, store, model=model, params=params, seed=seed, echo=lambda s: echo("    " + s))
    echo("[5/6] annotators (imputed labels)")
    for cls in ANNOTATORS:
        for model, params in cls.demo_runs(models):
            run_annotator(cls.name, store, model=model, params=params, seed=seed, echo=lambda s: echo("    " + s))
    echo("[6/6] analyses")
    from audit.demo.steps import STEPS

    for step in STEPS:
        step(store, seed=seed, echo=lambda s: echo("    " + s))
    echo(f"demo store ready: {store} ({time.perf_counter() - t0:.0f} s)")
