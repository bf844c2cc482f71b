"""The dataset-origin probe (audit.analyses.origin): hand-computed numbers, sklearn cross-checks, the stage and CLI."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from audit.analyses.origin import probe as O
from audit.analyses.origin import run as R
from audit.store import Store
from audit.store.results import origin_result


def _wilson_by_hand(k, n, z=1.959963984540054):
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    return max(0.0, centre - half), min(1.0, centre + half)


def _sources(n_per, dim, offset, seed=0, k=3):
    """k sources of n_per vectors each: N(0, I/dim); source j > 0 is shifted by offset · e_j."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((k * n_per, dim)) / math.sqrt(dim)
    y = np.repeat(np.arange(k), n_per)
    for j in range(1, k):
        X[y == j, j] += offset
    return X, y


# ---- the probe on synthetic features -------------------------------------------------------------------
def test_identically_distributed_sources_cover_chance():
    X, y = _sources(1000, 32, offset=0.0)
    rec, _ = O.probe_family(X, y, ["a", "b", "c"], seed=0)
    assert rec["split"].startswith("stratified hold-out") and rec["n_test"] == 750
    assert rec["chance"] == pytest.approx(250 / 750)
    assert rec["ci_low"] <= rec["chance"] <= rec["ci_high"]
    assert not rec["above_chance"]
    assert rec["control"]["at_chance"]


def test_injected_style_offset_is_found():
    X, y = _sources(1000, 32, offset=1.0)
    rec, _ = O.probe_family(X, y, ["a", "b", "c"], seed=0)
    assert rec["accuracy"] >= 0.97 and rec["macro_f1"] >= 0.97 and rec["above_chance"]
    # the shuffled-label control sits at chance even though the real labels are separable
    c = rec["control"]
    assert c["ci_low"] <= rec["chance"] <= c["ci_high"] and c["at_chance"]
    cm = np.asarray(rec["confusion"])
    assert cm.sum() == rec["n_test"] and np.trace(cm) == rec["correct"]


def test_accuracy_interval_is_wilson_on_correct_of_n_test():
    X, y = _sources(500, 8, offset=0.25, seed=3, k=2)
    rec = O.evaluate(X, y, 2, seed=0).record
    lo, hi = _wilson_by_hand(rec["correct"], rec["n_test"])
    assert rec["accuracy"] == rec["correct"] / rec["n_test"]
    assert rec["ci_low"] == pytest.approx(lo, abs=1e-12) and rec["ci_high"] == pytest.approx(hi, abs=1e-12)


