"""LAION NSFW and aesthetic scores from stored embeddings: the numpy forward passes reproduce the original
frameworks' outputs (TensorFlow for the NSFW detectors, torch for the aesthetic MLP) within 1e-5, and the scores
run through the CLI path with their weights' sha256 in runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from audit.scores.laion_models import (AESTHETIC_FILE, AESTHETIC_SHA256, MODELS_DIR, WeightsError, load_aesthetic,
                                       load_nsfw, resolve_weights, sha256_of)

REF = MODELS_DIR / "reference"


@pytest.mark.parametrize("dim,name", [(768, "laion_nsfw_l14"), (512, "laion_nsfw_b32")])
def test_nsfw_detectors_match_tensorflow(dim, name):
    z = np.load(REF / f"{name}_reference_subset.npz")
    model = load_nsfw(dim)
    assert np.abs(model.predict(z["x"]) - z["y"][:, 0]).max() < 1e-5
    assert np.abs(model.predict(z["x_scaled"]) - z["y_scaled"][:, 0]).max() < 1e-5
    # float16-rounded inputs hit the categorical vocabularies: a different output, also reproduced
    x16 = z["x"].astype(np.float16).astype(np.float32)
    assert np.abs(model.predict(x16) - z["y_f16"][:, 0]).max() < 1e-5
    assert np.abs(z["y_f16"] - z["y"]).max() > 1e-3   # the vocabulary path really was exercised


def test_nsfw_categorical_lookup_is_printf_of_the_value():
    model = load_nsfw(512)
    c = int(model.int_columns[0])
    vocab = model.vocab[c]
    token, pos = next(iter(vocab.items()))   # the first vocabulary entry -> index 1
    assert pos == 1 and "%f" % float(token) == token
    x = np.zeros((2, 512))
    x[0, c] = float(token)
    x[1, c] = float(token) + 1e-3   # prints differently: out of vocabulary -> 0
    from audit.scores.laion_models import _lookup

    np.testing.assert_array_equal(_lookup(x[:, c], vocab), [1.0, 0.0])


def test_aesthetic_matches_torch_reference_and_an_independent_torch_module():
    import torch

    z = np.load(REF / "laion_aesthetic_l14_reference_subset.npz")
    path = MODELS_DIR / AESTHETIC_FILE
    assert sha256_of(path) == AESTHETIC_SHA256
    ours = load_aesthetic(path).predict(z["x"])
    assert np.abs(ours - z["y"][:, 0]).max() < 1e-5
    # second computation: the original nn.Sequential (with its dropouts) in eval mode
    net = torch.nn.Sequential(torch.nn.Linear(768, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                              torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                              torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    net.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
    with torch.no_grad():
        theirs = net.eval()(torch.from_numpy(z["x"])).numpy()[:, 0]
    assert np.abs(ours - theirs).max() < 1e-5


def test_weights_errors_are_clear(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights(str(tmp_path / "none.pth"), MODELS_DIR / AESTHETIC_FILE)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(WeightsError, match="not a torch state dict"):
        load_aesthetic(bad)
    with pytest.raises(WeightsError, match="768-d .ViT-L/14. or 512-d"):
        load_nsfw(1024)
    with pytest.raises(WeightsError, match="takes 512-d"):
        load_nsfw(512).predict(np.zeros((2, 768)))


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_scores_run_on_stored_vectors_with_provenance(make_store):
    from audit.scores.base import run_score
    from audit.store import Store

    rng = np.random.default_rng(0)
    uids = [f"u{i:02d}" for i in range(12)]
    img = _unit(rng, 12, 768)
    img[3] = np.nan   # a sample without a usable vector stays unscored
    path = make_store([{"uid": u, "caption": "c"} for u in uids],
                      vectors={"datacomp_l14": (uids, img, _unit(rng, 12, 768))})
    got = run_score("laion-nsfw", path, model="datacomp_l14", params={"weights": None}, echo=lambda s: None)
    got += run_score("aesthetic", path, model="datacomp_l14",
                     params={"weights": str(MODELS_DIR / AESTHETIC_FILE), "sha256": AESTHETIC_SHA256},
                     echo=lambda s: None)
    assert got == ["laion_nsfw_datacomp_l14", "aesthetic_datacomp_l14"]
    with Store.reader(path) as st:
        vals = st.score_frame(got).set_index("uid").loc[uids]
        runs = st.df("SELECT name, params FROM runs WHERE stage = 'score' ORDER BY run_id")
        cat = st.score_catalog().set_index("name")
    # the stored vectors are float16: the expected values come from the float16-rounded, normalised rows
    x16 = img.astype(np.float16).astype(np.float32)
    x16 = x16 / np.linalg.norm(x16, axis=1, keepdims=True)
    ok = np.arange(12) != 3
    np.testing.assert_allclose(vals["aesthetic_datacomp_l14"].to_numpy()[ok],
                               load_aesthetic(MODELS_DIR / AESTHETIC_FILE).predict(x16[ok]), atol=1e-5)
    assert np.isnan(vals.iloc[3]).all() and np.isfinite(vals.to_numpy()[ok]).all()
    p = vals["laion_nsfw_datacomp_l14"].to_numpy()[ok]
    assert ((p >= 0) & (p <= 1)).all()
    params = [json.loads(r) for r in runs["params"]]
    assert params[1]["sha256"] == AESTHETIC_SHA256
    assert params[0]["sha256"]["768"] == sha256_of(MODELS_DIR / "laion_nsfw_l14.npz")
    assert "sha256" in cat.loc["aesthetic_datacomp_l14", "description"]


def test_demo_pool_scores_are_labelled_simulated(demo_store):
    from audit.store import Store

    with Store.reader(demo_store) as st:
        cat = st.score_catalog().set_index("name")
    for name in ("laion_nsfw_datacomp_l14", "aesthetic_datacomp_l14"):
        assert bool(cat.loc[name, "simulated"]), name
        assert "SIMULATED" in cat.loc[name, "description"]
