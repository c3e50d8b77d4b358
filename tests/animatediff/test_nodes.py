"""AnimateDiff nodes: bad input as sentences, context windows, per-frame IP-Adapter rows, Evolved's names."""

from __future__ import annotations

import shutil

import pytest
import torch

from ipgraph.engine import REGISTRY, Engine, Graph
from ipgraph.engine.executor import NodeFailed
from ipgraph.nodes.animatediff.context import ContextOptions, context_windows, fuse_weights
from ipgraph.nodes.animatediff.motion import load_motion_module
from ipgraph.nodes.animatediff.patch import MotionPatch, installed
from ipgraph.nodes.core.runtime import Runtime
from ipgraph.nodes.core.types import SamplingState
from ipgraph.nodes.models.single_file import load_checkpoint

from .conftest import animatediff_graph


def _fail(engine, graph):
    with pytest.raises(NodeFailed) as info:
        engine.run(graph, outputs=["ks"])
    return info.value.error


def test_sdxl_motion_module_on_sd15_is_a_sentence(engine):
    err = _fail(engine, animatediff_graph(2, 1, motion="tiny-mm-sdxl-beta.safetensors", reference=None))
    assert err.node_id == "ad" and err.exception_type == "ValueError"
    assert err.message.startswith("input motion_model: tiny-mm-sdxl-beta.safetensors does not fit the model")
    assert "is for SDXL but the model is SD1.5" in err.message


def test_frames_beyond_the_module_need_context_options(engine):
    err = _fail(engine, animatediff_graph(9, 1, motion="tiny-mm-sd15-v3.safetensors", reference=None))
    assert err.node_id == "ks"
    assert err.message.startswith("input latent_image: the latent batch has 9 frames but the motion module "
                                  "tiny-mm-sd15-v3.safetensors handles at most 8 at once")
    assert "ADE_StandardUniformContextOptions" in err.message


def test_context_length_beyond_the_module_is_refused(engine):
    err = _fail(engine, animatediff_graph(9, 1, motion="tiny-mm-sd15-v3.safetensors", reference=None,
                                          context={"context_length": 16, "context_overlap": 4}))
    assert err.node_id == "ad" and "context_length is 16" in err.message and "at most 8" in err.message


def test_non_motion_file_is_found_before_running(models_dir, tmp_path):
    folder = tmp_path / "models" / "animatediff_models"
    folder.mkdir(parents=True)
    shutil.copy(models_dir / "ipadapter" / "tiny-ip-adapter_sd15.safetensors", folder / "mm_sd_v15_v2.safetensors")
    engine = Engine(REGISTRY, Runtime.create(models_dir=tmp_path / "models", output_dir=tmp_path / "out",
                                             device="cpu", dtype="float32"))
    g = Graph()
    g.add("LoadMotionModule", id="mm", name="mm_sd_v15_v2.safetensors")
    g.add("ADE_LoadAnimateDiffModel", id="ade", model_name="mm_sd_v15_v2.safetensors")
    problems = engine.validate(g, outputs=["mm", "ade"])
    found = {(p.node_id, p.input) : p.message for p in problems}
    assert "it is not a motion module" in found[("mm", "name")]
    assert "it is not a motion module" in found[("ade", "model_name")]


def test_standard_uniform_windows_match_evolved():
    opts = ContextOptions(context_length=8, context_overlap=4)
    assert context_windows(12, opts, 0) == [list(range(0, 8)), list(range(4, 12))]
    assert context_windows(8, opts, 0) == [list(range(8))]
    for step in range(6):  # every frame in some window at every step, never past the end
        windows = context_windows(20, opts, step)
        assert sorted({f for w in windows for f in w}) == list(range(20))
        assert all(len(w) == 8 and w == sorted(w) for w in windows)
    looped = context_windows(12, ContextOptions(8, 1, 4, "looped_uniform", closed_loop=True), 0)
    assert [8, 9, 10, 11, 0, 1, 2, 3] in looped
    assert fuse_weights(list(range(8)), 12, opts).tolist() == [1, 2, 3, 4, 4, 3, 2, 1]


@pytest.mark.slow
def test_context_windows_run_and_one_window_equals_no_windows(engine, models_dir):
    out = engine.run(animatediff_graph(12, 2, motion="tiny-mm-sd15-v3.safetensors", reference=None,
                                       context={"context_length": 8, "context_overlap": 4}), outputs=["ks"])
    samples = out.outputs["ks"].LATENT.samples
    assert samples.shape == (12, 4, 8, 8) and torch.isfinite(samples).all()

    module = load_motion_module(models_dir / "animatediff_models" / "tiny-mm-sd15-v3.safetensors")
    unet = load_checkpoint(models_dir / "checkpoints" / "tiny-sd15.safetensors").unet
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(16, 4, 8, 8, generator=g), torch.randn(16, 77, 32, generator=g)
    with installed(unet, [MotionPatch(module)], SamplingState(batch_size=8)):
        plain = unet(x, 300, encoder_hidden_states=text).sample
    one = ContextOptions(context_length=8, context_overlap=4, use_on_equal_length=True)
    calls = []
    hook = unet.conv_in.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with installed(unet, [MotionPatch(module, context=one)], SamplingState(batch_size=8)):
        windowed = unet(x, 300, encoder_hidden_states=text, return_dict=False)[0]
    hook.remove()
    assert calls == [16] and (windowed - plain).abs().max() < 1e-5
    assert "forward" not in vars(unet)  # the wrapper is gone


