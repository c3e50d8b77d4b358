"""``ipgraph train ipadapter`` and ``ipgraph convert ipadapter``: argument parsing and printing only.

``add_subcommands(sub)`` is all ``ipgraph/cli.py`` calls; errors are printed as one sentence (exit code 1).
"""

from __future__ import annotations

import argparse
import sys

from .errors import TrainingError


def add_subcommands(sub) -> None:
    """Add ``train`` and ``convert`` (each with an ``ipadapter`` subcommand) to ipgraph's subparsers."""
    train = sub.add_parser("train", help="train models (ipgraph train ipadapter --help)")
    train_sub = train.add_subparsers(dest="train_command")
    train.set_defaults(func=lambda _args: train.print_help() or 2)
    p = train_sub.add_parser("ipadapter", help="train an IP-Adapter (reference recipe) into models/ipadapter",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help='JSON list of {"image_file": ..., "text": ...}')
    p.add_argument("--images", required=True, help="folder the image_file names are relative to")
    p.add_argument("--checkpoint", required=True, help="base model in models/checkpoints (file or diffusers folder)")
    p.add_argument("--clip-vision", required=True, help="image encoder in models/clip_vision")
    p.add_argument("--variant", choices=["base", "plus"], default="base")
    p.add_argument("--arch", choices=["sd15", "sdxl"], help="expected base model (checked; read from the weights)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer updates")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per update")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--resolution", type=int, help="training size (default 512 SD1.5, 1024 SDXL)")
    p.add_argument("--save-every", type=int, default=0, help="also save adapter and state every K steps")
    p.add_argument("--out", required=True, help="output name in models/ipadapter (NAME -> NAME.safetensors)")
    p.add_argument("--resume", help="continue from a .trainstate file a previous run wrote")
    p.add_argument("--init", help="start from an existing adapter in models/ipadapter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                   help="auto: fp16 on CUDA (frozen models in fp16), none on the CPU")
    p.add_argument("--num-tokens", type=int, help="image tokens (default 4 base, 16 plus)")
    p.add_argument("--no-cache", action="store_true", help="encode the images every step (the reference's way)")
    p.add_argument("--random-crop", action="store_true", help="SDXL: random instead of centre crops")
    p.add_argument("--noise-offset", type=float, default=0.0)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--models-dir", help="models folder (default $IPGRAPH_MODELS_DIR or ./models)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_train_ipadapter)

    tiny = train_sub.add_parser("tiny-dataset", help="write a small generated dataset (coloured shapes + captions)")
    tiny.add_argument("folder", help="writes FOLDER/data.json and FOLDER/images/")
    tiny.add_argument("--count", type=int, default=8)
    tiny.add_argument("--size", type=int, default=64)
    tiny.add_argument("--debug", action="store_true")
    tiny.set_defaults(func=cmd_tiny_dataset)

    conv = sub.add_parser("convert", help="convert model files (ipgraph convert ipadapter --help)")
    conv_sub = conv.add_subparsers(dest="convert_command")
    conv.set_defaults(func=lambda _args: conv.print_help() or 2)
    c = conv_sub.add_parser("ipadapter", help="reference-script checkpoint (checkpoint-N folder, pytorch_model.bin "
                                              "or model.safetensors) -> h94 .safetensors")
    c.add_argument("source", help="checkpoint-N folder, pytorch_model.bin, model.safetensors or its index.json")
    c.add_argument("--out", required=True, help="output name in models/ipadapter, or a path with --out-path")
    c.add_argument("--out-path", action="store_true", help="treat --out as a file path instead of a name")
    c.add_argument("--base-model", default="", help="recorded in the metadata")
    c.add_argument("--image-encoder", default="", help="recorded in the metadata")
    c.add_argument("--models-dir")
    c.add_argument("--debug", action="store_true")
    c.set_defaults(func=cmd_convert_ipadapter)


def _fail(args, exc: Exception) -> int:
    if getattr(args, "debug", False):
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    return 1


def cmd_train_ipadapter(args) -> int:
    from ..core.runtime import Runtime
    from .loop import TrainConfig
    from .run import load_base, load_encoder, output_paths, run_training

    try:
        runtime = Runtime.create(models_dir=args.models_dir, device=args.device)
        output_paths(runtime.models_dir, args.out)  # refuse a bad output before loading anything
        config = TrainConfig(variant=args.variant, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, resolution=args.resolution, grad_accum=args.grad_accum,
                             mixed_precision=args.mixed_precision, seed=args.seed, num_tokens=args.num_tokens,
                             cache_embeds=not args.no_cache, center_crop=not args.random_crop,
                             noise_offset=args.noise_offset)
        base, _ = load_base(runtime, args.checkpoint, args.arch)
        encoder, encoder_path = load_encoder(runtime, args.clip_vision)
        printer = _Progress(args.steps)
        result = run_training(runtime, data=args.data, images=args.images, base=base, base_name=args.checkpoint,
                              encoder=encoder, encoder_name=args.clip_vision, encoder_path=encoder_path,
                              config=config, out=args.out, save_every=args.save_every, init=args.init,
                              resume=args.resume, on_progress=printer)
        printer.close()
    except TrainingError as exc:
        return _fail(args, exc)
    p = result.paths
    first, last = (result.losses[0], result.losses[-1]) if result.losses else (float("nan"),) * 2
    print(f"trained {result.steps} steps in {result.seconds:.1f} s (loss {first:.4f} -> {last:.4f}; image "
          f"embeddings {'from the cache' if result.cache_hit else 'encoded'})")
    for label, path in (("adapter", p.adapter), ("state", p.state), ("loss log", p.log), ("loss plot", p.plot)):
        print(f"  {label:9s} {path}")
    return 0


class _Progress:
    """A tqdm bar per phase: encoding the images, then training (step, loss, it/s and ETA)."""

    def __init__(self, steps: int) -> None:
        self.bar, self.phase, self.steps = None, None, steps

    def __call__(self, phase: str, i: int, n: int, info: dict) -> None:
        from tqdm import tqdm

        if phase != self.phase:
            self.close()
            self.phase = phase
            training = phase == "training"
            self.bar = tqdm(total=n, initial=i if training else 0, desc=phase,
                            unit="step" if training else "img", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(i - self.bar.n)
        if "loss" in info:
            self.bar.set_postfix(loss=f"{info['loss']:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_tiny_dataset(args) -> int:
    from .tinydata import make_tiny_dataset

    data, images = make_tiny_dataset(args.folder, n=args.count, size=args.size)
    print(f"{data} ({args.count} images in {images})")
    return 0


def cmd_convert_ipadapter(args) -> int:
    from pathlib import Path

    from ..core.runtime import Runtime
    from .files import convert_reference
    from .run import output_paths

    try:
        if args.out_path:
            dest = Path(args.out)
        else:
            dest = output_paths(Runtime.create(models_dir=args.models_dir).models_dir, args.out).adapter
        meta = {k: v for k, v in (("base_model", args.base_model), ("image_encoder", args.image_encoder)) if v}
        info = convert_reference(Path(args.source), dest, meta)
    except TrainingError as exc:
        return _fail(args, exc)
    print(f"{dest}: {info.variant} adapter for {info.arch_name}, {info.num_layers} layers, {info.tokens} tokens")
    return 0
