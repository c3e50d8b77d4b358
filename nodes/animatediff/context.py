"""Context windows: denoising a video longer than the motion module can see, one window of frames at a time.

What is implemented (the schedules and fuse weights of ComfyUI-AnimateDiff-Evolved, the names its users know):

* ``standard_uniform`` (ADE_StandardUniformContextOptions): windows of ``context_length`` frames starting every
  ``context_length - context_overlap`` frames, repeated at strides 1, 2, 4, ... up to ``context_stride``; the
  starts shift from step to step by the bit-reversed step index (``ordered_halving``) so seams move; a window
  running past the last frame is slid back to end on it, and duplicates are dropped.
* ``looped_uniform`` (ADE_LoopedUniformContextOptions, and the legacy ADE_AnimateDiffUniformContextOptions):
  the same windows but wrapping round to the first frames (``closed_loop`` also closes the last gap).
* fuse: each frame's noise prediction is the weighted mean over the windows that hold it, with weights
  ``flat`` (all 1), ``pyramid`` (1, 2, ..., n/2, ..., 2, 1 across a window) or ``overlap-linear`` (ramps over the
  overlap, except at the clip's ends). Averaging the noise prediction equals averaging the denoised estimate
  (x0 = (x - sqrt(1-a)·eps)/sqrt(a) is affine in eps at a fixed step), which is what the Evolved pack averages.

The UNet (motion modules included) runs once per window, so a window never exceeds the motion module's length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FUSE_METHODS = ("pyramid", "flat", "overlap-linear")
SCHEDULES = ("standard_uniform", "looped_uniform")


@dataclass(frozen=True)
class ContextOptions:
    context_length: int = 16
    context_stride: int = 1
    context_overlap: int = 4
    schedule: str = "standard_uniform"
    closed_loop: bool = False
    fuse_method: str = "pyramid"
    use_on_equal_length: bool = False
    start_percent: float = 0.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"context schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.fuse_method not in FUSE_METHODS:
            raise ValueError(f"fuse_method must be one of {', '.join(FUSE_METHODS)}, not {self.fuse_method!r}")
        if self.context_overlap >= self.context_length:
            raise ValueError(f"context_overlap ({self.context_overlap}) must be smaller than context_length "
                             f"({self.context_length})")

    def applies(self, frames: int, fraction_done: float) -> bool:
        """Whether windows are used for a clip of ``frames`` at this point of the schedule."""
        if fraction_done < self.start_percent:
            return False
        return frames > self.context_length or (self.use_on_equal_length and frames == self.context_length)

    def cache_nbytes(self) -> int:
        return 0


def ordered_halving(val: int) -> float:
    """The 64-bit reversal of ``val`` as a fraction of 2**64: 0, 1/2, 1/4, 3/4, ... (spreads window starts)."""
    return int(f"{val:064b}"[::-1], 2) / (1 << 64)


def _uniform(frames: int, opts: ContextOptions, step: int, closed_loop: bool) -> list[list[int]]:
    windows = []
    stride = min(opts.context_stride, int(np.ceil(np.log2(frames / opts.context_length))) + 1)
    for context_step in 1 << np.arange(stride):
        pad = int(round(frames * ordered_halving(step)))
        for j in range(int(ordered_halving(step) * context_step) + pad,
                       frames + pad + (0 if closed_loop else -opts.context_overlap),
                       opts.context_length * context_step - opts.context_overlap):
            windows.append([e % frames for e in range(j, j + opts.context_length * int(context_step), int(context_step))])
    return windows


def _rolls_over(window: list[int]) -> tuple[bool, int]:
    for i in range(1, len(window)):
        if window[i] < window[i - 1]:
            return True, i
    return False, -1


def _shift_to_end(window: list[int], frames: int) -> None:
    start = window[0]
    for i in range(len(window)):
        window[i] = (window[i] - start + frames) % frames
    delta = frames - window[-1] - 1
    for i in range(len(window)):
        window[i] += delta


def context_windows(frames: int, opts: ContextOptions, step: int) -> list[list[int]]:
    """The frame windows of one denoising step (every frame is in at least one)."""
    if frames <= opts.context_length:
        return [list(range(frames))]
    if opts.schedule == "looped_uniform":
        return _uniform(frames, opts, step, opts.closed_loop)
    windows = _uniform(frames, opts, step, False)
    keep, i = [], 0
    while i < len(windows):
        rolls, at = _rolls_over(windows[i])
        if rolls:
            roll_val = windows[i][at]
            _shift_to_end(windows[i], frames)
            if roll_val not in windows[(i + 1) % len(windows)]:
                windows.insert(i + 1, list(range(roll_val, roll_val + opts.context_length)))
        if windows[i] not in windows[:i]:
            keep.append(windows[i])
        i += 1
    return keep


def fuse_weights(window: list[int], frames: int, opts: ContextOptions) -> torch.Tensor:
    """Weight of each frame of ``window`` in the per-frame weighted mean."""
    n = len(window)
    if opts.fuse_method == "flat":
        return torch.ones(n)
    if opts.fuse_method == "pyramid":
        half = n // 2 if n % 2 == 0 else (n + 1) // 2
        seq = list(range(1, half + 1)) + list(range(half, 0, -1)) if n % 2 == 0 else \
            list(range(1, half)) + [half] + list(range(half - 1, 0, -1))
        return torch.tensor(seq, dtype=torch.float32)
    weights = torch.ones(n)  # overlap-linear
    if opts.context_overlap > 0:
        if min(window) > 0:
            weights[:opts.context_overlap] = torch.linspace(1e-37, 1, opts.context_overlap)
        if max(window) < frames - 1:
            weights[-opts.context_overlap:] = torch.linspace(1, 1e-37, opts.context_overlap)
    return weights
