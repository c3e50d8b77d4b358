"""Bad input is refused with a sentence: missing images, a wrong data file, an encoder that does not fit,
an output outside the models folder, a full disk while saving (the previous checkpoint survives)."""

from __future__ import annotations

import errno
import json

import pytest

from ipgraph.cli import main
from ipgraph.nodes.ipadapter import load_ipadapter
from ipgraph.nodes.training import (
    IPAdapterModules,
    TrainConfig,
    Trainer,
    TrainingError,
    load_encoder,
    output_paths,
    read_records,
    run_training,
)
from ipgraph.nodes.training import files as train_files


def _data(tmp_path, entries):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(entries) if not isinstance(entries, str) else entries)
    return path


def test_missing_images_are_listed(dataset, tmp_path):
    data, images = dataset
    entries = json.loads(data.read_text()) + [{"image_file": f"gone_{i}.png", "text": "x"} for i in range(3)]
    with pytest.raises(TrainingError) as exc:
        read_records(_data(tmp_path, entries), images)
    msg = str(exc.value)
    assert "3 of 11 image files" in msg and all(f"gone_{i}.png" in msg for i in range(3))


def test_missing_images_through_the_cli(dataset, tmp_path, models_dir, capsys):
    _, images = dataset
    data = _data(tmp_path, [{"image_file": "nope.png", "text": "a"}])
    rc = main(["train", "ipadapter", "--data", str(data), "--images", str(images), "--checkpoint",
               "tiny-sd15.safetensors", "--clip-vision", "tiny-clip-vision.safetensors", "--out", "x",
               "--models-dir", str(models_dir), "--device", "cpu", "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "nope.png" in err and "missing" in err and "Traceback" not in err


@pytest.mark.parametrize("content,expected", [
    ("{not json", "is not valid JSON"),
    ('{"image_file": "a.png", "text": "a"}', "must hold a JSON list"),
    ("[]", "an empty list"),
    ('[{"image_file": "000_red_circle.png"}, {"file": "b.png", "text": "b"}]', "entries 0, 1 are not"),
])
def test_data_file_that_is_not_the_expected_json(dataset, tmp_path, content, expected):
    with pytest.raises(TrainingError, match=expected):
        read_records(_data(tmp_path, content), dataset[1])


def test_image_outside_the_images_folder(dataset, tmp_path):
    with pytest.raises(TrainingError, match="point outside"):
        read_records(_data(tmp_path, [{"image_file": "../../etc/passwd", "text": "x"}]), dataset[1])


def test_encoder_that_does_not_fit(sd15, records, session_runtime, models_dir):
    wide, _ = load_encoder(session_runtime, "tiny-clip-vision-wide.safetensors")
    init = IPAdapterModules.from_file(models_dir / "ipadapter" / "tiny-ip-adapter_sd15.safetensors", sd15.unet)
    with pytest.raises(TrainingError, match="projection \\(image_embeds\\) width of 32, but the encoder given has 48"):
        Trainer(sd15, wide, records, TrainConfig(steps=1, resolution=64), adapter=init)
    plus = IPAdapterModules.from_file(models_dir / "ipadapter" / "tiny-ip-adapter-plus_sd15.safetensors", sd15.unet)
    with pytest.raises(TrainingError, match="hidden width of 64, but the encoder given has 96"):
        Trainer(sd15, wide, records, TrainConfig(variant="plus", steps=1, resolution=64), adapter=plus)
    with pytest.raises(TrainingError, match="is a plus adapter but the variant asked for is base"):
        Trainer(sd15, wide, records, TrainConfig(variant="base", steps=1, resolution=64), adapter=plus)


def test_adapter_for_another_base_model(sd15, models_dir):
    with pytest.raises(TrainingError, match="made for another base model"):
        IPAdapterModules.from_file(models_dir / "ipadapter" / "tiny-ip-adapter_sdxl.safetensors",
                                   sd15.unet).check_unet(sd15.unet)


@pytest.mark.parametrize("name", ["../escape", "../../x", "/tmp/elsewhere", "sub/../../x"])
def test_output_outside_the_models_folder(models_dir, name):
    with pytest.raises(TrainingError, match="outside the models folder"):
        output_paths(models_dir, name)


def test_output_inside_is_fine(models_dir):
    paths = output_paths(models_dir, "mine/run1")
    assert paths.adapter == (models_dir / "ipadapter" / "mine" / "run1.safetensors").resolve()
    assert paths.state.name == "run1.trainstate" and paths.plot.name == "run1.loss.png"


def test_disk_full_while_saving_keeps_the_previous_checkpoint(sd15, encoder, dataset, session_runtime,
                                                              monkeypatch):
    enc, enc_path = encoder
    real = train_files._write_chunks
    calls = []

    def failing(f, data):
        calls.append(len(data))
        if len(calls) > 2:  # after the step-1 save (adapter + state): the disk fills up
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    config = TrainConfig(steps=2, batch_size=2, lr=1e-2, resolution=64)
    kw = dict(data=dataset[0], images=dataset[1], base=sd15, base_name="tiny-sd15.safetensors", encoder=enc,
              encoder_name="tiny-clip-vision.safetensors", encoder_path=enc_path, config=config, out="diskfull",
              save_every=1)
    run_training(session_runtime, **{**kw, "config": TrainConfig(steps=1, batch_size=2, resolution=64)})
    calls.clear()  # the embedding cache exists now; every write below is a checkpoint file
    monkeypatch.setattr(train_files, "_write_chunks", failing)
    with pytest.raises(TrainingError, match="the disk is full.*previous file is unchanged"):
        run_training(session_runtime, **kw)
    paths = output_paths(session_runtime.models_dir, "diskfull")
    folder = paths.adapter.parent
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    from safetensors import safe_open

    with safe_open(str(paths.adapter), "pt") as f:
        assert f.metadata()["steps"] == "1"
    load_ipadapter(paths.adapter)  # intact and loadable


def test_not_enough_space_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100, 100, 10))
    (tmp_path / "a.bin").write_bytes(b"old")
    with pytest.raises(TrainingError, match="not enough disk space"):
        train_files.write_atomic(tmp_path / "a.bin", b"x" * 1000)
    assert (tmp_path / "a.bin").read_bytes() == b"old"
