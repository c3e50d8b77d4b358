"""10 steps + resume 10 steps == 20 steps straight (same seed, CPU), through a real state file."""

from __future__ import annotations

import pytest

from ipgraph.nodes.training import TrainConfig, Trainer, load_state, save_state

pytestmark = pytest.mark.slow


def _config(steps):
    return TrainConfig(steps=steps, batch_size=3, lr=1e-3, resolution=64, seed=3)


def test_resume_replays_the_straight_run(sd15, encoder, records, tmp_path):
    enc, enc_path = encoder
    straight = Trainer(sd15, enc, records, _config(20), encoder_source=enc_path)
    straight.train()

    first = Trainer(sd15, enc, records, _config(10), encoder_source=enc_path)
    first.train()
    save_state(tmp_path / "run.trainstate", first.state_dict())
    resumed = Trainer(sd15, enc, records, _config(20), encoder_source=enc_path)
    resumed.load_state_dict(load_state(tmp_path / "run.trainstate"))
    assert resumed.step == 10
    resumed.train()

    assert resumed.step == straight.step == 20
    assert max(abs(a - b) for a, b in zip(resumed.losses, straight.losses, strict=True)) <= 1e-6
    a, b = resumed.adapter_module.h94_state_dict(), straight.adapter_module.h94_state_dict()
    assert set(a) == set(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    # and it really trained: the weights moved from the initial ones
    init = Trainer(sd15, enc, records, _config(20), encoder_source=enc_path).adapter_module.h94_state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-4


def test_gradient_accumulation_steps_once_per_update(sd15, encoder, records):
    enc, enc_path = encoder
    trainer = Trainer(sd15, enc, records, TrainConfig(steps=2, batch_size=1, resolution=64, grad_accum=3),
                      encoder_source=enc_path)
    trainer.train()
    steps = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
    assert trainer.step == 2 and len(trainer.losses) == 2 and steps == {2}  # 6 micro-batches, 2 AdamW updates
