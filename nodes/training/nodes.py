"""TrainIPAdapter: train an IP-Adapter from a graph (e.g. started from the web editor).

A long job: progress is reported per step through the engine (``ctx.progress``), which also honours the
run's cancel token; a cancelled run stops after the current step, the UNet's own attention processors are
put back, and the files of the last ``save_every`` save stay. The node trains on the loaded (shared,
read-only) models: their weights are never changed, only their attention processors are swapped for the
duration of the run. Outputs: the file name in models/ipadapter and the adapter loaded, ready for
IPAdapterApply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.widgets import runtime_of
from ..ipadapter import load_ipadapter
from .errors import TrainingError
from .loop import BaseModel, TrainConfig
from .run import run_training


class TrainIPAdapterIn(NodeInputs):
    model: Any = Socket("MODEL", description="the base model's UNet (unpatched)")
    clip: Any = Socket("CLIP")
    vae: Any = Socket("VAE")
    clip_vision: Any = Socket("CLIP_VISION")
    data: str = Field("data.json", min_length=1, description='JSON list of {"image_file", "text"}, in the input '
                                                             "folder")
    images: str = Field("train_images", min_length=1, description="folder of the images, in the input folder")
    variant: Literal["base", "plus"] = "base"
    steps: int = Field(1000, ge=1, le=10_000_000, description="optimizer updates")
    batch_size: int = Field(8, ge=1, le=1024)
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    resolution: int = Field(512, ge=64, le=4096, multiple_of=8)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    save_every: int = Field(0, ge=0, description="also save every K steps (0: only at the end)")
    out: str = Field("my-ip-adapter", min_length=1, max_length=200, description="output name in models/ipadapter")


class TrainIPAdapterOut(NodeOutputs):
    ipadapter_file: Any = Output("STRING", description="the adapter's name in models/ipadapter")
    ipadapter: Any = Output("IPADAPTER")


def _input_path(runtime, text: str, what: str) -> Path:
    path = Path(text)
    if path.is_absolute():
        if not runtime.allow_absolute_paths:
            raise TrainingError(f"{what}: absolute paths are not allowed here; put it in the input folder.")
        return path
    root = runtime.input_dir.resolve()
    path = (root / text).resolve()
    if root not in path.parents:
        raise TrainingError(f"{what} {text!r} is outside the input folder.")
    return path


@node("TrainIPAdapter", category="training", output_node=True, display_name="Train IP-Adapter")
def train_ipadapter(inp: TrainIPAdapterIn, ctx: NodeContext) -> TrainIPAdapterOut:
    """Train an IP-Adapter (reference recipe) on a captioned image folder; writes models/ipadapter/OUT."""
    runtime = runtime_of(ctx)
    if inp.model.patches:
        raise TrainingError("the model input carries patches (IP-Adapter, LoRA, ...); train on the plain "
                            "checkpoint's MODEL.")
    base = BaseModel(inp.model.arch, inp.model.unet, inp.vae.vae, tuple(inp.clip.text_encoders),
                     tuple(inp.clip.tokenizers), dict(inp.model.scheduler_config), inp.model.source)
    config = TrainConfig(variant=inp.variant, steps=inp.steps, batch_size=inp.batch_size, lr=inp.learning_rate,
                         resolution=inp.resolution, seed=inp.seed)
    cv = inp.clip_vision

    def progress(phase: str, i: int, n: int, info: dict) -> None:
        if phase == "training":
            ctx.progress(i, n)
        else:
            ctx.check_cancelled()

    with runtime.models.on_device(inp.model.unet, inp.vae.vae, *inp.clip.text_encoders, cv.model):
        result = run_training(runtime, data=_input_path(runtime, inp.data, "data"),
                              images=_input_path(runtime, inp.images, "images"), base=base,
                              base_name=Path(inp.model.source).name, encoder=cv.model,
                              encoder_name=Path(cv.source).name, encoder_path=Path(cv.source), config=config,
                              out=inp.out, save_every=inp.save_every, on_progress=progress)
    path = result.paths.adapter
    name = path.relative_to(runtime.model_folder("ipadapter").resolve()).as_posix()
    ctx.set_ui({"text": f"trained {result.steps} steps: {name} (loss {result.losses[0]:.4f} -> "
                        f"{result.losses[-1]:.4f})"})
    return TrainIPAdapterOut(ipadapter_file=name,
                             ipadapter=runtime.models.load(("ipadapter", str(path)),
                                                           lambda: load_ipadapter(path), path=path))
