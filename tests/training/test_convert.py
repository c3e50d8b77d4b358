"""The reference scripts' checkpoints -> h94 files: pytorch_model.bin (weights-only), model.safetensors,
a sharded model.safetensors with an index and a ``module.`` prefix; a pickle with code is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ipgraph.cli import main
from ipgraph.nodes.ipadapter import inspect_ipadapter
from ipgraph.nodes.training import TrainingError, convert_reference


def _reference_state(h94: dict, unet) -> dict:
    """What accelerator.save_state writes for the tutorial's IPAdapter module: unet.*, image_proj_model.*,
    adapter_modules.N.*."""
    out = {f"unet.{k}": v for k, v in list(unet.state_dict().items())[:6]}
    for k, v in h94.items():
        part, rest = k.split(".", 1)
        out[("image_proj_model." if part == "image_proj" else "adapter_modules.") + rest] = v
    return out


@pytest.fixture(params=["tiny-ip-adapter_sd15.safetensors", "tiny-ip-adapter-plus_sd15.safetensors"])
def adapter(request, models_dir):
    return models_dir / "ipadapter" / request.param


def test_bin_and_safetensors_and_shards(adapter, sd15, tmp_path):
    h94 = load_file(str(adapter))
    ref = _reference_state(h94, sd15.unet)
    ckpt = tmp_path / "checkpoint-50000"
    ckpt.mkdir()
    torch.save(ref, ckpt / "pytorch_model.bin")
    new = tmp_path / "checkpoint-new"
    new.mkdir()
    save_file({k: v.contiguous() for k, v in ref.items()}, str(new / "model.safetensors"))
    sharded = tmp_path / "checkpoint-sharded"
    sharded.mkdir()
    keys = sorted(ref)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, ks in halves.items():
        save_file({f"module.{k}": ref[k].contiguous() for k in ks}, str(sharded / shard))
    index = {"metadata": {}, "weight_map": {f"module.{k}": s for s, ks in halves.items() for k in ks}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))

    for i, src in enumerate([ckpt, ckpt / "pytorch_model.bin", new, new / "model.safetensors", sharded]):
        dest = tmp_path / f"out{i}.safetensors"
        info = convert_reference(src, dest, {"base_model": "tiny-sd15.safetensors"})
        got = load_file(str(dest))
        assert set(got) == set(h94)
        assert max((got[k] - h94[k]).abs().max().item() for k in h94) == 0
        assert inspect_ipadapter(dest).variant == info.variant == inspect_ipadapter(adapter).variant


def test_cli_convert_into_the_models_folder(models_dir, sd15, tmp_path, capsys):
    h94 = load_file(str(models_dir / "ipadapter" / "tiny-ip-adapter_sd15.safetensors"))
    torch.save(_reference_state(h94, sd15.unet), tmp_path / "pytorch_model.bin")
    rc = main(["convert", "ipadapter", str(tmp_path / "pytorch_model.bin"), "--out", "converted-test",
               "--models-dir", str(models_dir)])
    assert rc == 0 and "base adapter for SD1.5" in capsys.readouterr().out
    assert inspect_ipadapter(models_dir / "ipadapter" / "converted-test.safetensors").num_layers == 16


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    torch.save({"x": _Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(TrainingError, match="weights-only"):
        convert_reference(tmp_path / "pytorch_model.bin", tmp_path / "o.safetensors")


def test_not_a_reference_checkpoint(tmp_path):
    save_file({"unet.a": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(TrainingError, match="not written by the IP-Adapter reference"):
        convert_reference(tmp_path, tmp_path / "o.safetensors")
