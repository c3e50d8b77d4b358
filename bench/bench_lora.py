"""LoRA as a weight patch: sampling with a LoRA, switching LoRAs, and diffusers on the same file, in one process.

    python bench/bench_lora.py [--models-dir DIR] [--size 128] [--steps 4] [--repeats 15] [--clock cpu|wall] [--switches 20]

Model: the ~100M-parameter SD1.5-layout benchmark checkpoint (``mid-sd15.safetensors``, nodes/tiny/sd.py,
built from its config), one torch thread, CPU, float32, euler, cfg 7 (batch 2 through the UNet). Two kohya
LoRA files (rank 16 on every attention / feed-forward linear and the text encoder, fp16 as sd-scripts saves),
strength 0.8. Every figure is the best of ``--repeats`` runs; runs of the compared variants alternate (order
rotated every repeat). Times are CPU seconds of the process by default (``--clock wall`` for wall time): with
one torch thread that is the cost of a run, while wall time on a shared machine mostly measures the others.

Prints:
  sample   : KSampler with one LoRA / without (text encodings cached: only sampling runs), with
             (1) the fused copy cached (what ipgraph does) and (2) fusing on every KSampler call (the other
             "installed for sampling" choice); diffusers on the same file: fused / none and unfused
             (peft layers computing the LoRA every step) / none.
  switch   : A→B→A... on one warm checkpoint, ``--switches`` runs alternating the LoRA: a switch is one fuse
             of the other set (timed alone, as KSampler enters it); the run right after a switch vs the next run
             with the LoRA unchanged (paired, best of each); RSS at start /
             half-way / end, and the bytes of fused copies ipgraph holds (one set per model, however many
             switches);
             diffusers: unfuse_lora + unload_lora_weights + load_lora_weights + set_adapters + fuse_lora per
             switch, RSS over the same number of alternations.
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CKPT = "mid-sd15.safetensors"
PROMPT, NEGATIVE, STRENGTH = "a polar bear in the snow", "blurry", 0.8


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def graph(lora: str | None, seed: int, steps: int, size: int):
    from ipgraph.engine import Graph

    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=CKPT)
    model, clip = ck.model, ck.clip
    if lora:
        lo = g.add("LoraLoader", id="lora", model=model, clip=clip, lora_name=lora, strength_model=STRENGTH,
                   strength_clip=STRENGTH)
        model, clip = lo.MODEL, lo.CLIP
    pos = g.add("CLIPTextEncode", id="pos", clip=clip, text=PROMPT)
    neg = g.add("CLIPTextEncode", id="neg", clip=clip, text=NEGATIVE)
    lat = g.add("EmptyLatentImage", id="lat", width=size, height=size)
    g.add("KSampler", id="ks", model=model, positive=pos.out("conditioning"), negative=neg.out("conditioning"),
          latent_image=lat.out("latent"), seed=seed, steps=steps, cfg=7.0, sampler_name="euler")
    return g


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def timed(fn) -> float:
    """Seconds of ``fn`` on the chosen clock. CPU time (the default) is what a run costs with one torch thread
    whatever else the machine runs; wall time on a shared machine mostly measures the neighbours."""
    t = clock()
    fn()
    return clock() - t


def fused_bytes() -> tuple[int, int]:
    """(number of models holding a fused set, bytes of fused weight copies held) in ipgraph's patch cache."""
    from ipgraph.nodes.lora.patch import _FUSED

    sets = list(_FUSED.values())
    return len(sets), sum(t.numel() * t.element_size() for _, fused, _ in sets for t in fused.values())


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--clock", choices=list(CLOCK), default="cpu")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    torch.set_num_threads(1)
    import warnings

    import diffusers
    import transformers

    warnings.filterwarnings("ignore", message="All adapters are already merged")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    t_start = time.perf_counter()

    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime
    from ipgraph.nodes.lora.files import load_lora
    from ipgraph.nodes.lora.patch import _FUSED, weights_installed
    from ipgraph.nodes.tiny.lora import kohya_lora
    from ipgraph.nodes.tiny.sd import build_tiny, ensure_tiny_models

    ensure_tiny_models(args.models_dir, include_mid=True)
    parts = build_tiny("sd15-mid")
    (args.models_dir / "loras").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(2):
        name = f"bench-mid-{'ab'[i]}-r{args.rank}.safetensors"
        if not (args.models_dir / "loras" / name).exists():
            save_file(kohya_lora(parts["unet"], (parts["text_encoder"],), 900 + i, rank=args.rank),
                      str(args.models_dir / "loras" / name))
        names.append(name)
    del parts
    paths = [str(args.models_dir / "loras" / n) for n in names]
    runtime = Runtime.create(models_dir=args.models_dir, output_dir=args.models_dir / "out", device="cpu",
                             dtype="float32")
    engine = Engine(REGISTRY, runtime)
    seeds = iter(range(1, 10**6))

    def run(lora):
        return engine.run(graph(lora, next(seeds), args.steps, args.size), outputs=["ks"])

    def fuse_every_call():
        _FUSED.clear()  # what installing the LoRA anew for every KSampler call costs
        run(names[0])

    ck = engine.run(graph(None, 0, 1, args.size), outputs=["ckpt"]).outputs["ckpt"]
    n_params = sum(p.numel() for p in ck.model.unet.parameters())
    n_unet_terms = sum(1 for part, _ in load_lora(paths[0]).terms if part == "unet")

    # diffusers on copies of the same modules (it injects peft layers into what it is given), same file
    sched = EulerDiscreteScheduler.from_config(ck.model.scheduler_config)

    def pipeline(unet, te):
        p = StableDiffusionPipeline(vae=ck.vae.vae, text_encoder=te, tokenizer=ck.clip.tokenizers[0], unet=unet,
                                    scheduler=copy.deepcopy(sched), safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        return p

    d_none = pipeline(ck.model.unet, ck.clip.text_encoders[0])  # no LoRA: ipgraph's modules, never changed
    d_lora = pipeline(copy.deepcopy(ck.model.unet), copy.deepcopy(ck.clip.text_encoders[0]))
    d_load = timed(lambda: (d_lora.load_lora_weights(paths[0], adapter_name="a"),
                            d_lora.set_adapters(["a"], adapter_weights=[STRENGTH])))
    with torch.no_grad():
        embeds = {id(p): p.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE) for p in (d_none, d_lora)}

    def d_call(p):
        pe, ne = embeds[id(p)]
        with torch.no_grad():
            p(prompt_embeds=pe, negative_prompt_embeds=ne, height=args.size, width=args.size,
              num_inference_steps=args.steps, guidance_scale=7.0, output_type="latent",
              generator=torch.Generator("cpu").manual_seed(next(seeds)))

    # -- (a) sampling with one LoRA vs none, alternating (order rotated every repeat), best of N ---------
    d_unfused = pipeline(copy.deepcopy(ck.model.unet), copy.deepcopy(ck.clip.text_encoders[0]))
    d_unfused.load_lora_weights(paths[0], adapter_name="a")
    d_unfused.set_adapters(["a"], adapter_weights=[STRENGTH])
    with torch.no_grad():
        embeds[id(d_unfused)] = d_unfused.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    d_fuse = timed(lambda: d_lora.fuse_lora(adapter_names=["a"]))
    run(None), run(names[0]), run(names[1]), run(names[0])  # warm: files parsed, text encodings cached
    for p in (d_none, d_lora, d_unfused):
        d_call(p)
    unet_model = dict(engine.run(graph(names[0], 0, 1, args.size), outputs=["lora"]).outputs["lora"])["MODEL"]

    def fuse_only():
        _FUSED.clear()
        with weights_installed(unet_model.unet, unet_model.patches):
            pass

    variants = {"none": lambda: run(None), "fused": lambda: run(names[0]), "fuse_each": fuse_every_call,
                "fuse": fuse_only, "d_none": lambda: d_call(d_none), "d_fused": lambda: d_call(d_lora),
                "d_unfused": lambda: d_call(d_unfused)}
    best = {k: float("inf") for k in variants}
    keys = list(variants)
    for r in range(args.repeats):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            best[k] = min(best[k], timed(variants[k]))
    # the same UNet forward with the original and the fused weights, tightly alternated (less noise than runs)
    x, ts = torch.randn(2, 4, args.size // 8, args.size // 8), torch.tensor([500.0, 500.0])
    ctx = torch.randn(2, 77, unet_model.unet.config.cross_attention_dim)

    def forward():
        with torch.no_grad():
            unet_model.unet(x, ts, encoder_hidden_states=ctx)

    def forward_fused():
        with weights_installed(unet_model.unet, unet_model.patches):
            forward()

    forward_fused()
    fwd = {"orig": float("inf"), "fused": float("inf")}
    for _ in range(2 * args.repeats):
        fwd["orig"] = min(fwd["orig"], timed(forward))
        fwd["fused"] = min(fwd["fused"], timed(forward_fused))
    run(names[0])  # leave the A set fused, as after a sampling
    d_unfused = None  # free its copies before the RSS phase
    gc.collect()
    sets, held = fused_bytes()

    print(f"machine: CPU, {torch.get_num_threads()} torch thread; model {CKPT} ({n_params / 1e6:.0f}M UNet "
          f"params), {args.clock} time, {args.size} px, {args.steps} euler steps, cfg 7; kohya LoRA rank {args.rank} on "
          f"{n_unet_terms} UNet linears + text encoder, strength {STRENGTH}; best of {args.repeats}")
    print(f"sample   : ipgraph no LoRA {best['none']:.3f}s | one LoRA, fused copy cached {best['fused']:.3f}s "
          f"(ratio {best['fused'] / best['none']:.3f}, target <= 1.02) | fused anew on every call "
          f"{best['fuse_each']:.3f}s (ratio {best['fuse_each'] / best['none']:.3f}); one fuse of the UNet "
          f"{best['fuse'] * 1000:.0f} ms ({best['fuse'] / best['none'] * 100:.1f}% of a run)")
    print(f"           diffusers no LoRA {best['d_none']:.3f}s | fuse_lora'd {best['d_fused']:.3f}s (ratio "
          f"{best['d_fused'] / best['d_none']:.3f}) | unfused peft layers {best['d_unfused']:.3f}s (ratio "
          f"{best['d_unfused'] / best['d_none']:.3f}); ipgraph/diffusers with the LoRA "
          f"{best['fused'] / best['d_fused']:.3f}, without {best['none'] / best['d_none']:.3f}")
    print(f"           one UNet forward (batch 2), original weights {fwd['orig'] * 1000:.0f} ms, fused LoRA weights "
          f"{fwd['fused'] * 1000:.0f} ms (ratio {fwd['fused'] / fwd['orig']:.3f}; best of {2 * args.repeats}, "
          "alternating)")
    print(f"           ipgraph holds {sets} fused set ({held / 2**20:.1f} MB of patched weight copies; the UNet "
          f"is {n_params * 4 / 2**20:.0f} MB); diffusers load_lora_weights {d_load:.3f}s, fuse_lora {d_fuse:.3f}s")

    # -- (b) switching A→B→A on the warm checkpoint, RSS over N alternations ----------------------------
    handles = [dict(engine.run(graph(n, 0, 1, args.size), outputs=["lora"]).outputs["lora"])["MODEL"]
               for n in names]

    def swap_to(i):  # what KSampler does on entry after the LoRA changed: one fuse of the new set
        with weights_installed(handles[i].unet, handles[i].patches):
            pass

    for _ in range(2):  # both LoRAs warm in the same state as during the loop
        run(names[0]), run(names[1])
    gc.collect()
    rss0, held0 = rss_mb(), fused_bytes()[1]
    after_switch, unchanged, rss_mid = [], [], None
    for i in range(args.switches):
        after_switch.append(timed(lambda i=i: run(names[i % 2])))  # the other LoRA than the run before
        unchanged.append(timed(lambda i=i: run(names[i % 2])))  # the same LoRA again, new seed
        if i + 1 == args.switches // 2:
            gc.collect()
            rss_mid = rss_mb()
    gc.collect()
    rss1, (sets1, held1) = rss_mb(), fused_bytes()
    swap = min(timed(lambda i=i: swap_to(i % 2)) for i in range(2 * args.repeats))
    print(f"switch   : ipgraph {args.switches} alternations A/B: one switch (fuse of the other set) "
          f"{swap * 1000:.0f} ms; run right after a switch {min(after_switch):.3f}s vs LoRA unchanged "
          f"{min(unchanged):.3f}s (ratio {min(after_switch) / min(unchanged):.3f}); RSS {rss0:.0f} MB -> {rss_mid:.0f} MB after {args.switches // 2} -> {rss1:.0f} MB "
          f"after {args.switches} ({rss1 - rss0:+.0f} MB); fused copies held {held0 / 2**20:.1f} MB -> "
          f"{held1 / 2**20:.1f} MB in {sets1} set")
    switch_s = swap
    series = [rss_mb()]
    for i in range(4 * args.switches):  # many more, cheap (1 step, 64 px): RSS has no trend, only noise
        engine.run(graph(names[i % 2], next(seeds), 1, 64), outputs=["ks"])
        if (i + 1) % args.switches == 0:
            gc.collect()
            series.append(rss_mb())
    print(f"           RSS over {4 * args.switches} more alternations (1 step, 64 px), every {args.switches}: "
          f"{' -> '.join(f'{r:.0f}' for r in series)} MB; fused copies held {fused_bytes()[1] / 2**20:.1f} MB")

    d_switch = []

    def d_switch_to(i):
        d_lora.unfuse_lora()
        d_lora.unload_lora_weights()
        d_lora.load_lora_weights(paths[i], adapter_name="ab"[i])
        d_lora.set_adapters(["ab"[i]], adapter_weights=[STRENGTH])
        d_lora.fuse_lora(adapter_names=["ab"[i]])

    d_lora.fuse_lora(adapter_names=["a"])
    d_switch_to(1), d_switch_to(0)  # warm
    gc.collect()
    d_rss0 = rss_mb()
    for i in range(args.switches):
        d_switch.append(timed(lambda i=i: d_switch_to((i + 1) % 2)))
    gc.collect()
    d_rss1 = rss_mb()
    print(f"           diffusers unfuse+unload+load+fuse per switch {min(d_switch) * 1000:.0f} ms (ratio ipgraph/"
          f"diffusers {switch_s / min(d_switch):.3f}); RSS {d_rss0:.0f} MB -> {d_rss1:.0f} MB "
          f"({d_rss1 - d_rss0:+.0f} MB) over {args.switches} switches")
    print(f"total    : {time.perf_counter() - t_start:.0f}s wall")


if __name__ == "__main__":
    main()
