"""Seed variants of one workflow sampled as one batch (ipgraph.engine.run_batch + nodes/diffusion/batch.py): each job's
latents and images are bit-identical to the job run alone (tiny SD1.5, CPU fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ipgraph.engine import REGISTRY, Engine, Graph, run_batch

pytestmark = pytest.mark.slow
DOC = json.loads((Path(__file__).resolve().parents[2] / "graphs" / "txt2img.json").read_text())


def graph(seed: int, sampler: str, scheduler: str = "normal", batch_size: int = 1) -> Graph:
    doc = json.loads(json.dumps(DOC))
    doc["nodes"]["sampler"]["inputs"].update(seed=seed, steps=3, sampler_name=sampler, scheduler=scheduler)
    doc["nodes"]["latent"]["inputs"]["batch_size"] = batch_size
    return Graph.from_dict(doc, REGISTRY)


@pytest.mark.parametrize("sampler,scheduler", [("euler", "normal"), ("euler_ancestral", "normal"),
                                               ("dpmpp_sde", "karras")])
def test_batched_seeds_equal_each_job_alone(runtime, sampler, scheduler, monkeypatch):
    import ipgraph.nodes  # noqa: F401
    from ipgraph.nodes.diffusion import batch

    seeds = [11, 12, 13]
    alone = [Engine(REGISTRY, runtime).run(graph(s, sampler, scheduler), outputs=["decode"]) for s in seeds]
    calls = []
    original = batch.run_sampling

    def counting(*args, **kwargs):
        calls.append(kwargs["seed"])
        return original(*args, **kwargs)

    monkeypatch.setattr(batch, "run_sampling", counting)
    together = run_batch(Engine(REGISTRY, runtime), [graph(s, sampler, scheduler) for s in seeds], outputs=["decode"])
    assert calls == [seeds]  # one sampling call for the three jobs
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a.outputs["sampler"].LATENT.samples, b.outputs["sampler"].LATENT.samples)
        assert torch.equal(a.outputs["decode"].IMAGE, b.outputs["decode"].IMAGE)
    assert not torch.equal(together[0].outputs["decode"].IMAGE, together[1].outputs["decode"].IMAGE)


def test_jobs_of_several_images_run_alone(runtime):
    import ipgraph.nodes  # noqa: F401

    seeds = [21, 22]
    alone = [Engine(REGISTRY, runtime).run(graph(s, "euler", batch_size=2), outputs=["sampler"]) for s in seeds]
    together = run_batch(Engine(REGISTRY, runtime), [graph(s, "euler", batch_size=2) for s in seeds],
                         outputs=["sampler"])
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a.outputs["sampler"].LATENT.samples, b.outputs["sampler"].LATENT.samples)