@pytest.mark.slow
@pytest.mark.parametrize("frames, context", [(8, None), (12, {"context_length": 8, "context_overlap": 4})])
def test_motion_and_ipadapter_through_per_entry_guidance(engine, frames, context):
    """Two positive entries take the sampler's per-entry path (one UNet call per entry and side, each with its
    own ``state.extra``): the motion module, its context windows and the IP-Adapter rows still act there."""
    g = animatediff_graph(frames, 1, motion="tiny-mm-sd15-v3.safetensors", combine="a red balloon",
                          context=context)
    samples = engine.run(g, outputs=["ks"]).outputs["ks"].LATENT.samples
    assert samples.shape == (frames, 4, 8, 8) and torch.isfinite(samples).all()


def test_per_frame_ipadapter_rows_follow_frames(models_dir):
    """unfold_batch tokens [2, T, D]: UNet row i (each CFG side) sees image i, exactly as a run with image i
    alone; inside a context window holding only frame 1, the window's rows see image 1."""
    from ipgraph.nodes.ipadapter import IPAdapterPatch, load_ipadapter
    from ipgraph.nodes.ipadapter.patch import installed as ip_installed

    adapter = load_ipadapter(models_dir / "ipadapter" / "tiny-ip-adapter_sd15.safetensors")
    unet = load_checkpoint(models_dir / "checkpoints" / "tiny-sd15.safetensors").unet
    g = torch.Generator().manual_seed(2)
    tokens = adapter.project(torch.randn(2, adapter.info.encoder_width, generator=g)).float()
    zeros = adapter.project(torch.zeros(1, adapter.info.encoder_width)).float()
    x, text = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 77, 32, generator=g)

    def run(patch, rows=(0, 1, 2, 3), frames=None):
        state = SamplingState(batch_size=2 if frames is None else len(frames))
        with ip_installed(unet, [patch], state):
            if frames is not None:
                state.extra["frames"] = frames  # what AnimateDiff's windowed forward sets
            return unet(x[list(rows)], 500, encoder_hidden_states=text[list(rows)]).sample

    unfolded = IPAdapterPatch(adapter, tokens, zeros.expand(2, -1, -1), unfold_batch=True)
    both = run(unfolded)
    first = run(IPAdapterPatch(adapter, tokens[:1], zeros))
    second = run(IPAdapterPatch(adapter, tokens[1:], zeros))
    assert (both[[0, 2]] - first[[0, 2]]).abs().max() < 1e-5
    assert (both[[1, 3]] - second[[1, 3]]).abs().max() < 1e-5
    assert (first[3] - second[3]).abs().max() > 1e-3  # the two images really differ (cond rows)
    window = run(unfolded, rows=(1, 3), frames=[1])
    # against the same two rows run alone (a 2-row batch rounds differently from a 4-row one, ~1e-4 in float32)
    assert (window - run(IPAdapterPatch(adapter, tokens[1:], zeros), rows=(1, 3))).abs().max() < 1e-5


def test_evolved_names_build_the_same_model(engine):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    ctx = g.add("ADE_StandardUniformContextOptions", id="ctx", context_length=16, context_overlap=4)
    g.add("ADE_AnimateDiffLoaderGen1", id="gen1", model=ck.model, model_name="tiny-mm-sd15-v2.ckpt",
          beta_schedule="autoselect", context_options=ctx.CONTEXT_OPTS)
    mm = g.add("ADE_LoadAnimateDiffModel", id="load", model_name="tiny-mm-sd15-v2.ckpt")
    scale = g.add("ADE_MultivalDynamic", id="mv", float_val=0.5)
    m = g.add("ADE_ApplyAnimateDiffModel", id="apply", motion_model=mm.MOTION_MODEL, start_percent=0.1,
              end_percent=0.9, scale_multival=scale.MULTIVAL)
    g.add("ADE_UseEvolvedSampling", id="use", model=ck.model, beta_schedule="sqrt_linear (AnimateDiff)",
          m_models=m.M_MODELS)
    out = engine.run(g, outputs=["gen1", "use"]).outputs
    gen1, use = out["gen1"].MODEL, out["use"].MODEL
    assert gen1.patches[-1].context.context_length == 16 and gen1.scheduler_config["beta_schedule"] == "linear"
    p = use.patches[-1]
    assert (p.scale, p.start_at, p.end_at) == (0.5, 0.1, 0.9) and use.scheduler_config["beta_end"] == 0.012
    spec = REGISTRY.get("ADE_AnimateDiffLoaderGen1")
    assert list(spec.inputs)[:3] == ["model", "model_name", "beta_schedule"] and list(spec.outputs) == ["MODEL"]
