"""Limits a user sets: how large an input image, how large a generated image, how much work one job may ask.

Every limit has a CLI flag, a server option and an environment variable (the flag wins, then the variable,
then the default); ``/system_stats`` reports them, and each refusal names the option that raises it, so no
hidden constant ever refuses a user's input. Input images above ``max_pixels`` are refused, or downscaled to
fit when ``oversize_images`` is ``downscale``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

OVERSIZE_POLICIES = ("refuse", "downscale")


@dataclass(frozen=True)
class LimitSpec:
    field: str
    flag: str
    env: str
    default: int | str
    meaning: str


SPECS = (
    LimitSpec("max_pixels", "--max-pixels", "IPGRAPH_MAX_PIXELS", 4096 * 4096,
              "largest input image (LoadImage, masks, uploads), in pixels"),
    LimitSpec("max_output_pixels", "--max-output-pixels", "IPGRAPH_MAX_OUTPUT_PIXELS", 4096 * 4096,
              "largest generated image (width x height of a latent, in pixels)"),
    LimitSpec("max_work", "--max-work", "IPGRAPH_MAX_WORK", 1024 * 1024 * 64 * 150,
              "largest sampling job: batch (or frames) x pixels x steps"),
    LimitSpec("oversize_images", "--oversize-images", "IPGRAPH_OVERSIZE_IMAGES", "refuse",
              "what happens to an input image above max-pixels: refuse or downscale"),
)
_BY_FIELD = {spec.field: spec for spec in SPECS}


class LimitError(ValueError):
    """A request above a user-set limit; the message names the option that raises it."""


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 4096 * 4096
    max_output_pixels: int = 4096 * 4096
    max_work: int = 1024 * 1024 * 64 * 150
    oversize_images: str = "refuse"

    @classmethod
    def create(cls, **given) -> Limits:
        """Values given (None = not given), else the environment, else the defaults; bad values are refused."""
        values = {}
        for spec in SPECS:
            raw = given.get(spec.field)
            source = spec.flag
            if raw is None and os.environ.get(spec.env):
                raw, source = os.environ[spec.env], f"${spec.env}"
            if raw is None:
                continue
            if spec.field == "oversize_images":
                if raw not in OVERSIZE_POLICIES:
                    raise LimitError(f"{source} must be one of {', '.join(OVERSIZE_POLICIES)}, not {raw!r}")
                values[spec.field] = raw
                continue
            try:
                number = int(float(raw))
            except (TypeError, ValueError):
                raise LimitError(f"{source} must be a whole number, not {raw!r}") from None
            if number <= 0:
                raise LimitError(f"{source} must be positive, not {raw!r}")
            values[spec.field] = number
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def raise_hint(field: str) -> str:
    """How a user raises a limit, for the end of a refusal message."""
    spec = _BY_FIELD[field]
    return f"raise it with {spec.flag} (ipgraph run / ipgraph serve) or ${spec.env}"


def check_output_size(width: int, height: int, limits: Limits) -> str | None:
    """A sentence when a generated image of this size is above the limit, else None."""
    if width * height > limits.max_output_pixels:
        return (f"{width}x{height} ({width * height} pixels) is above the output limit of "
                f"{limits.max_output_pixels} pixels; {raise_hint('max_output_pixels')}")
    return None


def check_work(batch: int, width: int, height: int, steps: int, limits: Limits) -> None:
    """Refuse a sampling job above the work budget before its first step."""
    work = batch * width * height * steps
    if work > limits.max_work:
        raise LimitError(f"this job asks for {batch} image(s) x {width}x{height} pixels x {steps} steps = {work}, "
                         f"above the work limit of {limits.max_work}; {raise_hint('max_work')}")


def add_limit_options(parser) -> None:
    """The limit flags, for ``ipgraph run`` and ``ipgraph serve``."""
    for spec in SPECS:
        kind = str if spec.field == "oversize_images" else int
        extra = {"choices": OVERSIZE_POLICIES} if spec.field == "oversize_images" else {}
        parser.add_argument(spec.flag, dest=spec.field, type=kind, default=None, **extra,
                            help=f"{spec.meaning} (default {spec.default}, or ${spec.env})")
