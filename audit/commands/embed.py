"""`python -m audit embed`: image/text embeddings of every sample with an image (audit/embed)."""
from __future__ import annotations


from audit import engine
from audit.cli import store_arg


def configure(p) -> None:
    from_defaults = ("ViT-B-32", "laion2b_s34b_b79k")
    store_arg(p)
    p.add_argument("--backend", default="open_clip",
                   help="open_clip, or transformers for Hugging Face CLIP/SigLIP (default: %(default)s)")
    p.add_argument("--model", default=from_defaults[0],
                   help="open_clip: architecture name, or a local open_clip config .json; transformers: a hub id "
                        "(e.g. openai/clip-vit-base-patch32[@revision]) or a folder written by save_pretrained "
                        "(default: %(default)s)")
    p.add_argument("--pretrained", default=from_defaults[1],
                   help="open_clip only (ignored by transformers, whose --model is the checkpoint): pretrained tag, "
                        "a local checkpoint path, or 'none' for random weights (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None,
                   help="image decoding processes (default: min(2, cores); on Ray: per Ray worker, default 0)")
    p.add_argument("--flush-rows", type=int, default=2048,
                   help="rows per written vector part (resume unit); on Ray, the default of --batch-rows "
                        "(fewer rows on pools of under 16 parts, so every worker has slices)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto uses bf16 autocast only where a timed trial shows it is faster")
    engine.add_arguments(p)      # --engine ray: a part per slice of --batch-rows samples (default --flush-rows)
    p.set_defaults(func=run)


def run(a) -> int:
    from audit.embed.runner import embed

    embed(a.store, model=a.model, pretrained=a.pretrained, backend=a.backend, batch_size=a.batch_size,
          workers=a.workers, precision=a.precision, flush_rows=a.flush_rows, engine=engine.from_args(a))
    return 0
