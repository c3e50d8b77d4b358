"""Real-size load and run: ipgraph (CLI one-shot and in-process engine) vs the plain diffusers pipeline on the
same files: a real-size SD1.5 single-file checkpoint, a ViT-H/14 CLIP vision encoder and ip-adapter_sd15, all
with random weights (nothing can be downloaded here), in the layouts users download.

    python bench/bench_realsize.py [--quick] [--cache DIR] [--rounds N] [--threads N] [--workflows txt2img,ipadapter]
    python bench/bench_realsize.py --quick --alternate 50     # RSS over 50 alternating jobs, two checkpoints

The files are written once into ``--cache`` (default ~/.cache/ipgraph-bench; ~7 GB real size, ~0.3 GB with
--quick, which uses a mid-size model of the same architecture for development). Every measurement runs in its
own subprocess (so cold means cold, and peak RSS is per side: ``os.wait4`` gives each child's own maximum
resident set), alternating the sides: for each workflow (txt2img, IP-Adapter) and round, ipgraph engine,
diffusers, ipgraph CLI. 256x256, euler, cfg 7, 4 steps, fp32, CPU.

Printed per side: cold (process spawn to the first image: interpreter, imports, loading, first run; the engine
and diffusers children then go on with a warm run, the CLI exits), load (checkpoint/encoder/adapter files to
modules; both sides map the files and read pages during the first run), RSS after load, peak RSS, warm (a new seed, models and encodings cached), per step, VAE
decode; and the ratios ipgraph / diffusers. The ipgraph engine child also prints the per-node breakdown of
its cold run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE, STEPS, CFG = 256, 4, 7.0
PROMPT, NEGATIVE = "a polar bear in the snow", "blurry"
CKPT, ENCODER, ADAPTER, REFERENCE = ("sd15-random.safetensors", "CLIP-ViT-H-14-random.safetensors",
                                     "ip-adapter_sd15.safetensors", "reference.png")
SHAPES = {  # (unet widths, vae widths, text layers, vision hidden/layers/heads/mlp)
    "real": dict(unet=(320, 640, 1280, 1280), vae=(128, 256, 512, 512), text_layers=12,
                 vision=(1280, 32, 16, 5120)),
    "quick": dict(unet=(64, 128, 256, 256), vae=(32, 64, 128, 128), text_layers=2, vision=(256, 2, 4, 1024)),
}


# ------------------------------------------------------------------------------------------------ files
def _init_value(name: str, shape: tuple, gen):
    """Random weights with sane activations: norms 1, biases 0, the rest N(0, 1/fan_in)."""
    import torch

    if name.endswith("bias"):
        return torch.zeros(shape)
    if len(shape) == 1:
        return torch.ones(shape)
    fan_in = max(1, math.prod(shape[1:]))
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def _write_safetensors(path: Path, shapes: dict[str, tuple], dtype: str = "F32", metadata: dict | None = None,
                       values=None) -> None:
    """Stream a safetensors file tensor by tensor (memory: one tensor), values from ``values(name, shape)``."""
    import torch

    size = {"F32": 4, "F16": 2}[dtype]
    header, offset = {}, 0
    for name in sorted(shapes):
        n = math.prod(shapes[name]) * size
        header[name] = {"dtype": dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(0)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in sorted(shapes):
            t = (values or _init_value)(name, shapes[name], gen)
            t = t.to(torch.float16 if dtype == "F16" else torch.float32).contiguous()
            f.write(memoryview(t.view(-1).view(torch.uint8).numpy()))
    tmp.rename(path)


def build_files(cache: Path, kind: str) -> Path:
    """Write (once) models/{checkpoints,clip_vision,ipadapter}, the diffusers config folder and an input image."""
    root = cache / kind
    done = root / "done.json"
    if done.exists():
        return root
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from ipgraph.nodes.ipadapter.files import describe_unet
    from ipgraph.nodes.models.configs import scheduler_config
    from ipgraph.nodes.models.single_file import (
        SD15_CLIP_PREFIX,
        UNET_PREFIX,
        VAE_PREFIX,
        clip_to_original,
        unet_to_original,
        vae_to_original,
    )
    from ipgraph.nodes.models.tensorfile import empty_module
    from ipgraph.nodes.models.tokenizer import clip_tokenizer

    s = SHAPES[kind]
    models, config = root / "models", root / "diffusers-config"
    for sub in ("checkpoints", "clip_vision", "ipadapter"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    unet = empty_module(lambda: UNet2DConditionModel(
        sample_size=64, block_out_channels=s["unet"], attention_head_dim=8, cross_attention_dim=768))
    vae = empty_module(lambda: AutoencoderKL(
        block_out_channels=s["vae"], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, sample_size=512))
    text_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                              num_hidden_layers=s["text_layers"], num_attention_heads=12,
                              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
                              bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    text = empty_module(lambda: CLIPTextModel(text_cfg))
    shapes = {UNET_PREFIX + k: tuple(v.shape) for k, v in unet_to_original(unet.state_dict(), unet.config).items()}
    shapes |= {VAE_PREFIX + k: tuple(v.shape) for k, v in vae_to_original(vae.state_dict(), vae.config).items()}
    shapes |= {SD15_CLIP_PREFIX + k: tuple(v.shape) for k, v in clip_to_original(text).items()}
    print(f"writing {kind} checkpoint ({sum(math.prod(v) for v in shapes.values()) / 1e6:.0f} M params)", flush=True)
    _write_safetensors(models / "checkpoints" / CKPT, shapes)  # no metadata: as a downloaded file

    hidden, layers, heads, mlp = s["vision"]
    vis_cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                               num_attention_heads=heads, image_size=224, patch_size=14, projection_dim=1024,
                               hidden_act="gelu", layer_norm_eps=1e-5)
    vision = empty_module(lambda: CLIPVisionModelWithProjection(vis_cfg))
    vshapes = {k: tuple(v.shape) for k, v in vision.state_dict().items() if not k.endswith("position_ids")}
    print(f"writing {kind} CLIP vision ({sum(math.prod(v) for v in vshapes.values()) / 1e6:.0f} M params)", flush=True)
    _write_safetensors(models / "clip_vision" / ENCODER, vshapes)

    widths = describe_unet(unet).layer_widths
    ashapes = {"image_proj.proj.weight": (4 * 768, 1024), "image_proj.proj.bias": (4 * 768,),
               "image_proj.norm.weight": (768,), "image_proj.norm.bias": (768,)}
    for j, c in enumerate(widths):
        ashapes[f"ip_adapter.{2 * j + 1}.to_k_ip.weight"] = (c, 768)
        ashapes[f"ip_adapter.{2 * j + 1}.to_v_ip.weight"] = (c, 768)
    _write_safetensors(models / "ipadapter" / ADAPTER, ashapes, dtype="F16")  # h94's file is fp16

    # the diffusers side: configs only (weights come from the same single file), and the encoder folder
    unet.save_config(config / "unet")
    vae.save_config(config / "vae")
    text_cfg.save_pretrained(config / "text_encoder")
    clip_tokenizer().save_pretrained(config / "tokenizer")
    sched = dict(scheduler_config("sd15"), _class_name="EulerDiscreteScheduler")
    (config / "scheduler").mkdir(parents=True, exist_ok=True)
    (config / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    (config / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    enc = root / "image_encoder"
    enc.mkdir(exist_ok=True)
    vis_cfg.save_pretrained(enc)
    if not (enc / "model.safetensors").exists():
        (enc / "model.safetensors").symlink_to(models / "clip_vision" / ENCODER)
    (root / "input").mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(1)
    pixels = (torch.rand(320, 280, 3, generator=gen) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(root / "input" / REFERENCE)
    done.write_text(json.dumps({"kind": kind}))
    return root


# ------------------------------------------------------------------------------------------------ graphs
def ipgraph_graph(seed: int, adapter: bool) -> dict:
    """The ipgraph JSON document (the CLI runs the file, the engine child the same document)."""
    nodes = {
        "ckpt": {"type": "LoadCheckpoint", "inputs": {"name": CKPT}},
        "pos": {"type": "CLIPTextEncode", "inputs": {"clip": {"node": "ckpt", "output": "clip"}, "text": PROMPT}},
        "neg": {"type": "CLIPTextEncode", "inputs": {"clip": {"node": "ckpt", "output": "clip"}, "text": NEGATIVE}},
        "lat": {"type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE}},
    }
    model = {"node": "ckpt", "output": "model"}
    if adapter:
        nodes |= {
            "cv": {"type": "CLIPVisionLoader", "inputs": {"clip_name": ENCODER}},
            "ipa": {"type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ADAPTER}},
            "ref": {"type": "LoadImage", "inputs": {"image": REFERENCE}},
            "apply": {"type": "IPAdapterApply", "inputs": {
                "model": model, "ipadapter": {"node": "ipa", "output": "ipadapter"},
                "image": {"node": "ref", "output": "image"}, "clip_vision": {"node": "cv", "output": "clip_vision"},
                "weight": 0.6}},
        }
        model = {"node": "apply", "output": "model"}
    nodes |= {
        "ks": {"type": "KSampler", "inputs": {
            "model": model, "positive": {"node": "pos", "output": "conditioning"},
            "negative": {"node": "neg", "output": "conditioning"}, "latent_image": {"node": "lat", "output": "latent"},
            "seed": seed, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal"}},
        "dec": {"type": "VAEDecode", "inputs": {"samples": {"node": "ks", "output": "latent"},
                                                "vae": {"node": "ckpt", "output": "vae"}}},
        "save": {"type": "SaveImage", "inputs": {"images": {"node": "dec", "output": "image"},
                                                 "filename_prefix": "bench"}},
    }
    return {"format": "ipgraph/1", "nodes": nodes}


# ------------------------------------------------------------------------------------------------ children
def _rss(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child_ipgraph(root: Path, adapter: bool, threads: int) -> dict:
    """In-process engine: cold run (per-node seconds), then a new seed (warm), per step, VAE decode."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine, Graph, events
    from ipgraph.nodes.core.runtime import Runtime

    runtime = Runtime.create(models_dir=root / "models", output_dir=root / "output", input_dir=root / "input",
                             device="cpu", dtype="float32")
    engine = Engine(REGISTRY, runtime)
    imported, rss_imports = time.perf_counter() - t0, _rss()
    loaded_rss = {}

    def run(seed):
        nodes, steps, started = {}, [], {}

        def on_event(e):
            now = time.perf_counter()
            if isinstance(e, events.NodeStarted):
                started[e.node_id] = now
            elif isinstance(e, events.NodeProgress) and e.node_id == "ks":
                steps.append(now)
            elif isinstance(e, events.NodeFinished):
                nodes[e.node_id] = round(e.seconds, 3)
                if e.node_id in ("ckpt", "cv", "ipa"):
                    loaded_rss[e.node_id] = _rss()

        begin = time.perf_counter()
        engine.run(Graph.from_dict(ipgraph_graph(seed, adapter)), on_event=on_event)
        per_step = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else None
        return time.perf_counter() - begin, nodes, per_step

    cold, nodes, _ = run(1)
    to_image = time.time() - float(os.environ.get("_BENCH_T0", time.time()))
    load = sum(nodes.get(n, 0) for n in ("ckpt", "cv", "ipa"))
    rss_loaded = _rss()
    warm, warm_nodes, per_step = run(2)
    return {"to_image": to_image, "cold": imported + cold, "imports": imported, "load": load, "rss_imports": rss_imports,
            "rss_after_load": max(loaded_rss.values()), "rss_after_run": rss_loaded, "warm": warm, "per_step": per_step,
            "decode": warm_nodes.get("dec"), "nodes": nodes, "peak_rss": _rss("VmHWM")}


