"""Switching between two LoRAs on one loaded checkpoint holds no more memory after 20 alternations than after 2.

Counted, not sampled from process RSS (noisy): the fused weight copies ipgraph keeps (one set per UNet / text
encoder stack), what the model manager holds, and every live tensor of 4 KiB or more in the process.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from ipgraph.nodes.lora.patch import _FUSED

from .test_lora_patch import first, sampled

pytestmark = pytest.mark.slow
A, B = "tiny-sd15-lora-kohya.safetensors", "tiny-sd15-lora-peft.safetensors"


def fused_state(owners) -> tuple[int, int]:
    """(fused sets held for ``owners``, their bytes); other tests' models may hold sets of their own."""
    sets = [_FUSED[o] for o in owners if o in _FUSED]
    return len(sets), sum(t.numel() * t.element_size() for _, fused, _ in sets for t in fused.values())


def big_tensors() -> tuple[int, int]:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on some lazy torch objects warns about deprecated names
        warnings.simplefilter("ignore")
        live = {id(o): o for o in gc.get_objects()
                if isinstance(o, torch.Tensor) and o.numel() * o.element_size() >= 4096}
    return len(live), sum(t.numel() * t.element_size() for t in live.values())


def test_twenty_alternations_hold_one_fused_set_per_model(engine, runtime):
    def run(i: int):
        return first(engine.run(sampled(loras=[((A, B)[i % 2], 0.8)], steps=1, seed=100 + i), outputs=["ks"]), "ks")

    base = first(engine.run(sampled(steps=1, seed=7), outputs=["ks"]), "ks").samples
    ck = engine.run(sampled(steps=1, seed=7), outputs=["ckpt"]).outputs["ckpt"]
    owners = (ck.model.unet, ck.clip.text_encoders[0])
    run(0), run(1), run(0), run(1)  # both files parsed, both text encodings cached
    fused0, models0, tensors0 = fused_state(owners), runtime.models.stats(), big_tensors()
    assert fused0[0] == 2 and fused0[1] > 0  # one set for the UNet, one for the text encoder
    outputs = []
    for i in range(20):
        outputs.append(run(i).samples)
        assert fused_state(owners) == fused0  # replaced, never added to
    models1, tensors1 = runtime.models.stats(), big_tensors()
    assert models1["loaded"] == models0["loaded"] and models1["bytes"] == models0["bytes"]
    assert tensors1 == tensors0, (tensors0, tensors1)
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3  # the two LoRAs really alternate
    engine.cache.clear()
    assert torch.equal(first(engine.run(sampled(steps=1, seed=7), outputs=["ks"]), "ks").samples, base)
