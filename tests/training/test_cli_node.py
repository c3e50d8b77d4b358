"""``ipgraph train ipadapter`` end to end (diffusers-folder checkpoint, log, plot, resume, cached embeddings),
SDXL plus, and the TrainIPAdapter node (progress, cancellation, processors restored)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ipgraph.cli import main
from ipgraph.nodes.ipadapter import inspect_ipadapter

pytestmark = pytest.mark.slow


def _train(models_dir, dataset, *extra):
    data, images = dataset
    return main(["train", "ipadapter", "--data", str(data), "--images", str(images), "--clip-vision",
                 "tiny-clip-vision.safetensors", "--resolution", "64", "--batch-size", "2", "--lr", "1e-3",
                 "--models-dir", str(models_dir), "--device", "cpu", *extra])


def test_cli_run_log_plot_and_resume(models_dir, dataset, capsys):
    rc = _train(models_dir, dataset, "--checkpoint", "tiny-sd15-diffusers", "--arch", "sd15", "--steps", "2",
                "--out", "cli-test", "--save-every", "1")
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "trained 2 steps" in out.out and "training" in out.err and "loss=" in out.err  # the tqdm bar
    folder = models_dir / "ipadapter"
    info = inspect_ipadapter(folder / "cli-test.safetensors")
    assert (info.variant, info.arch, info.num_layers) == ("base", "sd15", 16)
    lines = [json.loads(x) for x in (folder / "cli-test.loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert Image.open(folder / "cli-test.loss.png").size == (800, 450)
    rc = _train(models_dir, dataset, "--checkpoint", "tiny-sd15-diffusers", "--steps", "3", "--out", "cli-test",
                "--resume", str(folder / "cli-test.trainstate"))
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "trained 3 steps" in out.out and "from the cache" in out.out
    assert [json.loads(x)["step"] for x in (folder / "cli-test.loss.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_cli_arch_mismatch(models_dir, dataset, capsys):
    rc = _train(models_dir, dataset, "--checkpoint", "tiny-sd15.safetensors", "--arch", "sdxl", "--steps", "1",
                "--out", "x")
    assert rc == 1 and "is SD15 but --arch says sdxl" in capsys.readouterr().err


def test_sdxl_plus_trains_and_diffusers_reads_it(models_dir, dataset, capsys):
    rc = _train(models_dir, dataset, "--checkpoint", "tiny-sdxl.safetensors", "--variant", "plus", "--steps", "1",
                "--out", "sdxl-plus-test")
    assert rc == 0, capsys.readouterr().err
    path = models_dir / "ipadapter" / "sdxl-plus-test.safetensors"
    info = inspect_ipadapter(path)
    assert (info.variant, info.arch, info.num_layers, info.tokens) == ("plus", "sdxl", 70, 16)
    from ipgraph.nodes.models.single_file import load_checkpoint

    from ..ipadapter._oracle import h94_state, load_into

    unet = load_checkpoint(models_dir / "checkpoints" / "tiny-sdxl.safetensors").unet
    load_into(unet, [h94_state(path)])  # diffusers' own loader, strict


def test_node_trains_reports_progress_and_cancels(engine, runtime, dataset):
    import shutil

    from ipgraph.engine import CancelToken, Graph, RunCancelledError, events

    shutil.copytree(dataset[1], runtime.input_dir / "imgs")
    shutil.copy(dataset[0], runtime.input_dir / "data.json")

    def graph(steps):
        g = Graph()
        ck = g.add("LoadCheckpoint", id="ck", name="tiny-sd15.safetensors")
        cv = g.add("CLIPVisionLoader", id="cv", name="tiny-clip-vision.safetensors")
        g.add("TrainIPAdapter", id="train", model=ck.model, clip=ck.clip, vae=ck.vae, clip_vision=cv.clip_vision,
              data="data.json", images="imgs", steps=steps, batch_size=2, learning_rate=1e-3, resolution=64,
              out="node-test")
        return g

    seen = []
    result = engine.run(graph(2), on_event=lambda e: seen.append(e) if isinstance(e, events.NodeProgress) else None)
    out = result.outputs["train"]
    assert out.ipadapter_file == "node-test.safetensors" and out.ipadapter.info.variant == "base"
    assert [(e.value, e.max) for e in seen if e.node_id == "train"][-1] == (2, 2)

    unet = engine.run(graph(2)).outputs["ck"].model.unet  # cached: same shared UNet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    token = CancelToken()

    def cancel_on_progress(e):
        if isinstance(e, events.NodeProgress) and e.node_id == "train" and e.value >= 1:
            token.cancel()

    with pytest.raises(RunCancelledError):
        engine.run(graph(50), on_event=cancel_on_progress, cancel=token)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
