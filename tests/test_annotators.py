"""The annotators: caption lexicon word boundaries, domain parsing, NSFW and copyright evidence, zero-shot
decisions, and the face detector on real photos shipped in wheels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.annotators.base import MULTIPLE, UNKNOWN, run_annotator
from audit.store import Store


# ---- caption lexicon (methods.md §6.3) ---------------------------------------------------------------
@pytest.mark.parametrize("text, attribute, label", [
    ("the manager of the store", "caption_gender", UNKNOWN),       # "manager" is not "man"
    ("Women's running shoes", "caption_gender", "woman"),         # "Women's" is "woman"
    ("a man and a woman at a wedding", "caption_gender", MULTIPLE),
    ("the theme of the show", "caption_gender", UNKNOWN),           # "he" inside "the"/"theme" does not count
    ("she is holding her phone", "caption_gender", "woman"),        # two words of one group: still one group
    ("portrait of a non-binary artist", "caption_gender", "non-binary"),
    ("Men in suits", "caption_gender", "man"),
    ("a gay couple", "caption_orientation", "gay"),
    ("gayety", "caption_orientation", UNKNOWN),
    ("an African-American family", "caption_race", "african"),
    ("Asian American students", "caption_race", "asian"),
    ("a Jewish wedding", "caption_religion", "jewish"),
    ("jewelry box", "caption_religion", UNKNOWN),
    ("old greek coins on a dark background", "caption_age", UNKNOWN),   # bare "old" is not a person word
    ("an old man with a cane", "caption_age", "older"),
    ("an older woman in navy uniform", "caption_age", "older"),
    ("middle-aged couple", "caption_age", "middle-aged"),
    ("kids playing", "caption_age", "child"),
    ("", "caption_gender", UNKNOWN),
    (None, "caption_gender", UNKNOWN),
])
def test_caption_lexicon(text, attribute, label):
    from audit.annotators.caption import label_caption, label_captions

    assert label_caption(text, attribute) == label
    assert label_captions(pd.Series([text], dtype=object), attribute)[0] == label


# ---- domain ---------------------------------------------------------------------------------------------
def test_domain_parsing_offline():
    from audit.annotators.domain import parse_urls

    p = parse_urls(pd.Series(["https://img3.bbc.co.uk/a.jpg", "http://x.example.de:8080/p", "https://app.io/x",
                              "https://cdn.shopify.com/s/1.jpg", "", None, "http://1.2.3.4/x"], dtype=object))
    assert p["registered"].tolist()[:4] == ["bbc.co.uk", "example.de", "app.io", "shopify.com"]
    assert p["suffix"].tolist()[:4] == ["co.uk", "de", "io", "com"]
    assert p["cctld"].tolist() == ["uk", "de", "generic", "generic", UNKNOWN, UNKNOWN, UNKNOWN]


# ---- NSFW --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, tier", [("nude beach", "explicit"), ("a sexy dress", "suggestive"),
                                        ("Essex countryside", "none"), ("Sussex University", "none"),
                                        ("XXL t-shirt", "none"), ("lingerie set", "suggestive"), ("  ", UNKNOWN)])
def test_nsfw_caption_lexicon(text, tier):
    from audit.annotators.nsfw import caption_tier, caption_tiers

    assert caption_tier(text) == tier
    assert caption_tiers(pd.Series([text]))[0] == tier


def test_nsfw_domain_and_combination():
    from audit.annotators.nsfw import combine, domain_flag

    assert domain_flag("http://hotpics.xxx/a.jpg")[0] == "adult"
    assert domain_flag("https://adultimg.example/a.jpg")[0] == "adult"          # keyword in the name
    assert domain_flag("https://www.pornhub.com/x")[0] == "adult"
    assert domain_flag("https://flickr.com/p/1.jpg") == ("none", "")
    assert domain_flag(None)[0] == UNKNOWN
    assert domain_flag("https://my-shop.example/p", frozenset({"my-shop.example"}))[0] == "adult"
    img = np.array(["nsfw", "safe", "safe", UNKNOWN, UNKNOWN, "uncertain", UNKNOWN], dtype=object)
    cap = np.array(["none", "none", "explicit", "none", "suggestive", "none", UNKNOWN], dtype=object)
    dom = np.array(["none", "none", "none", "none", "none", "none", UNKNOWN], dtype=object)
    label, conf = combine(img, cap, dom)
    assert label.tolist() == ["nsfw", "safe", "nsfw", "safe", "nsfw", UNKNOWN, UNKNOWN]
    assert conf.tolist() == [0.9, 0.9, 0.9, 0.5, 0.6, 0.0, 0.0]
    # with the LAION embedding detector: it flags on its own, judges image-less samples safe (0.8), and never
    # overrules a judged image's "safe" into unknown
    emb = np.array(["safe", "nsfw", "safe", "safe", "safe", "nsfw", "safe"], dtype=object)
    label, conf = combine(img, cap, dom, emb)
    assert label.tolist() == ["nsfw", "nsfw", "nsfw", "safe", "nsfw", "nsfw", "safe"]
    assert conf.tolist() == [0.9, 0.9, 0.9, 0.8, 0.6, 0.9, 0.8]


def test_nsfw_annotator_uses_a_stored_laion_nsfw_score(make_store):
    from audit.annotators.base import run_annotator
    from audit.store import Store

    samples = [{"uid": f"u{i}", "caption": c, "url": "https://photos.example.org/a.jpg"}
               for i, c in enumerate(["a cat", "a dog", "nude beach", "a tree"])]
    path = make_store(samples, scores={"laion_nsfw_datacomp_l14": [0.9, 0.1, 0.2, np.nan]})
    run_annotator("nsfw", path, params={"high": 0.8, "low": 0.2, "adult_domains": [], "embedding_score": None},
                  echo=lambda s: None)
    with Store.reader(path) as st:
        got = st.df("SELECT uid, attribute, label, method FROM annotations WHERE attribute IN "
                    "('nsfw', 'nsfw_embedding') ORDER BY uid, attribute")
    lab = {(r.uid, r.attribute): r.label for r in got.itertuples()}
    assert [lab[(f"u{i}", "nsfw_embedding")] for i in range(4)] == ["nsfw", "safe", "safe", UNKNOWN]
    # u0: embedding flags it; u1: embedding-safe; u2: the caption flags it; u3: text-only safe
    assert [lab[(f"u{i}", "nsfw")] for i in range(4)] == ["nsfw", "safe", "nsfw", "safe"]
    why = got.set_index(["uid", "attribute"])["method"]
    assert "embedding laion_nsfw_datacomp_l14 p=0.90" in why[("u0", "nsfw")]


# ---- copyright -------------------------------------------------------------------------------------------------
def test_copyright_domains_and_markers():
    from audit.annotators.copyright import caption_marker, combine, domain_kind

    assert domain_kind("https://image.shutterstock.com/x.jpg")[0] == "stock"
    assert domain_kind("https://stock.adobe.com/images/1")[0] == "stock"
    assert domain_kind("https://i.etsystatic.com/1.jpg")[0] == "shop-cdn"
    assert domain_kind("https://flickr.com/1.jpg")[0] == "none"
    assert domain_kind("")[0] == UNKNOWN
    assert caption_marker("sunset - © Getty Images") == "©"
    assert caption_marker("mountain stock photo").lower() == "stock photo"
    assert caption_marker("Photo: Shutterstock").lower() == "shutterstock"
    assert caption_marker("(c) 2019 Jane Doe")
    assert caption_marker("a cat on a mat") == ""
    assert caption_marker("   ") is None
    got = combine(np.array(["stock", "none", "none", UNKNOWN], dtype=object),
                  np.array(["none", "marker", "none", UNKNOWN], dtype=object),
                  np.array(["none", "none", "none", UNKNOWN], dtype=object))
    assert got.tolist() == ["copyright-relevant", "copyright-relevant", "none", UNKNOWN]


# ---- zero-shot ------------------------------------------------------------------------------------------------
def test_zero_shot_decision_rule():
    from audit.annotators.zeroshot import NONE, decide, label_probabilities

    labels = ["woman", "man", NONE]
    lab, conf, why = decide(np.array([[0.7, 0.2, 0.1], [0.45, 0.4, 0.15], [0.1, 0.1, 0.8]]), labels, 0.2)
    assert lab.tolist() == ["woman", UNKNOWN, UNKNOWN] and why.tolist() == ["", "abstained", "no person"]
    assert conf.tolist() == [0.7, 0.0, 0.0]
    # two classes of one label add up: img = e0, classes e0 (woman), e1 (woman), e2 (man)
    img = np.eye(3, dtype=np.float32)[:1]
    text = np.eye(3, dtype=np.float32)
    p = label_probabilities(img, text, np.array([0, 0, 1]), 2, scale=1.0)
    e = np.exp(1.0)
    assert p[0].tolist() == pytest.approx([(e + 1) / (e + 2), 1 / (e + 2)])


def test_zeroshot_and_copyright_on_demo_store_are_flagged_and_recover_simulated_truth(demo_store):
    with Store.reader(demo_store) as st:
        cat = st.attribute_catalog().set_index("attribute")
        ann = st.df("SELECT uid, label FROM annotations WHERE attribute = 'zeroshot_gender'")
    for a in ("zeroshot_gender", "zeroshot_age", "zeroshot_race", "copyright_visual", "copyright"):
        assert bool(cat.loc[a, "random_weights"]), a        # simulated text encoder: flagged
        assert "SIMULATED" in cat.loc[a, "method"]
    for a in ("copyright_domain", "copyright_caption", "nsfw", "domain_cctld", "caption_gender"):
        assert not bool(cat.loc[a, "random_weights"]), a
    assert not bool(cat.loc["domain_cctld", "imputed"]) and bool(cat.loc["zeroshot_gender", "imputed"])
    p = Path(demo_store)
    truth = pd.read_parquet(p.parent / f"{p.stem}_inputs" / "sim" / "truth.parquet")
    truth = truth[~truth["uid"].duplicated(keep=False)]
    d = ann.merge(truth[["uid", "gender"]], on="uid")
    persons = d[d["gender"] != "none"]
    # a pipeline check in the simulated space (not a claim about CLIP): labelled persons match the hidden gender
    known = persons[persons["label"] != UNKNOWN]
    assert len(known) > 0.9 * len(persons) and (known["label"] == known["gender"]).mean() > 0.95
    assert (d.loc[d["gender"] == "none", "label"] == UNKNOWN).mean() > 0.95


def test_every_annotator_ran_in_the_demo(demo_store):
    from audit.annotators import ANNOTATORS

    assert {"caption", "faces", "zeroshot", "nsfw", "copyright", "domain"} <= set(ANNOTATORS.names())
    with Store.reader(demo_store) as st:
        attrs = set(st.attributes())
        n = st.count("samples")
        per = st.df("SELECT attribute, count(*) AS n FROM annotations GROUP BY attribute").set_index("attribute")["n"]
        faces = st.df("SELECT DISTINCT label FROM annotations WHERE attribute = 'face_count'")["label"].tolist()
    for cls in (ANNOTATORS.get(a) for a in ("caption", "faces", "zeroshot", "nsfw", "copyright", "domain")):
        assert set(cls.attributes) <= attrs, cls.name
        for a in cls.attributes:
            assert per[a] == n, a                 # one row per sample, explicit unknown included
    assert faces == [UNKNOWN]                     # the simulated rows have no stored images


# ---- the real photos from the wheels --------------------------------------------------------------------------
# photo_store: tests/conftest.py (real photos shipped in wheels, ingested as a folder)


def _labels(store, attribute):
    with Store.reader(store) as st:
        got = st.df("SELECT s.image_ref, a.label, a.confidence, a.method FROM annotations a JOIN samples s USING (uid) "
                    "WHERE a.attribute = ?", [attribute])
    got["file"] = got["image_ref"].map(lambda r: Path(r).name)
    return got.set_index("file")


@pytest.mark.slow
def test_faces_on_real_photos(photo_store):
    run_annotator("faces", photo_store, params={"detector": "haar", "min_gender_confidence": 80.0},
                  echo=lambda s: None)
    count = _labels(photo_store, "face_count")["label"]
    assert count["astronaut.png"] == "1" and count["grace_hopper.jpg"] == "1"
    for f in ("coffee.png", "rocket.png", "chelsea.png", "coins.png", "moon.png", "brick.png"):
        assert count[f] == "0", f
    bracket = _labels(photo_store, "face_perceived_age_bracket")
    assert bracket.loc["grace_hopper.jpg", "label"] == "older"          # Grace Hopper, photographed aged ~78
    assert bracket.loc["coffee.png", "label"] == UNKNOWN and "no face" in bracket.loc["coffee.png", "method"]
    area = _labels(photo_store, "face_area_share")["label"]
    assert area["coffee.png"] == "none" and area["astronaut.png"] != "none"
    gender = _labels(photo_store, "face_perceived_gender")
    assert set(gender["label"]) <= {"woman", "man", UNKNOWN}
    assert (gender.loc[count[count != "1"].index, "label"] == UNKNOWN).all()   # the single-face rule


@pytest.mark.slow
def test_nsfw_image_model_on_real_photos(photo_store):
    run_annotator("nsfw", photo_store, params={"high": 0.8, "low": 0.2, "adult_domains": []}, echo=lambda s: None)
    img = _labels(photo_store, "nsfw_image")
    assert len(img) == 25 and (img["label"] != "nsfw").all() and (img["label"] != UNKNOWN).all()
    assert img["method"].str.contains("p_nsfw=").all()
    assert (_labels(photo_store, "nsfw")["label"] == "safe").all()
    from audit.annotators.nsfw import image_probabilities

    probs, errors = image_probabilities([str(Path(img["image_ref"].iloc[0])), "/no/such/file.png"])
    assert 0.0 <= probs[0] <= 1.0 and np.isnan(probs[1]) and errors[1]


def test_annotators_cli_on_photo_store(photo_store, monkeypatch, capsys):
    import sys

    from audit.cli import main

    for argv in (["annotate", "domain", "--store", photo_store], ["annotate", "copyright", "--store", photo_store]):
        monkeypatch.setattr(sys, "argv", ["audit", *argv])
        assert main(argv) == 0
    assert "domain_registered: example.org 25" in capsys.readouterr().out
    vis = _labels(photo_store, "copyright_visual")
    assert (vis["label"] == UNKNOWN).all() and vis["method"].str.contains("no --model").all()
    monkeypatch.setattr(sys, "argv", ["audit", "annotate", "zeroshot", "--store", photo_store])
    assert main(["annotate", "zeroshot", "--store", photo_store]) == 1        # needs --model: a message, no traceback
    assert "needs --model" in capsys.readouterr().err


def test_streamed_zeroshot_equals_the_in_memory_computation(demo_store, tmp_path):
    """The vector-local runner (the model's vector parts in small batches; a sample with a NaN vector, one with
    no vector, a vector of a non-sample) writes exactly the rows the whole-pool computation gives."""
    from audit.annotators.zeroshot import AGE, GENDER, RACE_FAIRFACE7, label_vectors, prepare_tasks, without_vectors
    from audit.engine import Engine
    from audit.store import copy_store
    from audit.store.vectors import load_matrix, write_vectors

    path = str(tmp_path / "z.duckdb")
    copy_store(demo_store, path)
    with Store.writer(path) as st:
        st.add_samples(pd.DataFrame({"uid": ["zz0", "zz1", "zz2"], "caption": "x", "source": "test"}))
        uids, img = load_matrix(st, "datacomp_l14", column="img")
        extra = np.stack([np.full(img.shape[1], np.nan), img[0], img[1]]).astype(np.float32)
        write_vectors(st, "datacomp_l14", "extra", ["zz0", "zz1", "not-a-sample"], extra, extra)
    run_annotator("zeroshot", path, model="datacomp_l14", params={"margin": 0.2, "race_set": "fairface7"},
                  force=True, echo=lambda s: None, engine=Engine("local", batch_rows=97))
    with Store.reader(path) as st:
        got = st.df("SELECT uid, attribute, label, confidence, method FROM annotations "
                    "WHERE attribute LIKE 'zeroshot_%' ORDER BY attribute, uid")
        n = st.count("samples")
        prepared, _, flagged = prepare_tasks(st, "datacomp_l14", {"zeroshot_gender": GENDER, "zeroshot_age": AGE,
                                                                  "zeroshot_race": RACE_FAIRFACE7}, margin=0.2)
        every, vec = load_matrix(st, "datacomp_l14", column="img")      # the whole pool's vectors at once
        samples = set(st.sample_uids())
    keep = np.array([u in samples for u in every])
    missing = sorted(samples - set(every))
    want = pd.concat([label_vectors(np.array(every, dtype=object)[keep], vec[keep], prepared),
                      without_vectors(np.array(missing, dtype=object), prepared)], ignore_index=True)
    want = want.sort_values(["attribute", "uid"]).reset_index(drop=True)
    assert flagged and len(got) == 3 * n == len(want)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    by = got[got["attribute"] == "zeroshot_gender"].set_index("uid")
    assert by.loc["zz0", "label"] == by.loc["zz2", "label"] == UNKNOWN
    assert by.loc["zz0", "method"].endswith("; no embedding") and by.loc["zz2", "method"].endswith("; no embedding")
    assert by.loc["zz1", "label"] == by.loc[uids[0], "label"]      # the same vector, the same label
    assert "not-a-sample" not in set(got["uid"])


def test_a_random_weight_text_model_is_labelled_so_and_flags_zero_shot_results(demo_store):
    """--text-model ARCH:none embeds prompts with random weights: the label says so, so zero-shot is flagged."""
    from audit.annotators.zeroshot import encoder_flags
    from audit.embed.textenc import text_encoder

    encode, label = text_encoder(None, "unused", text_model="ViT-B-32:none")
    assert "RANDOM" in label and encode(["a photo of a dog"]).shape == (1, 512)
    with Store.reader(demo_store) as st:
        assert not st.model_info("datacomp_l14")["random_weights"]
        assert encoder_flags(st, "datacomp_l14", label)