def test_holdout_accuracy_equals_sklearn_pipeline_on_the_same_split():
    """Differential check: the same split and estimator built directly with scikit-learn."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _sources(600, 16, offset=0.3, seed=5)
    rec = O.evaluate(X, y, 3, seed=7, C=0.5).record
    tr, te = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=7)
    m = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=300, tol=1e-3)).fit(X[tr], y[tr])
    assert rec["correct"] == int((m.predict(X[te]) == y[te]).sum())


def test_small_pool_uses_kfold_and_scores_every_sample_once():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _sources(30, 6, offset=0.8, seed=2, k=2)
    out = O.evaluate(X, y, 2, seed=1)
    rec = out.record
    assert rec["split"] == "stratified 5-fold (out-of-fold predictions)"
    assert rec["n_test"] == 60 and sorted(out.rows.tolist()) == list(range(60))
    pred = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300, tol=1e-3)),
                             X, y, cv=StratifiedKFold(5, shuffle=True, random_state=1))
    assert rec["correct"] == int((pred == y).sum())


def test_chance_is_the_majority_share():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 4))
    y = (np.arange(2000) < 1400).astype(int)      # 70% / 30%
    rec = O.evaluate(X, y, 2, seed=0).record
    assert rec["chance"] == pytest.approx(0.7)
    assert rec["ci_low"] <= 0.7 + 1e-9            # nothing to learn: not above the majority share


def test_controls_are_judged_family_wise():
    """Ten controls on 600 test samples, chance 1/3: 0.38 lies above a single 95% interval (2.4 sd) but not
    above the Bonferroni interval for ten tests (z = 2.807); 0.45 lies above both."""
    from scipy.stats import norm

    fams = {f"f{i}": {"status": "ok", "control": {"accuracy": 0.3, "n_test": 600, "chance": 1 / 3}} for i in range(8)}
    fams["hi"] = {"status": "ok", "control": {"accuracy": 0.38, "n_test": 600, "chance": 1 / 3}}
    fams["leak"] = {"status": "ok", "control": {"accuracy": 0.45, "n_test": 600, "chance": 1 / 3}}
    fams["skipped"] = {"status": "skipped"}
    assert _wilson_by_hand(228, 600)[0] > 1 / 3                       # the naive 95% check would alarm
    assert O.adjust_controls(fams) == 10
    z = norm.ppf(1 - 0.05 / 20)
    assert fams["hi"]["control"]["z_adjusted"] == round(z, 4)
    assert fams["hi"]["control"]["ci_low_adjusted"] == pytest.approx(_wilson_by_hand(228, 600, z)[0])
    assert fams["hi"]["control"]["at_chance"] and not fams["leak"]["control"]["at_chance"]
    assert all(fams[f"f{i}"]["control"]["at_chance"] for i in range(8))


def test_typical_samples_order_by_true_class_probability():
    out = O.ProbeOutcome(record={}, rows=np.array([0, 1, 2, 3]),
                         proba=np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]]), coef=None)
    y = np.array([0, 0, 1, 1])
    t = O.typical_samples(out, y, ["u0", "u1", "u2", "u3"], ["a", "b"], k=1)
    assert t["a"]["most"] == [["u0", 0.9, "a"]] and t["a"]["least"] == [["u1", 0.6, "a"]]
    assert t["b"]["most"] == [["u2", 0.8, "b"]] and t["b"]["least"] == [["u3", 0.3, "a"]]


def test_coefficients_name_the_marking_feature():
    rng = np.random.default_rng(0)
    present = rng.random((600, 3)) < 0.3
    y = np.zeros(600, int)
    y[present[:, 1]] = 1                      # class b is exactly "concept 'dog' present"
    rec, _ = O.probe_family(present.astype(float), y, ["a", "b"], seed=0, feature_names=["cat", "dog", "car"],
                            scale=False)
    assert rec["coefficients"]["b"][0][0] == "dog" and rec["coefficients"]["a"][-1][0] == "dog"


def test_concept_presence_by_hand():
    img = np.array([[1.0, 0.0], [1.0, 1.0]])
    txt = np.array([[1.0, 0.0], [0.0, 1.0]])
    present, p = O.concept_presence(img, txt, scale=100.0, min_p=0.1)
    # row 0: softmax([100, 0]) -> only the first; row 1: equal cosines -> 0.5 each, both present
    assert present.tolist() == [[True, False], [True, True]]
    assert p[1].tolist() == [0.5, 0.5] and p[0, 1] == pytest.approx(math.exp(-100) / (1 + math.exp(-100)))
    assert O.concept_prompts(["dog", "apple"]) == ["a photo of a dog.", "a photo of an apple."]


def test_concept_shares_with_wilson():
    present = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], bool)
    y = np.array([0, 0, 1, 1])
    s = O.concept_shares(present, y, ["a", "b"], ["dog", "cat"])
    assert s["a"]["shares"]["dog"][0] == 1.0 and s["a"]["shares"]["cat"][0] == 0.5
    assert s["a"]["mean_present"] == 1.5 and s["b"]["mean_present"] == 0.5
    lo, hi = _wilson_by_hand(1, 2)
    assert s["a"]["shares"]["cat"][1:] == [round(lo, 4), round(hi, 4)]


def test_usable_classes_and_cap():
    labels = np.array(["x"] * 50 + ["y"] * 20 + ["z"] * 3, dtype=object)
    ok, notes = O.usable_classes(labels)
    assert ok == ["x", "y"] and notes == ["z left out: 3 samples (< 10)"]
    pick = O.cap_per_class(labels, 10, np.random.default_rng(0))
    assert pd.Series(labels[pick]).value_counts().to_dict() == {"x": 10, "y": 10, "z": 3}


# ---- the stage on the demo store ------------------------------------------------------------------------
def test_demo_store_probe(demo_store):
    with Store.reader(demo_store) as st:
        res = origin_result(st, by="source")
    assert res is not None and res["status"] == "ok" and "not comparable" in res["note"]
    fams = res["families"]
    ok = {k: v for k, v in fams.items() if v["status"] == "ok"}
    for key, rec in ok.items():
        assert {"accuracy", "ci_low", "ci_high", "chance", "n_test"} <= set(rec), key
        assert rec["ci_low"] <= rec["accuracy"] <= rec["ci_high"]
        assert rec["control"]["at_chance"], f"{key}: shuffled control above chance"
    # the simulator adds a per-source image style direction: the image probe finds it
    img = fams["datacomp_l14 · image"]
    assert img["accuracy"] >= 0.95 and img["simulated"] and img["classes"] == ["sim-commonpool", "sim-laion", "sim-cc"]
    # concepts are drawn independently of the source: the concept probe has nothing to find
    con = fams["datacomp_l14 · concepts"]
    assert con["ci_low"] <= con["chance"] + 0.05
    assert res["concepts"]["datacomp_l14"]["encoder"].startswith("simulated text encoder")
    # no stored images in a photo-less demo store: the transformation families say why they were skipped
    assert fams["mean_rgb"]["status"] == "skipped" and "images" in fams["mean_rgb"]["message"]
    # typical samples: k per class, most typical first
    t = img["typical"]["sim-cc"]["most"]
    assert len(t) == O.TYPICAL_K and t[0][1] >= t[-1][1]


def test_families_table_and_confusion_frame(demo_store):
    with Store.reader(demo_store) as st:
        res = origin_result(st)
    table = O.families_table(res)
    assert set(table["status"]) <= {"ok", "skipped"} and table["key"].is_unique
    rec = res["families"]["datacomp_l14 · image"]
    cm = O.confusion_frame(rec)
    assert np.allclose(cm.sum(axis=1), 1.0)


# ---- the stage on hand-made stores -----------------------------------------------------------------------
def _vector_store(make_store, sources, dim=8, offset=0.0, seed=0, name="o.duckdb"):
    rng = np.random.default_rng(seed)
    samples, uids, img = [], [], []
    for j, (src, n) in enumerate(sources.items()):
        for i in range(n):
            u = f"{src}-{i:05d}"
            samples.append({"uid": u, "caption": f"photo number {i} of {src.split('-')[0]}", "source": src})
            v = rng.standard_normal(dim) / math.sqrt(dim)
            v[j % dim] += offset
            uids.append(u)
            img.append(v)
    img = np.asarray(img, np.float32)
    txt = rng.standard_normal(img.shape).astype(np.float32)
    return make_store(samples, vectors={"m": (uids, img, txt)}, name=name)


def test_fewer_than_two_sources_gives_a_clear_message(make_store, capsys):
    from audit.cli import main

    path = _vector_store(make_store, {"only": 40})
    res = R.run_origin(path, R.OriginParams(families=("image",)), echo=lambda s: None)
    assert res["status"] == "too_few_classes" and "at least two source classes" in res["message"]
    assert main(["origin", "--store", path, "--families", "image"]) == 1
    assert "at least two source classes" in capsys.readouterr().out


def test_cli_writes_json_and_reuses_the_run(make_store, tmp_path, capsys):
    from audit.cli import main

    path = _vector_store(make_store, {"a-src": 60, "b-src": 60}, offset=2.0)
    out = tmp_path / "origin.json"
    args = ["origin", "--store", path, "--out", str(out), "--families", "image,text,caption_stats"]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    for key in ("m · image", "m · text", "caption_stats"):
        assert {"accuracy", "ci_low", "ci_high", "chance", "n_test"} <= set(doc["families"][key])
    assert doc["families"]["m · image"]["accuracy"] >= 0.95          # offset 2.0 on one axis
    assert doc["families"]["m · text"]["accuracy"] < 0.75             # text vectors are pure noise
    assert "m · concepts" not in doc["families"]
    assert main(args) == 0
    assert "reusing it" in capsys.readouterr().out
    assert main(["origin", "--store", path, "--families", "sift"]) == 1


def test_image_transformation_families_find_a_colour_cast(make_store, tmp_path):
    """Two sources of random-texture photos; one has a warm colour cast. mean_rgb finds it; HOG (which
    sees only greyscale gradients of identically drawn textures) stays near chance."""
    from PIL import Image

    rng = np.random.default_rng(0)
    samples = []
    for src, cast in (("warm", (60, 0, -60)), ("cool", (0, 0, 0))):
        for i in range(30):
            a = rng.integers(40, 216, (64, 80, 3)) + np.array(cast)
            p = tmp_path / f"{src}{i}.png"
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(p)
            samples.append({"uid": f"{src}{i:03d}", "caption": "a texture", "source": src, "image_ref": str(p)})
    samples.append({"uid": "broken", "caption": "x", "source": "warm", "image_ref": str(tmp_path / "missing.png")})
    path = make_store(samples, name="img.duckdb")
    res = R.run_origin(path, R.OriginParams(families=("mean_rgb", "hog")), echo=lambda s: None)
    rgb, hog = res["families"]["mean_rgb"], res["families"]["hog"]
    assert rgb["status"] == "ok" and rgb["accuracy"] >= 0.95 and rgb["split"].startswith("stratified 5-fold")
    assert hog["ci_low"] <= hog["chance"]
    assert rgb["n_failed_images"] == 1 and rgb["failed_images"][0][0] == "broken"
    assert rgb["coefficients"]["warm"][0][0] == "mean R"
