"""Tiny random CLIP and SigLIP checkpoints written with ``save_pretrained``, built offline (no model hub).

* CLIP: the tokenizer files (vocab.json + merges.txt) are derived from the BPE vocabulary that the
  open_clip wheel ships (``open_clip/bpe_simple_vocab_16e6.txt.gz``), the same list OpenAI's CLIP
  tokenizer is built from, so token ids equal open_clip's (tests check this).
* SigLIP: a sentencepiece unigram model trained on a few captions (``sentencepiece`` package).
* Both: small text/vision configs (hidden 32, 2 layers, 32x32 images), weights from a fixed seed, and
  ``audit_random_weights: true`` in config.json so the backend labels every result as random-weight.

Used by tests/test_hf_backend.py and bench/bench_embed_backends.py (which asks for ViT-B/32-sized configs).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

# Captions the sentencepiece model is trained on (the demo photos' captions plus a few prompts).
SP_CORPUS = [
    "portrait of astronaut Eileen Collins, a woman in an orange NASA flight suit",
    "black and white photo of a man with a camera on a tripod", "a cup of coffee on a saucer with a spoon",
    "a tabby cat looking to the side", "a rocket on the launch pad against a blue sky",
    "old greek coins on a dark background", "the surface of the moon with craters",
    "a scanned page of printed text", "hand written text on a board", "a clock on a wall, black and white",
    "silhouette of a horse", "hubble deep field image of distant galaxies", "microscope image of stained tissue",
    "photograph of a human retina", "microscopy image of a cell", "a colour wheel with the full hue range",
    "texture of a brick wall", "close-up texture of grass", "texture of gravel stones",
    "the scikit-image logo, a snake", "retinal image with microaneurysms", "a motorcycle in a garage",
    "portrait of computer scientist Grace Hopper, an older woman in navy uniform",
    "a chinese temple with trees in front", "a pink flower with a bee", "a photo of a dog", "a photo of a person",
]


def clip_bpe_files(folder: Path) -> Path:
    """Write vocab.json + merges.txt of OpenAI CLIP's BPE (from open_clip's wheel) into ``folder``."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # as open_clip.tokenizer.SimpleTokenizer
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def tiny_clip(folder: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2,
              image_size: int = 32, patch: int = 8, projection: int = 16) -> Path:
    """A random CLIPModel + CLIPProcessor saved into ``folder`` (default: ~1.8M parameters, mostly token
    embeddings of the 49,408-token vocabulary)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(clip_bpe_files(folder / "_bpe")))
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch),
        projection_dim=projection, audit_random_weights=True)
    _seeded(seed)
    model = CLIPModel(cfg).eval()
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                                            crop_size={"height": image_size, "width": image_size}),
                         tokenizer=tok)
    model.save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    for f in (folder / "_bpe").iterdir():
        f.unlink()
    (folder / "_bpe").rmdir()
    return folder


def train_spm(folder: Path, vocab_size: int = 120) -> Path:
    """A sentencepiece unigram model trained on SP_CORPUS (ids: 0 <unk>, 1 </s>; pad = </s> as SigLIP's)."""
    import io

    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([c.lower() for c in SP_CORPUS]), model_writer=buf,
                                   vocab_size=vocab_size, model_type="unigram", unk_id=0, eos_id=1, bos_id=-1,
                                   pad_id=-1, hard_vocab_limit=False, minloglevel=2)
    out = folder / "spiece.model"
    out.write_bytes(buf.getvalue())
    return out


def tiny_siglip(folder: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2,
                image_size: int = 32, patch: int = 8) -> Path:
    """A random SiglipModel + SiglipProcessor saved into ``folder``."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    tok = SiglipTokenizer(vocab_file=str(train_spm(folder / "_spm")), model_max_length=64)
    cfg = SiglipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=64,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch),
        audit_random_weights=True)
    _seeded(seed)
    model = SiglipModel(cfg).eval()
    proc = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": image_size, "width": image_size}),
                           tokenizer=tok)
    model.save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    (folder / "_spm" / "spiece.model").unlink()
    (folder / "_spm").rmdir()
    return folder


def tiny_bert(folder: Path) -> Path:
    """A tiny random BERT (text only): an architecture the transformers backend must refuse clearly."""
    from transformers import BertConfig, BertModel

    _seeded(0)
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(folder))
    return folder