def child_diffusers(root: Path, adapter: bool, threads: int) -> dict:
    """The plain diffusers pipeline: from_single_file with config= a local folder, its own IP-Adapter loading."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    imported, rss_imports = time.perf_counter() - t0, _rss()
    t1 = time.perf_counter()
    extra = {}
    if adapter:
        extra = dict(image_encoder=CLIPVisionModelWithProjection.from_pretrained(
            root / "image_encoder", local_files_only=True, dtype=torch.float32),
            feature_extractor=CLIPImageProcessor(size=224, crop_size=224))
    pipe = StableDiffusionPipeline.from_single_file(
        str(root / "models" / "checkpoints" / CKPT), config=str(root / "diffusers-config"), local_files_only=True,
        torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False, **extra)
    if adapter:
        pipe.load_ip_adapter(str(root / "models" / "ipadapter"), subfolder="", weight_name=ADAPTER,
                             image_encoder_folder=None)
        pipe.set_ip_adapter_scale(0.6)
    pipe.set_progress_bar_config(disable=True)
    load, rss_after_load = time.perf_counter() - t1, _rss()
    image = Image.open(root / "input" / REFERENCE).convert("RGB") if adapter else None

    def run(seed):
        steps = []

        def on_step(p, i, t, kw):
            steps.append(time.perf_counter())
            return kw

        begin = time.perf_counter()
        with torch.no_grad():
            latents = pipe(PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                           guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(seed),
                           output_type="latent", callback_on_step_end=on_step,
                           **({"ip_adapter_image": image} if adapter else {})).images
            d0 = time.perf_counter()
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
            pipe.image_processor.postprocess(decoded, output_type="pil")[0].save(root / "output" / "diffusers.png")
            decode = time.perf_counter() - d0
        per_step = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else None
        return time.perf_counter() - begin, per_step, decode

    (root / "output").mkdir(exist_ok=True)
    cold, _, _ = run(1)
    to_image = time.time() - float(os.environ.get("_BENCH_T0", time.time()))
    rss_loaded = _rss()
    warm, per_step, decode = run(2)
    return {"to_image": to_image, "cold": imported + load + cold, "imports": imported, "load": load, "rss_imports": rss_imports,
            "rss_after_load": rss_after_load, "rss_after_run": rss_loaded, "warm": warm,
            "per_step": per_step, "decode": decode, "peak_rss": _rss("VmHWM")}


def spawn_measured(args: list[str], env: dict) -> tuple[float, int, str]:
    """Run a child; (wall seconds, its own peak RSS from wait4's rusage, its stdout)."""
    start = time.perf_counter()
    env = dict(env, _BENCH_T0=repr(time.time()))
    pid = os.fork()
    if pid == 0:  # child: exec the command with its output in a file
        out = os.open(env["_BENCH_OUT"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(env["_BENCH_OUT"] + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.execvpe(args[0], args, env)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(args[:5])} failed:\n{Path(env['_BENCH_OUT'] + '.err').read_text()[-3000:]}")
    return wall, usage.ru_maxrss * 1024, Path(env["_BENCH_OUT"]).read_text()


def alternate(root: Path, jobs: int, threads: int) -> None:
    """RSS over ``jobs`` alternating runs between two checkpoints (copies of one file) under a RAM budget
    that holds one: the model manager must drop one to load the other, and RSS must stay flat."""
    import shutil

    import torch

    torch.set_num_threads(threads)
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine, Graph
    from ipgraph.nodes.core.runtime import Runtime

    src = root / "models" / "checkpoints" / CKPT
    other = src.with_name("sd15-random-copy.safetensors")
    if not other.exists():
        shutil.copy(src, other)
    size = src.stat().st_size
    runtime = Runtime.create(models_dir=root / "models", output_dir=root / "output", input_dir=root / "input",
                             device="cpu", dtype="float32", ram_budget_bytes=int(size * 1.5))
    engine = Engine(REGISTRY, runtime)
    rss = []
    for i in range(jobs):
        doc = ipgraph_graph(i, False)
        doc["nodes"]["ckpt"]["inputs"]["name"] = (CKPT, other.name)[i % 2]
        doc["nodes"]["lat"]["inputs"] |= {"width": 64, "height": 64}
        doc["nodes"]["ks"]["inputs"]["steps"] = 1
        engine.run(Graph.from_dict(doc))
        rss.append(_rss())
        print(f"  job {i + 1:3d} ({('A', 'B')[i % 2]}): RSS {rss[-1] / 1e9:.2f} GB, loaded "
              f"{runtime.models.stats()['loaded']}, loads {runtime.models.loads}", flush=True)
    later = rss[2:] or rss
    print(f"{jobs} alternating jobs, budget {1.5 * size / 1e9:.2f} GB (one checkpoint of {size / 1e9:.2f} GB): "
          f"RSS from job 3 on {min(later) / 1e9:.2f}..{max(later) / 1e9:.2f} GB, peak {_rss('VmHWM') / 1e9:.2f} GB")


# ------------------------------------------------------------------------------------------------ main
def gb(n) -> str:
    return f"{n / 1e9:.2f} GB" if n else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="mid-size model of the same architecture (development)")
    p.add_argument("--cache", default=os.environ.get("IPGRAPH_BENCH_CACHE", str(Path.home() / ".cache" / "ipgraph-bench")))
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds per workflow (best of)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workflows", default="txt2img,ipadapter")
    p.add_argument("--alternate", type=int, metavar="JOBS",
                   help="instead: RSS over JOBS alternating jobs between two checkpoints under a RAM budget")
    p.add_argument("--child", choices=["ipgraph", "diffusers"], help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--adapter", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fn = child_ipgraph if args.child == "ipgraph" else child_diffusers
        print(json.dumps(fn(Path(args.root), args.adapter, args.threads)))
        return

    kind = "quick" if args.quick else "real"
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    free = os.statvfs(cache).f_bavail * os.statvfs(cache).f_frsize
    if not (cache / kind / "done.json").exists() and free < (9e9 if kind == "real" else 1e9):
        sys.exit(f"only {gb(free)} free in {cache}; the {kind} files need about {'7' if kind == 'real' else '0.3'} GB")
    t = time.perf_counter()
    root = build_files(cache, kind)
    print(f"files ready in {root} ({time.perf_counter() - t:.1f} s)", flush=True)
    if args.alternate:
        alternate(root, args.alternate, args.threads)
        return
    graphs = {}
    for name in ("txt2img", "ipadapter"):
        graphs[name] = root / f"{name}.json"
        graphs[name].write_text(json.dumps(ipgraph_graph(1, name == "ipadapter")))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DIFFUSERS_VERBOSITY="error",
               TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore", _BENCH_OUT=str(root / "child.out"))
    me = [sys.executable, str(Path(__file__).resolve())]
    cli = [sys.executable, "-m", "ipgraph.cli", "run"]
    results: dict = {}
    for wf in args.workflows.split(","):
        adapter = wf == "ipadapter"
        for r in range(args.rounds):
            for side in ("ipgraph", "diffusers", "cli"):
                if side == "cli":
                    cmd = [*cli, str(graphs[wf]), "--models-dir", str(root / "models"), "--input-dir",
                           str(root / "input"), "--output-dir", str(root / "output"), "--device", "cpu",
                           "--dtype", "float32"]
                else:
                    cmd = [*me, "--child", side, "--root", str(root), "--threads", str(args.threads)]
                    cmd += ["--adapter"] if adapter else []
                wall, peak, out = spawn_measured(cmd, env)
                got = json.loads(out.strip().splitlines()[-1]) if side != "cli" else {}
                got |= {"process": wall, "peak_rss_wait4": peak}
                got.setdefault("to_image", wall)  # the CLI process ends with its image
                print(f"  {wf:9s} round {r + 1} {side:9s} process {wall:6.1f} s  peak RSS {gb(peak)}", flush=True)
                keep = results.setdefault((wf, side), got)
                if got["to_image"] < keep["to_image"]:
                    results[(wf, side)] = got
    print(f"\n{kind} size, {SIZE}x{SIZE}, euler, cfg {CFG}, {STEPS} steps, fp32 CPU, {args.threads} thread(s), "
          f"best of {args.rounds} round(s), every figure from its own subprocess")
    for wf in args.workflows.split(","):
        ig, df, cl = results[(wf, "ipgraph")], results[(wf, "diffusers")], results[(wf, "cli")]
        print(f"\n[{wf}]                 ipgraph engine   diffusers   ratio   | ipgraph CLI  ratio")
        rows = [("cold: start to image", "to_image", "s"), ("  after interpreter", "cold", "s"),
                ("  imports", "imports", "s"),
                ("  load", "load", "s"),
                ("warm, new seed", "warm", "s"), ("per step", "per_step", "s"), ("VAE decode", "decode", "s"),
                ("RSS after imports", "rss_imports", "b"), ("RSS after load", "rss_after_load", "b"),
                ("RSS after 1st run", "rss_after_run", "b"), ("peak RSS", "peak_rss_wait4", "b")]
        for label, key, unit in rows:
            a, b, c = ig.get(key), df.get(key), cl.get(key)
            fmt = (lambda v: f"{v:8.2f} s" if v is not None else "       -") if unit == "s" else \
                (lambda v: f"{v / 1e9:7.2f} GB" if v else "       -")
            ratio = f"{a / b:5.2f}" if a and b else "    -"
            cli_ratio = f"{c / b:5.2f}" if c and b else "    -"
            print(f"  {label:20s} {fmt(a):>12s} {fmt(b):>11s}   {ratio}   | {fmt(c):>10s}  {cli_ratio}")
        print("  ipgraph cold per node: " + ", ".join(f"{k} {v:.2f}s" for k, v in ig["nodes"].items()))


if __name__ == "__main__":
    main()
