"""transformers backend: tiny random CLIP and SigLIP written by save_pretrained, the demo's real photos embedded
through them, stored vectors cross-checked against direct get_image_features / get_text_features calls."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_fixtures  # noqa: E402

from audit.store import Store, StoreError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
F16_TOL = 2e-3  # float16 storage of unit vectors: |error| per component <= 2^-11 ~ 4.9e-4, plus fp32 noise
QUIET = {"progress": False, "echo": lambda s: None, "workers": 0, "precision": "fp32"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_models")
    return {"clip": hf_fixtures.tiny_clip(root / "tiny-clip"), "siglip": hf_fixtures.tiny_siglip(root / "tiny-siglip"),
            "bert": hf_fixtures.tiny_bert(root / "tiny-bert")}


def photo_store(path: Path) -> str:
    """A folder store of the demo's real photos (25 images + 3 deliberately broken rows)."""
    from audit.demo.builder import write_photos
    from audit.ingest.run import ingest

    folder = path.parent / (path.stem + "_photos")
    write_photos(folder)
    ingest("folder", [str(folder)], store_path=str(path), source="sample-photos", progress=False, echo=lambda s: None)
    return str(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    """Built once; tests copy it (shutil) so each has its own store."""
    return photo_store(tmp_path_factory.mktemp("photos") / "p.duckdb")


def copy_store(src: str, dest_dir: Path) -> str:
    from audit.store import copy_store as copy

    return str(copy(src, dest_dir / "s.duckdb"))


def with_image(store: str):
    with Store.reader(store) as rd:
        return rd.df("SELECT uid, caption, image_ref FROM samples WHERE image_ref IS NOT NULL ORDER BY uid")


def direct_vectors(folder: Path, refs: list[str], captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Independent of audit.embed.transformers_backend: AutoModel + AutoProcessor as a model card shows, one sample at a time."""
    import torch
    from transformers import AutoModel, AutoProcessor

    from audit.images import load_image

    model = AutoModel.from_pretrained(str(folder)).eval()
    proc = AutoProcessor.from_pretrained(str(folder))
    siglip = model.config.model_type == "siglip"
    img, txt = [], []
    with torch.no_grad():
        for ref, cap in zip(refs, captions):
            px = proc(images=load_image(ref).convert("RGB"), return_tensors="pt")
            out = model.get_image_features(**px)
            img.append((out if isinstance(out, torch.Tensor) else out.pooler_output)[0].numpy())
            # one caption alone: CLIP needs no padding; SigLIP is always padded to max_length (model card)
            tok = proc(text=[cap], return_tensors="pt", truncation=True,
                       **({"padding": "max_length"} if siglip else {}))
            out = model.get_text_features(**tok)
            txt.append((out if isinstance(out, torch.Tensor) else out.pooler_output)[0].numpy())
    img, txt = np.array(img, np.float64), np.array(txt, np.float64)
    return img / np.linalg.norm(img, axis=1, keepdims=True), txt / np.linalg.norm(txt, axis=1, keepdims=True)


def test_clip_tokenizer_derived_from_open_clip_bpe_gives_open_clip_ids(models):
    import open_clip
    from transformers import AutoTokenizer

    caps = ["A tabby cat, looking to the side!", "Grace Hopper in 1984", "naïve café: 42 dogs & a hubble image"]
    hf = AutoTokenizer.from_pretrained(str(models["clip"]))(caps)["input_ids"]
    oc = open_clip.get_tokenizer("ViT-B-32")(caps)
    assert hf == [[int(t) for t in row if t] for row in oc]
    assert hf[1] == [49406, 5142, 21748, 530, 272, 280, 279, 275, 49407]  # <sot> grace hopper in 1 9 8 4 <eot>


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_embed_real_photos_equals_direct_transformers_calls(models, photos, tmp_path, family):
    from audit.embed.runner import embed
    from audit.store.vectors import load_matrix

    store = copy_store(photos, tmp_path)
    rep = embed(store, backend="transformers", model=str(models[family]), pretrained="ignored", batch_size=8, **QUIET)
    want = with_image(store)
    assert rep.embedded == len(want) == 25 and rep.failed == 0 and rep.random_weights
    assert rep.model.startswith(f"hf:tiny-{family}@") and len(rep.model.rsplit("@", 1)[1]) == 8
    with Store.reader(store) as rd:
        info = rd.model_info(rep.model)
        uids, img = load_matrix(rd, rep.model, column="img")
        uids_t, txt = load_matrix(rd, rep.model, column="txt")
        run = rd.df("SELECT * FROM runs WHERE stage='embed' AND name=?", [rep.model]).iloc[0]
    assert info["backend"] == "transformers" and info["dim"] == {"clip": 16, "siglip": 32}[family]
    assert info["arch"] == str(models[family].resolve()) and bool(info["random_weights"])
    params = json.loads(run["params"])
    assert params["backend"] == "transformers" and params["revision"] is None and len(params["digest"]) == 64
    assert rep.model.endswith(params["digest"][:8])
    assert uids == uids_t and sorted(uids) == sorted(want["uid"])
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=F16_TOL)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=F16_TOL)
    order = want.set_index("uid").loc[uids]
    d_img, d_txt = direct_vectors(models[family], order["image_ref"].tolist(), order["caption"].tolist())
    np.testing.assert_allclose(img, d_img, atol=F16_TOL)
    np.testing.assert_allclose(txt, d_txt, atol=F16_TOL)
    # random tiny models still map different photos to different vectors (not a constant)
    assert np.linalg.matrix_rank(img.astype(np.float64), tol=1e-3) > 5


def test_partial_run_then_resume_embeds_every_sample_exactly_once(models, photos, tmp_path):
    import pyarrow.parquet as pq

    from audit.embed.runner import embed

    store = copy_store(photos, tmp_path)
    first = embed(store, backend="transformers", model=str(models["clip"]), batch_size=4, flush_rows=4, limit=10,
                  **QUIET)
    second = embed(store, backend="transformers", model=str(models["clip"]), batch_size=4, flush_rows=4, **QUIET)
    third = embed(store, backend="transformers", model=str(models["clip"]), batch_size=4, flush_rows=4, **QUIET)
    assert (first.embedded, second.embedded, second.skipped_done) == (10, 15, 10)
    assert (third.embedded, third.skipped_done) == (0, 25)
    with Store.reader(store) as rd:
        folder = rd.model_dir(first.model)
    seen = Counter()
    for p in folder.glob("part-*.parquet"):
        seen.update(pq.read_table(p, columns=["uid"]).column("uid").to_pylist())
    assert set(seen) == set(with_image(store)["uid"]) and set(seen.values()) == {1}
    assert len(list(folder.glob("part-*.parquet"))) == 3 + 4  # ceil(10/4) + ceil(15/4) parts


def test_model_key_follows_the_files_not_the_folder_name(models, tmp_path):
    from safetensors.torch import load_file, save_file

    from audit.embed.transformers_backend import TransformersEmbedder

    a = TransformersEmbedder(str(models["clip"]), precision="fp32")
    same = shutil.copytree(models["clip"], tmp_path / "tiny-clip")
    (same / "README.md").write_text("not part of the checkpoint")
    assert TransformersEmbedder(str(same), precision="fp32").key == a.key
    other = shutil.copytree(models["clip"], tmp_path / "retrained" / "tiny-clip")
    weights = load_file(other / "model.safetensors")
    weights["visual_projection.weight"] += 0.01  # another checkpoint of the same architecture
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    b = TransformersEmbedder(str(other), precision="fp32")
    assert b.key != a.key and b.key.startswith("hf:tiny-clip@")
    assert a.arch == str(models["clip"].resolve()) and a.pretrained == f"sha256:{a.digest[:16]}"


def test_unsupported_architecture_and_bad_paths_are_refused_clearly(models, photos, tmp_path, capsys):
    from audit.cli import main
    from audit.embed.runner import make_embedder
    from audit.embed.transformers_backend import HFModelError

    with pytest.raises(HFModelError, match=r"unsupported architecture.*'bert'.*BertModel.*clip, siglip"):
        make_embedder("transformers", str(models["bert"]), None)
    with pytest.raises(HFModelError, match="no config.json"):
        make_embedder("transformers", str(tmp_path), None)
    with pytest.raises(HFModelError, match="is a file"):
        make_embedder("transformers", str(models["clip"] / "config.json"), None)
    with pytest.raises(HFModelError, match="not a hub id"):
        make_embedder("transformers", str(tmp_path / "nowhere"), None)
    store = copy_store(photos, tmp_path)
    assert main(["embed", "--store", store, "--backend", "transformers", "--model", str(models["bert"])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unsupported architecture") and "Traceback" not in err


def test_features_accepts_tensor_output_object_and_tuple():
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from audit.embed.transformers_backend import features

    x = torch.arange(6.0).reshape(2, 3)
    assert features(x) is x
    assert features(BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 4, 3), pooler_output=x)) is x
    assert features((torch.zeros(2, 4, 3), x)) is x


def test_text_encoder_reloads_the_checkpoint_for_prompts(models, photos, tmp_path):
    from audit.embed.runner import embed
    from audit.embed.textenc import text_encoder
    from audit.store.vectors import load_matrix

    src = shutil.copytree(models["siglip"], tmp_path / "tiny-siglip")
    store = copy_store(photos, tmp_path)
    key = embed(store, backend="transformers", model=str(src), **QUIET).model
    with Store.reader(store) as rd:
        encode, label = text_encoder(rd, key)
        uids, txt = load_matrix(rd, key, column="txt")
        caps = rd.df("SELECT uid, caption FROM samples").set_index("uid").loc[uids, "caption"].tolist()
    assert label == f"transformers {key} (RANDOM weights)"
    np.testing.assert_allclose(encode(caps), txt, atol=F16_TOL)  # prompts land in the stored text space
    cfg = json.loads((src / "config.json").read_text())
    cfg["logit_bias"] = 1.0  # any change of the files: a different checkpoint
    (src / "config.json").write_text(json.dumps(cfg))
    with Store.reader(store) as rd, pytest.raises(StoreError, match="changed since it was embedded"):
        text_encoder(rd, key)


def test_registration_does_not_import_transformers():
    code = ("import sys, audit.embed.runner, audit.embed.textenc; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad; assert 'transformers' in audit.embed.runner.BACKENDS")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_cli_hub_id_from_offline_cache_then_clip_score(models, photos, tmp_path, monkeypatch, capsys):
    """The hub path without network: a hub-cache layout (refs/main -> snapshot) in offline mode, through the
    CLI entry point (in-process: same argparse + embed + score code as `python -m audit`)."""
    import huggingface_hub.constants as hub

    from audit.cli import main
    from audit.embed.textenc import text_encoder

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--audit-test--tiny-clip"
    shutil.copytree(models["clip"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    store = copy_store(photos, tmp_path)
    base = ["embed", "--store", store, "--backend", "transformers", "--workers", "0", "--precision", "fp32"]
    assert main([*base, "--model", "audit-test/tiny-clip", "--batch-size", "8"]) == 0
    key = "hf:audit-test/tiny-clip@01234567"
    out = capsys.readouterr().out
    assert f"model: {key}" in out and "RANDOM WEIGHTS" in out
    assert main([*base, "--model", "audit-test/missing-model"]) == 1
    assert "error: cannot get 'audit-test/missing-model' from the Hugging Face hub" in capsys.readouterr().err
    assert main(["score", "clip", "--store", store, "--model", key]) == 0
    name = "clip_hf_audit_test_tiny_clip_01234567"
    with Store.reader(store) as rd:
        info = rd.model_info(key)
        run = rd.df("SELECT params FROM runs WHERE stage='embed' AND name=? AND status='done'", [key]).iloc[0]
        cat = rd.score_catalog().set_index("name")
        vals = rd.score_frame([name])
        encode, label = text_encoder(rd, key)  # prompts: the same snapshot, pinned to the recorded commit
    assert label.startswith(f"transformers {key}") and encode(["a photo of a cat"]).shape == (1, 16)
    assert (info["arch"], info["pretrained"]) == ("audit-test/tiny-clip", commit)
    assert json.loads(run["params"])["revision"] == commit
    assert bool(cat.loc[name, "random_weights"]) and cat.loc[name, "model"] == key
    assert vals[name].notna().sum() == 25


@pytest.mark.slow
def test_filter_preview_lists_the_transformers_clip_score(models, photos, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from audit.embed.runner import embed
    from audit.scores.base import run_score

    store = copy_store(photos, tmp_path)
    key = embed(store, backend="transformers", model=str(models["clip"]), **QUIET).model
    run_score("clip", store, model=key, params={}, echo=lambda s: None)
    monkeypatch.setenv("AUDIT_STORE", store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/filter_preview.py")
    at.run()
    assert not at.exception
    box = at.selectbox(key="score")
    name = f"clip_hf_tiny_clip_{key.rsplit('@', 1)[1]}"
    # the label names the score, where it came from and its random-weight flag
    assert f"{name} (computed)  [random weights]" in box.options, box.options
    box.set_value(name).run()
    assert not at.exception
    assert any("RANDOM weights" in w.value for w in at.warning)
