"""The training loop: the reference recipe on accelerate, deterministic per step so that resuming is exact.

Recipe (tencent-ailab/IP-Adapter ``tutorial_train*.py``): UNet, VAE, text encoder(s) and image encoder
frozen; latents ``vae.encode(x).latent_dist.sample() · scaling_factor``; timesteps uniform in
``[0, num_train_timesteps)``; ``noisy = DDPMScheduler.add_noise(latents, noise, t)``; loss
``MSE(unet(noisy, t, [text ; image tokens]), noise)`` in float32 (the velocity instead of the noise for a
``v_prediction`` checkpoint, which the reference does not handle); AdamW (lr 1e-4, weight decay 1e-2) over
the image projection and every ``to_k_ip``/``to_v_ip``. SDXL: text context = penultimate hidden states of
both encoders concatenated, pooled = the second encoder's projection, ``time_ids`` = original size, crop
top-left, target size; the VAE runs in float32; optional noise offset ``+ offset · randn(B, C, 1, 1)``.

accelerate supplies mixed precision (autocast, and a gradient scaler for fp16), gradient accumulation and
device placement. ``steps`` counts optimizer updates; each takes ``grad_accum`` micro-batches.

Determinism: micro-batch ``m`` draws everything random (which items, drops, crop, VAE sample, timesteps,
noise) from its own generator seeded by (seed, m), and items come from a per-epoch permutation seeded by
(seed, epoch). A run's state is then just weights, optimizer state, scaler and step: 10 steps + resume
10 steps replays exactly the 20-step run.

Extending: subclass :class:`Trainer` and override :meth:`Trainer.compute_loss` (the objective),
:meth:`Trainer.inputs` (what a micro-batch feeds it) or :meth:`Trainer.micro_step`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .adapter import PLUS_DEPTH, IPAdapterModules, installed
from .cache import INPUTS, encode_pixels, image_embeddings, null_embed
from .data import DROP_RATES, Record, clip_processor, draw_drops, open_rgb, tokenize, unet_pixels
from .errors import TrainingError

MIXED = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_RESOLUTION = {"sd15": 512, "sdxl": 1024}


@dataclass
class TrainConfig:
    """Settings of one run; the defaults are the reference recipe's."""

    variant: str = "base"  # base | plus
    steps: int = 1000  # optimizer updates
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-2
    resolution: int | None = None  # None: 512 for SD1.5, 1024 for SDXL
    grad_accum: int = 1
    mixed_precision: str = "auto"  # auto (from the frozen UNet's dtype) | no | fp16 | bf16
    seed: int = 0
    drop_rates: tuple[float, float, float] = DROP_RATES  # image, text, both
    num_tokens: int | None = None  # 4 (base) / 16 (plus)
    plus_heads: int | None = None  # None: 12 (20 for an SDXL context of 2048, as h94's files)
    plus_depth: int = PLUS_DEPTH
    cache_embeds: bool = True  # encode every image once; False encodes each batch (the reference)
    cache_text: bool = True  # encode each distinct caption once (in memory)
    center_crop: bool = True  # SDXL only: False crops at random as the reference's option does
    noise_offset: float = 0.0
    max_grad_norm: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True, eq=False)
class BaseModel:
    """The frozen parts of the base checkpoint, already on the training device in their dtype."""

    arch: str  # sd15 | sdxl
    unet: object
    vae: object
    text_encoders: tuple
    tokenizers: tuple
    scheduler_config: dict
    source: str = ""

    @classmethod
    def from_checkpoint(cls, ckpt) -> BaseModel:
        """From ``ipgraph.nodes.models.single_file.load_checkpoint``'s result."""
        return cls(ckpt.arch, ckpt.unet, ckpt.vae, tuple(ckpt.text_encoders), tuple(ckpt.tokenizers),
                   dict(ckpt.scheduler_config), ckpt.source)


