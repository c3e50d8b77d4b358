"""A whole training run against the models folder: names resolved like the loaders do, the output written
next to the other adapters, with its loss log, loss plot and resumable state.

Used by ``ipgraph train ipadapter`` and the TrainIPAdapter node. Files of a run named ``NAME``, all in
``models/ipadapter/``: ``NAME.safetensors`` (the adapter, rewritten at every save), ``NAME.trainstate``
(optimizer state etc., for ``--resume``), ``NAME.loss.jsonl`` and ``NAME.loss.png``. The image-embedding
cache lives in ``models/.cache/train-embeds/`` (outside every model kind's folder, so loaders never list it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.runtime import ModelNotFound, Runtime
from .adapter import IPAdapterModules
from .data import read_records
from .errors import TrainingError
from .files import load_state, save_adapter, save_state
from .logs import LossLog, plot_losses
from .loop import BaseModel, TrainConfig, Trainer

ARCHES = ("sd15", "sdxl")


@dataclass(frozen=True)
class RunPaths:
    adapter: Path
    state: Path
    log: Path
    plot: Path


@dataclass
class RunResult:
    paths: RunPaths
    losses: list[float]
    steps: int
    seconds: float
    cache_hit: bool
    cancelled: bool = False
    saved: list[int] = field(default_factory=list)


def output_paths(models_dir: Path, name: str) -> RunPaths:
    """Where a run named ``name`` writes; refuses anything that would land outside models/ipadapter."""
    folder = (Path(models_dir) / "ipadapter").resolve()
    if not name or name.strip() != name:
        raise TrainingError(f"the output name {name!r} is empty or has surrounding spaces.")
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    if Path(stem).suffix in (".bin", ".pt", ".pth", ".ckpt"):
        raise TrainingError(f"the output {name!r} must be a .safetensors file (or a name without a suffix).")
    adapter = (folder / f"{stem}.safetensors").resolve()
    if folder not in adapter.parents:
        raise TrainingError(f"the output {name!r} is outside the models folder's ipadapter/ ({folder}); give a "
                            "name (or a sub-path) inside it.")
    base = adapter.with_suffix("")
    return RunPaths(adapter, base.with_name(base.name + ".trainstate"), base.with_name(base.name + ".loss.jsonl"),
                    base.with_name(base.name + ".loss.png"))


def load_base(runtime: Runtime, name: str, arch: str | None = None) -> tuple[BaseModel, Path]:
    """The checkpoint (single file or diffusers folder) on the runtime's device and dtype."""
    from ..diffusion.loaders import upcast_sdxl_vae
    from ..models.single_file import CheckpointError, load_checkpoint

    path = _model_path(runtime, "checkpoints", name)
    try:
        ckpt = load_checkpoint(path, device="cpu", dtype=runtime.dtype)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    if arch and ckpt.arch != arch:
        raise TrainingError(f"the checkpoint {name} is {ckpt.arch.upper()} but --arch says {arch}.")
    upcast_sdxl_vae(ckpt.vae, ckpt.arch)
    for m in (ckpt.unet, ckpt.vae, *ckpt.text_encoders):
        m.to(runtime.device).requires_grad_(False)
    return BaseModel.from_checkpoint(ckpt), path


def load_encoder(runtime: Runtime, name: str) -> tuple[object, Path]:
    from ..ipadapter.encoder import load_clip_vision

    path = _model_path(runtime, "clip_vision", name)
    try:
        model = load_clip_vision(path)
    except Exception as exc:  # not a CLIP vision file: shapes or keys do not fit
        raise TrainingError(f"{name} could not be loaded as a CLIP vision encoder ({exc.__class__.__name__}).") \
            from None
    return model.to(runtime.device, runtime.dtype).requires_grad_(False), path


def _model_path(runtime: Runtime, kind: str, name: str) -> Path:
    try:
        return runtime.model_path(kind, name)
    except ModelNotFound as exc:
        raise TrainingError(str(exc)) from None


def resolve_state(runtime: Runtime, name: str) -> Path:
    """``--resume``: a path, or a name in models/ipadapter (with or without ``.trainstate``)."""
    for candidate in (Path(name), runtime.models_dir / "ipadapter" / name,
                      runtime.models_dir / "ipadapter" / f"{name}.trainstate"):
        if candidate.is_file():
            return candidate
    raise TrainingError(f"no training state {name!r} (give the .trainstate file a previous run wrote).")


def run_training(runtime: Runtime, *, data: str | Path, images: str | Path, base: BaseModel, base_name: str,
                 encoder, encoder_name: str, encoder_path: Path | None, config: TrainConfig, out: str,
                 save_every: int = 0, init: str | None = None, resume: str | None = None,
                 on_progress: Callable[[str, int, int, dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> RunResult:
    """Train and write the run's files (see module docstring); ``on_progress(phase, i, n, info)``."""
    started = time.perf_counter()
    paths = output_paths(runtime.models_dir, out)
    records = read_records(data, images)
    state = load_state(resolve_state(runtime, resume)) if resume else None
    adapter = None
    if init and state is None:
        adapter = IPAdapterModules.from_file(_model_path(runtime, "ipadapter", init), base.unet)
    cache_dir = runtime.models_dir / ".cache" / "train-embeds"

    def progress(phase, i, n):
        if on_progress:
            on_progress(phase, i, n, {})

    trainer = Trainer(base, encoder, records, config, adapter=adapter, encoder_source=encoder_path,
                      cache_dir=cache_dir, progress=progress)
    if state is not None:
        trainer.load_state_dict(state, Path(resume).name)
    if config.cache_embeds and trainer.encoder is not None and trainer.encoder.device.type != "cpu":
        trainer.encoder.to("cpu")  # not needed on the device any more: the embeddings are cached
    log = LossLog(paths.log, resume_step=trainer.step)
    metadata = {"base_model": base_name, "image_encoder": encoder_name, "trainer": "ipgraph train ipadapter"}
    saved: list[int] = []

    def save() -> None:
        info = trainer.describe()
        save_adapter(paths.adapter, trainer.adapter_module.h94_state_dict(), {**metadata, **info})
        save_state(paths.state, {**trainer.state_dict(), "metadata": dict(metadata)})
        plot_losses(trainer.losses, paths.plot, title=f"{paths.adapter.stem}: loss per step")
        saved.append(trainer.step)

    def on_step(t: Trainer, loss: float) -> None:
        log.write(t.step, loss, t.last_step_seconds)
        if save_every and t.step % save_every == 0 and t.step < config.steps:
            save()
        if on_progress:
            on_progress("training", t.step, config.steps, {"loss": loss})

    if on_progress:
        on_progress("training", trainer.step, config.steps, {})
    trainer.train(on_step, should_stop)
    cancelled = trainer.step < config.steps
    if not cancelled:
        save()
    return RunResult(paths, list(trainer.losses), trainer.step, time.perf_counter() - started, trainer.cache_hit,
                     cancelled, saved)


