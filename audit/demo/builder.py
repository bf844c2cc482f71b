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


WORKER_THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                   "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}


class EarlySteps:
    """Work done in one spawned worker process (no forked DuckDB or torch state) while the builder goes on: the
    simulation beside the photos, then the analysis steps that need no scores beside steps 4-5 (two cores).
    ``futures`` maps a step's name to the future of the lines it printed."""

    def __init__(self, store: str, seed: int):
        self.store, self.seed, self.futures, self._pool = store, seed, {}, None

    def submit(self, fn, *args):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is not None:
            return self._pool.submit(fn, *args)
        # one thread in the worker: two processes of two BLAS/OpenMP threads each on two cores spin against each
        # other; the child reads these at its start (spawn), the parent's own values are put back at once
        import os

        saved = {k: os.environ.get(k) for k in WORKER_THREADS}
        os.environ.update(WORKER_THREADS)
        try:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            return self._pool.submit(fn, *args)   # the worker process starts here
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


# Scores no later demo step reads (the NSFW annotator reads laion-nsfw, so that one stays in line): the second
# process runs them after the map and the origin probe, which balances the two cores (measured: 128 s -> below).
EARLY_SCORES = frozenset({"semdedup", "aesthetic", "negclip", "vas-d"})


def score_captured(name: str, store: str, model: str | None, params: dict, seed: int) -> list[str]:
    """run_score in the worker process; returns what it printed."""
    from audit.scores.base import run_score

    lines: list[str] = []
    run_score(name, store, model=model, params=params, seed=seed, echo=lines.append)
    return lines


def simulate_inputs(pool: str, rows: int, seed: int) -> None:
    """Write the simulated pool's shards, and move its ground truth out of the folder that gets ingested."""
    from audit.demo.simulate import SimConfig, write_pool

    write_pool(Path(pool), SimConfig(rows=rows, seed=seed))
    for name in ("truth.parquet", "latent.json"):
        (Path(pool) / name).replace(Path(pool).parent / name)


def build_demo(store: str, *, rows: int = 100_000, seed: int = 0, photos: bool = True, echo=print) -> None:
    from audit.annotators.base import run_annotator
    from audit.ingest.run import ingest
    from audit.scores.base import run_score
    from audit.demo.simulate import SOURCES, SimConfig
    from audit.demo.steps import run_captured

    t0 = time.perf_counter()
    lap = [t0]

    def done(what: str) -> None:   # per-step time, so a slow step shows where the minutes go
        now = time.perf_counter()
        echo(f"    {what}: {now - lap[0]:.1f} s")
        lap[0] = now

    root = Path(store).with_suffix("")
    root = root.parent / (root.name + "_inputs")
    pool = root / "sim" / "pool"
    from audit.store import Store
    from audit.demo.steps import EARLY_STEPS, STEPS

    early = EarlySteps(store, seed)
    try:
        echo(f"[1/6] simulating {rows} rows in DataComp format -> {pool}" + (" (in a second process)" if photos else ""))
        simulated = early.submit(simulate_inputs, str(pool), rows, seed)
        if photos:   # the photos need nothing simulated: they go in while the second process simulates
            echo("[2/6] real photos from installed wheels (folder format), embedded with open_clip ViT-B-32, RANDOM weights")
            cap = write_photos(root / "photos")
            ingest("folder", [str(cap.parent)], store_path=store, source="sample-photos", progress=False, echo=lambda s: echo("    " + s))
            from audit.embed.runner import embed

            embed(store, model="ViT-B-32", pretrained="none", batch_size=16, workers=0, progress=False, precision="fp32",
                  echo=lambda s: echo("    " + s))
            done("photos ingested and embedded")
        simulated.result()
        record_simulator(store, SimConfig(rows=rows, seed=seed))
        done("simulated (waited for the second process)" if photos else "simulated")
        echo("[3/6] ingesting the simulated pool (datacomp format)")
        for name in SOURCES:
            ingest("datacomp", [str(pool / f"{name}.parquet")], store_path=store, source=name, simulated=True, progress=False,
                   echo=lambda s: echo("    " + s))
        done("ingested")
        for name in EARLY_STEPS:   # these need only what is ingested and embedded
            early.futures[name] = early.submit(run_captured, name, store, seed)
        from audit.annotators import ANNOTATORS
        from audit.scores import SCORES

        with Store.reader(store) as st:
            models = st.models()["model"].tolist()
        echo("[4/6] scores" + (f" (the second process runs {', '.join(EARLY_STEPS)} meanwhile)" if EARLY_STEPS else ""))
        for cls in SCORES:
            for model, params in cls.demo_runs(models):
                if cls.name in EARLY_SCORES:   # nothing later needs them: the second process runs them
                    early.futures[f"score {cls.name} ({model})"] = early.submit(
                        score_captured, cls.name, store, model, params, seed)
                    continue
                run_score(cls.name, store, model=model, params=params, seed=seed, echo=lambda s: echo("    " + s))
                done(f"score {cls.name}" + (f" ({model})" if model else ""))
        echo("[5/6] annotators (imputed labels)")
        for cls in ANNOTATORS:
            for model, params in cls.demo_runs(models):
                run_annotator(cls.name, store, model=model, params=params, seed=seed, echo=lambda s: echo("    " + s))
                done(f"annotator {cls.name}" + (f" ({model})" if model else ""))
        echo("[6/6] analyses")
        for step in STEPS:
            if step.__name__ in early.futures:
                for line in early.futures.pop(step.__name__).result():   # ran in the second process
                    echo("    " + line)
                done(f"{step.__name__} (waited for the second process)")
                continue
            step(store, seed=seed, echo=lambda s: echo("    " + s))
            done(step.__name__)
        for name in [k for k in early.futures if k.startswith("score ")]:
            for line in early.futures.pop(name).result():
                echo("    " + line)
            done(f"{name} (waited for the second process)")
    finally:   # a failed step cancels what the second process has not started
        early.close()
    echo(f"demo store ready: {store} ({time.perf_counter() - t0:.0f} s)")