@dataclass
class StepInputs:
    """Everything one micro-batch feeds the objective (the reference's per-step tensors)."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    text: torch.Tensor  # [B, 77, D]
    image_embeds: torch.Tensor  # [B, E] or [B, T, W], dropped rows already replaced
    added_cond_kwargs: dict | None = None  # SDXL: text_embeds (pooled) and time_ids
    indices: list[int] = field(default_factory=list)


def make_accelerator(mixed_precision: str, grad_accum: int, cpu: bool):
    """An ``Accelerator``; accelerate keeps one global state per process, reset when a run asks for another
    precision (one process may train several times, e.g. the server)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    kw = dict(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, cpu=cpu,
              device_placement=False)  # the models already sit on the training device (cuda:1 included)
    try:
        return Accelerator(**kw)
    except ValueError:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        return Accelerator(**kw)


class Trainer:
    """Trains one IP-Adapter on a frozen base model and image encoder (see the module docstring)."""

    def __init__(self, base: BaseModel, encoder, records: list[Record], config: TrainConfig,
                 adapter: IPAdapterModules | None = None, encoder_source: str | None = None,
                 cache_dir=None, progress: Callable[[str, int, int], None] | None = None) -> None:
        from diffusers import DDPMScheduler

        if config.steps < 1 or config.batch_size < 1 or config.grad_accum < 1:
            raise TrainingError("steps, batch size and gradient accumulation must each be at least 1.")
        if config.lr <= 0:
            raise TrainingError(f"the learning rate must be positive, not {config.lr}.")
        self.base, self.encoder, self.records, self.config = base, encoder, list(records), config
        self.encoder_source = encoder_source
        self.resolution = config.resolution or DEFAULT_RESOLUTION[base.arch]
        if self.resolution % 8:
            raise TrainingError(f"the resolution must be a multiple of 8, not {self.resolution}.")
        unet = base.unet
        self.device = next(unet.parameters()).device
        self.weight_dtype = next(unet.parameters()).dtype
        mp = config.mixed_precision
        if mp == "auto":
            mp = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.weight_dtype, "no")
        if mp not in MIXED:
            raise TrainingError(f"mixed precision must be auto, no, fp16 or bf16, not {mp!r}.")
        if mp == "fp16" and self.device.type != "cuda":
            raise TrainingError("fp16 mixed precision needs a CUDA device; use no or bf16 on the CPU.")
        self.mixed_precision = mp
        self.accelerator = make_accelerator(mp, config.grad_accum, cpu=self.device.type == "cpu")
        self.scheduler = DDPMScheduler.from_config(base.scheduler_config)
        self.kind = INPUTS.get(config.variant)
        if self.kind is None:
            raise TrainingError(f"the variant must be base or plus, not {config.variant!r}.")
        if adapter is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                adapter = IPAdapterModules.fresh(unet, encoder, config.variant, config.num_tokens,
                                                 config.plus_heads, config.plus_depth)
        elif adapter.variant != config.variant:
            raise TrainingError(f"the initial adapter is a {adapter.variant} adapter but the variant asked for "
                                f"is {config.variant}.")
        adapter.check_unet(unet)
        check_encoder(adapter, encoder)
        self.adapter_module = adapter.to(self.device, torch.float32)  # trained weights stay fp32
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.adapter, self.optimizer = self.accelerator.prepare(self.adapter_module, optimizer)
        self.step = 0  # optimizer updates done
        self.losses: list[float] = []
        self._perm: tuple[int, list[int]] | None = None
        self._text: dict[str, tuple] = {}
        self.embeds = self.null = None
        self.cache_file, self.cache_hit = None, False
        if config.cache_embeds:
            self.embeds, self.null, self.cache_file, self.cache_hit = image_embeddings(
                records, encoder, self.kind, cache_dir, encoder_source,
                progress=(lambda i, n: progress("encoding images", i, n)) if progress else None)
        else:
            self.null = null_embed(encoder, self.kind).float().cpu()
            self._clip = clip_processor(int(encoder.config.image_size))

    # -- data -----------------------------------------------------------------------------------------
    def micro_batches(self) -> int:
        return self.config.steps * self.config.grad_accum

    def generator(self, m: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + m + 1)

    def batch_indices(self, m: int) -> list[int]:
        """Items of micro-batch ``m``: epochs of a seeded permutation, the last batch of an epoch partial
        (the reference's ``DataLoader(shuffle=True)`` without ``drop_last``)."""
        n, b = len(self.records), self.config.batch_size
        per_epoch = math.ceil(n / b)
        epoch, k = divmod(m, per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.config.seed * 7919 + epoch)
            self._perm = (epoch, torch.randperm(n, generator=g).tolist())
        return self._perm[1][k * b:(k + 1) * b]

    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context ``[B,77,D]``, pooled ``[B,P]`` or None) as the reference computes them."""
        if self.config.cache_text:
            for t in set(texts) - set(self._text):
                ctx, pooled = self._encode_text([t])
                self._text[t] = (ctx[0], None if pooled is None else pooled[0])
            ctx = torch.stack([self._text[t][0] for t in texts])
            pooled = None if self.base.arch != "sdxl" else torch.stack([self._text[t][1] for t in texts])
            return ctx, pooled
        return self._encode_text(texts)

    def _encode_text(self, texts: list[str]):
        encs, toks = self.base.text_encoders, self.base.tokenizers
        with torch.no_grad():
            ids = [torch.cat([tokenize(tok, t) for t in texts]).to(self.device) for tok in toks]
            if self.base.arch != "sdxl":
                return encs[0](ids[0])[0], None
            out1 = encs[0](ids[0], output_hidden_states=True)
            out2 = encs[1](ids[1], output_hidden_states=True)
            return torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1), out2[0]

    def inputs(self, m: int, generator: torch.Generator | None = None, drops: bool = True) -> StepInputs:
        """Micro-batch ``m``: load, preprocess, drop, encode (frozen parts, no gradients), draw noise."""
        g = generator or self.generator(m)
        idx = self.batch_indices(m)
        drop_image, blank_text = draw_drops(len(idx), g, self.config.drop_rates if drops else (0.0, 0.0, 0.0))
        pixels, time_ids, images = [], [], []
        for i in idx:
            image = open_rgb(self.records[i].path)
            images.append(image)
            px, orig, crop = unet_pixels(image, self.resolution, self.base.arch, self.config.center_crop, g)
            pixels.append(px)
            time_ids.append([*orig, *crop, self.resolution, self.resolution])
        vae = self.base.vae
        with torch.no_grad():
            dist = vae.encode(torch.stack(pixels).to(self.device, vae.dtype)).latent_dist
            latents = (dist.sample(generator=g) * vae.config.scaling_factor).to(self.weight_dtype)
        noise = torch.randn(latents.shape, generator=g).to(self.device, self.weight_dtype)
        if self.config.noise_offset:
            noise = noise + self.config.noise_offset * torch.randn(
                (*latents.shape[:2], 1, 1), generator=g).to(self.device, self.weight_dtype)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(idx),),
                                  generator=g).to(self.device).long()
        texts = ["" if blank else self.records[i].text for i, blank in zip(idx, blank_text, strict=True)]
        text, pooled = self.encode_text(texts)
        embeds = self.image_embeds(idx, images, drop_image)
        added = None
        if self.base.arch == "sdxl":
            added = {"text_embeds": pooled.to(self.weight_dtype),
                     "time_ids": torch.tensor(time_ids, dtype=self.weight_dtype, device=self.device)}
        return StepInputs(latents, noise, timesteps, text.to(self.weight_dtype), embeds, added, idx)

    def image_embeds(self, idx: list[int], images, drop: list[bool]) -> torch.Tensor:
        """Cached rows (or this batch encoded now), with the null embedding for dropped images."""
        if self.embeds is not None:
            rows = self.embeds[idx]
        else:
            pixels = self._clip(images=images, return_tensors="pt").pixel_values
            if self.kind == "hidden_states":  # the reference zeroes dropped pixels before encoding
                pixels = torch.stack([torch.zeros_like(p) if d else p for p, d in zip(pixels, drop, strict=True)])
            rows = encode_pixels(self.encoder, pixels, self.kind).float().cpu()
        rows = torch.stack([self.null if d else r for r, d in zip(rows, drop, strict=True)])
        return rows.to(self.device, self.weight_dtype)

    # -- the objective and the update ------------------------------------------------------------------
    def compute_loss(self, x: StepInputs) -> torch.Tensor:
        """MSE between the UNet's prediction and the target (noise, or velocity for v-prediction)."""
        noisy = self.scheduler.add_noise(x.latents, x.noise, x.timesteps)
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x.latents, x.noise, x.timesteps)
        else:
            target = x.noise
        with self.accelerator.autocast():
            pred = self.adapter(self.base.unet, noisy, x.timesteps, x.text, x.image_embeds, x.added_cond_kwargs)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    def micro_step(self, m: int) -> float:
        x = self.inputs(m)
        with self.accelerator.accumulate(self.adapter):
            loss = self.compute_loss(x)
            self.accelerator.backward(loss)
            if self.config.max_grad_norm and self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(self.adapter.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
        return float(loss.detach())

    def evaluate(self, batches: int | None = None, seed: int = 2**31 - 1) -> float:
        """Mean loss over fixed micro-batches (one pass over the data by default; noise and timesteps from
        ``seed``, no drops) without updating: unlike the per-step loss it is comparable between steps."""
        n = batches or math.ceil(len(self.records) / self.config.batch_size)
        total = 0.0
        with installed(self.base.unet, self.adapter_module), torch.no_grad():
            for m in range(n):
                total += float(self.compute_loss(self.inputs(m, torch.Generator().manual_seed(seed + m), False)))
        return total / n

    def train(self, on_step: Callable[[Trainer, float], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> list[float]:
        """Run until ``config.steps`` updates are done (or ``should_stop()``); returns the losses per update.

        ``on_step(trainer, loss)`` is called after every update (progress, logs, periodic saves)."""
        accum = self.config.grad_accum
        self.accelerator.step = self.step * accum  # accelerate's accumulation counter, for resumed runs
        with installed(self.base.unet, self.adapter_module):
            while self.step < self.config.steps:
                if should_stop is not None and should_stop():
                    break
                started = time.perf_counter()
                loss = sum(self.micro_step(m) for m in range(self.step * accum, (self.step + 1) * accum)) / accum
                self.step += 1
                self.losses.append(loss)
                self.last_step_seconds = time.perf_counter() - started
                if on_step is not None:
                    on_step(self, loss)
        return self.losses

    # -- state ---------------------------------------------------------------------------------------------
    def describe(self) -> dict[str, str]:
        """What the adapter is, for file metadata and resume checks."""
        a = self.adapter_module
        return {"variant": a.variant, "arch": self.base.arch, "num_tokens": str(a.num_tokens),
                "encoder_width": str(encoder_width(self.encoder, a.variant)), "steps": str(self.step)}

    def state_dict(self) -> dict:
        scaler = self.accelerator.scaler
        return {"step": self.step, "losses": list(self.losses), "config": self.config.to_json(),
                "info": self.describe(), "adapter": {k: v.detach().cpu() for k, v in
                                                     self.adapter_module.state_dict().items()},
                "optimizer": _to_cpu(self.optimizer.state_dict()),
                "scaler": scaler.state_dict() if scaler is not None else {}}

    def load_state_dict(self, state: dict, source: str = "the training state") -> None:
        """Continue a saved run; refuses a state made for another variant, base model or encoder."""
        info, mine = state.get("info", {}), self.describe()
        for key, label in (("variant", "variant"), ("arch", "base model"), ("num_tokens", "number of tokens"),
                           ("encoder_width", "image encoder width")):
            if str(info.get(key)) != mine[key]:
                raise TrainingError(f"{source} was saved for {label} {info.get(key)} but this run has "
                                    f"{mine[key]}; resume with the same settings.")
        try:
            self.adapter_module.load_state_dict(state["adapter"], strict=True)
        except RuntimeError as exc:
            raise TrainingError(f"{source} does not fit this adapter ({str(exc).splitlines()[0]}).") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.losses = [float(x) for x in state.get("losses", [])]


def encoder_width(encoder, variant: str) -> int:
    cfg = encoder.config
    return int(cfg.projection_dim if variant == "base" else cfg.hidden_size)


def check_encoder(adapter: IPAdapterModules, encoder) -> None:
    """The encoder must give what the adapter's projection reads (image_embeds width or hidden width)."""
    proj = adapter.image_proj
    want = proj.image_embeds.in_features if adapter.variant == "base" else proj.proj_in.in_features
    got = encoder_width(encoder, adapter.variant)
    if want != got:
        what = "projection (image_embeds) width" if adapter.variant == "base" else "hidden width"
        raise TrainingError(f"this {adapter.variant} adapter reads an image encoder {what} of {want}, but the "
                            f"encoder given has {got}: use the encoder the adapter was made with.")


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
