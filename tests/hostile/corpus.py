"""The hostile-input corpus: bad graphs, bad files and bad values, each with the error it must produce.

A case is a graph document (ipgraph/1, ipgraph's native node names) plus what must come back: ``format`` (the
document is refused whole), ``problem`` (validation names the node and, when given, the input) or ``run`` (the
graph validates but the named node fails with a sentence, no traceback). Every case goes through the Python
API, the CLI and the server (tests/hostile/test_corpus.py). Files the cases need are written by
:func:`write_bad_files` into the models and input folders of the run.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from dataclasses import dataclass, field

from PIL import Image

CKPT = "tiny-sd15.safetensors"


@dataclass
class Case:
    id: str
    doc: object
    expect: str  # "format" | "problem" | "run"
    node: str | None = None
    input: str | None = None
    words: tuple = ()  # words the message must contain (lower case)
    sample: bool = False  # the case runs a sampler (kept few: they cost time)
    extra: dict = field(default_factory=dict)


def link(node: str, output: str) -> dict:
    return {"node": node, "output": output}


def txt2img(**changes) -> dict:
    """A valid tiny SD1.5 text-to-image graph; ``changes`` maps "node.input" to a new value (None deletes)."""
    nodes = {
        "ckpt": {"type": "LoadCheckpoint", "inputs": {"name": CKPT}},
        "pos": {"type": "CLIPTextEncode", "inputs": {"clip": link("ckpt", "clip"), "text": "a bear"}},
        "neg": {"type": "CLIPTextEncode", "inputs": {"clip": link("ckpt", "clip"), "text": ""}},
        "lat": {"type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"type": "KSampler", "inputs": {"model": link("ckpt", "model"), "positive": link("pos", "conditioning"),
                                             "negative": link("neg", "conditioning"),
                                             "latent_image": link("lat", "latent"), "seed": 1, "steps": 2,
                                             "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                                             "denoise": 1.0}},
        "dec": {"type": "VAEDecode", "inputs": {"samples": link("ks", "latent"), "vae": link("ckpt", "vae")}},
        "save": {"type": "SaveImage", "inputs": {"images": link("dec", "image"), "filename_prefix": "hostile"}},
    }
    for key, value in changes.items():
        node, _, name = key.partition(".")
        if value is None:
            nodes[node]["inputs"].pop(name, None)
        else:
            nodes[node]["inputs"][name] = value
    return {"format": "ipgraph/1", "nodes": nodes}


def single(type_name: str, save_input: str | None = None, **inputs) -> dict:
    """One loader-like node feeding nothing but an output node when it yields an image."""
    nodes = {"n": {"type": type_name, "inputs": inputs}}
    if save_input:
        nodes["save"] = {"type": "SaveImage", "inputs": {"images": link("n", save_input), "filename_prefix": "h"}}
    return {"format": "ipgraph/1", "nodes": nodes}


def image_graph(name: str) -> dict:
    return single("LoadImage", "image", image=name)


def case_text(case: Case) -> str:
    """The case as the JSON text a user would send."""
    import json

    return case.extra["text"] if "text" in case.extra else json.dumps(case.doc)


TRAVERSALS = ["../../../../etc/passwd", "/etc/passwd", "..\\..\\windows\\win.ini", "%2e%2e/%2e%2e/etc/passwd",
              "checkpoints/../../secret.safetensors", "./../x.safetensors", "\x00evil.safetensors",
              "~/.ssh/id_rsa", "a/../../b.safetensors", "C:\\Windows\\system32\\config"]
LOADERS = [("LoadCheckpoint", "name"), ("LoadVAE", "name"), ("CLIPVisionLoader", "name"),
           ("IPAdapterModelLoader", "name"), ("ControlNetLoader", "name"), ("LoadImageEmbeds", "name")]
IMAGE_LOADERS = [("LoadImage", "image", {}), ("LoadImageMask", "image", {"channel": "alpha"})]
BAD_MODEL_FILES = ["random.safetensors", "truncated.safetensors", "huge-header.safetensors", "empty.safetensors",
                   "not-json-header.safetensors", "payload.ckpt", "random.ckpt", "vae-only.safetensors"]
BAD_IMAGES = ["bomb.png", "not-an-image.png", "truncated.png", "empty.png", "text.jpg"]


def cases() -> list[Case]:
    out: list[Case] = []
    add = out.append
    # -- the document itself -----------------------------------------------------------------------------
    for name, doc in [("top-list", []), ("top-string", "nodes"), ("top-null", None), ("nodes-list", {"nodes": []}),
                      ("nodes-string", {"nodes": "x"}), ("entry-list", {"nodes": {"a": []}}),
                      ("type-number", {"nodes": {"a": {"type": 3}}}), ("type-missing", {"nodes": {"a": {}}}),
                      ("inputs-list", {"nodes": {"a": {"type": "LoadCheckpoint", "inputs": [1]}}}),
                      ("format-wrong", {"format": "ipgraph/99", "nodes": {}}),
                      ]:
        add(Case(f"doc-{name}", doc, "format"))
    for levels in (150, 10_000, 100_000):  # as text only: Python objects this deep break repr() and friends
        text = '{"nodes": {"a": {"type": "LoadCheckpoint", "inputs": {"name": ' + "[" * levels + '"x"' + \
            "]" * levels + "}}}}"
        add(Case(f"doc-deep-{levels}", None, "format", words=("nested",), extra={"text": text}))
    add(Case("doc-not-json", None, "format", extra={"text": '{"nodes": {'}))
    add(Case("doc-not-utf8", None, "format", extra={"text": b'{"nodes": {"\xff\xfe": 1}}'.decode("latin-1")}))
    add(Case("doc-empty-graph", {"format": "ipgraph/1", "nodes": {}}, "problem", words=("output",)))
    # -- graph structure ----------------------------------------------------------------------------------
    add(Case("unknown-type", {"nodes": {"a": {"type": "NoSuchNode", "inputs": {}}}}, "problem", "a",
             words=("nosuchnode",)))
    add(Case("unknown-type-unicode", {"nodes": {"ä": {"type": "Lädt☃", "inputs": {}}}}, "problem", "ä"))
    add(Case("unknown-input", txt2img(**{"ks.stepz": 3}), "problem", "ks", "stepz", extra={"api": False}))
    add(Case("missing-input", txt2img(**{"ks.model": None}), "problem", "ks", "model"))
    add(Case("missing-node", txt2img(**{"ks.model": link("nope", "model")}), "problem", "ks", "model",
             words=("nope",)))
    add(Case("unknown-output", txt2img(**{"ks.model": link("ckpt", "modle")}), "problem", "ks", "model",
             words=("modle",), extra={"api": False}))
    add(Case("wrong-socket", txt2img(**{"ks.model": link("ckpt", "vae")}), "problem", "ks", "model"))
    add(Case("wrong-socket-latent", txt2img(**{"dec.samples": link("pos", "conditioning")}), "problem", "dec",
             "samples"))
    cyc = txt2img(**{"pos.clip": link("ks", "latent")})
    add(Case("cycle-or-type", cyc, "problem", "pos"))
    loop = {"nodes": {"a": {"type": "InvertMask", "inputs": {"mask": link("b", "mask")}},
                      "b": {"type": "InvertMask", "inputs": {"mask": link("a", "mask")}},
                      "c": {"type": "MaskToImage", "inputs": {"mask": link("b", "mask")}},
                      "s": {"type": "SaveImage", "inputs": {"images": link("c", "image"), "filename_prefix": "x"}}}}
    add(Case("cycle", loop, "problem", words=("cycle",)))
    add(Case("link-as-garbage", txt2img(**{"ks.model": {"node": ["x"], "output": {}}}), "problem", "ks",
             extra={"api": False}))
    # -- widget values -------------------------------------------------------------------------------------
    for name, key, value in [("steps-negative", "ks.steps", -1), ("steps-huge", "ks.steps", 10**9),
                             ("steps-string", "ks.steps", "twenty"), ("steps-float", "ks.steps", 2.5),
                             ("steps-list", "ks.steps", [2]), ("steps-bool", "ks.steps", True),
                             ("cfg-nan-string", "ks.cfg", "NaN"), ("cfg-huge", "ks.cfg", 1e308),
                             ("cfg-object", "ks.cfg", {"a": 1}), ("seed-negative", "ks.seed", -5),
                             ("seed-huge", "ks.seed", 2**80), ("denoise-above", "ks.denoise", 1.5),
                             ("sampler-unknown", "ks.sampler_name", "banana"),
                             ("sampler-number", "ks.sampler_name", 3),
                             ("scheduler-unknown", "ks.scheduler", "sideways"),
                             ("width-not-multiple", "lat.width", 65), ("width-zero", "lat.width", 0),
                             ("width-huge", "lat.width", 10**6), ("height-string", "lat.height", "64px"),
                             ("batch-zero", "lat.batch_size", 0), ("batch-huge", "lat.batch_size", 10**4),
                             ("text-number", "pos.text", 5), ("text-list", "pos.text", ["a"]),
                             ("prefix-empty", "save.filename_prefix", ""),
                             ("prefix-long", "save.filename_prefix", "x" * 5000)]:
            node, _, inp = key.partition(".")
            add(Case(f"value-{name}", txt2img(**{key: value}), "problem", node, inp))
    # output size and work budget, before anything runs or before the first step
    add(Case("output-too-large", txt2img(**{"lat.width": 16384, "lat.height": 16384}), "problem", "lat", "width",
             words=("--max-output-pixels",)))
    add(Case("work-too-large", txt2img(**{"lat.width": 4096, "lat.height": 4096, "lat.batch_size": 64,
                                          "ks.steps": 1000}), "run", "ks", words=("--max-work",)))
    # -- paths ------------------------------------------------------------------------------------------------
    for i, evil in enumerate(TRAVERSALS):
        for type_name, inp in LOADERS:
            add(Case(f"traversal-{type_name}-{i}", single(type_name, **{inp: evil}), "problem", "n", inp))
        for type_name, inp, rest in IMAGE_LOADERS:
            save = "image" if type_name == "LoadImage" else None
            doc = single(type_name, save, **{inp: evil}, **rest)
            add(Case(f"traversal-{type_name}-{i}", doc, "problem", "n", inp))
    for i, evil in enumerate(["../escape", "/tmp/ipgraph-hostile-escape", "a/../../escape", "..", "/"]):
        add(Case(f"prefix-escape-{i}", txt2img(**{"save.filename_prefix": evil}), "problem", "save",
                 "filename_prefix", words=("output folder",)))
    # -- bad files ----------------------------------------------------------------------------------------------
    for bad in BAD_MODEL_FILES:
        if bad == "payload.ckpt":  # only loading tells a pickle's content: refused weights-only at run time
            add(Case(f"checkpoint-{bad}", txt2img(**{"ckpt.name": bad}), "run", "ckpt",
                     words=("more than plain tensors",)))
            continue
        add(Case(f"checkpoint-{bad}", txt2img(**{"ckpt.name": bad}), "problem", "ckpt", "name"))
    for bad in ("random.safetensors", "truncated.safetensors", "random.ckpt", "empty.safetensors"):
        add(Case(f"ipadapter-{bad}", single("IPAdapterModelLoader", name=bad), "problem", "n", "name"))
        add(Case(f"clipvision-{bad}", single("CLIPVisionLoader", name=bad), "problem", "n", "name"))
        add(Case(f"controlnet-{bad}", single("ControlNetLoader", name=bad), "problem", "n", "name"))
        add(Case(f"vae-{bad}", single("LoadVAE", name=bad), "problem", "n", "name"))
    for bad in ("payload.ipadpt", "random.ipadpt", "random.safetensors"):
        add(Case(f"embeds-{bad}", single("LoadImageEmbeds", name=bad), "problem", "n", "name"))
    for bad in BAD_IMAGES:
        add(Case(f"image-{bad}", image_graph(bad), "problem", "n", "image"))
        add(Case(f"imagemask-{bad}", single("LoadImageMask", image=bad, channel="alpha"), "problem", "n", "image"))
    add(Case("image-too-large", image_graph("large.png"), "problem", "n", "image", words=("--max-pixels",)))
    # -- values that must work: long and unicode prompts validate ---------------------------------------------------
    add(Case("prompt-100k", txt2img(**{"pos.text": "bear " * 20000}), "valid"))
    add(Case("prompt-unicode", txt2img(**{"pos.text": "ours polaire 🐻‍❄️ 北极熊 \u202e\u0000 ﷽"}), "valid"))
    # -- pairing and values that only fail when running ---------------------------------------------------------------
    add(Case("ipadapter-wrong-encoder", _ipadapter_graph("tiny-clip-vision-wide.safetensors"), "run", "ipa",
             sample=True, words=("encoder",)))
    add(Case("mask-other-size-is-resized", _mask_graph(), "valid"))
    add(Case("embeds-other-encoder", _embeds_graph(), "run", sample=True))
    return out


def _ipadapter_graph(encoder: str) -> dict:
    doc = txt2img(**{"ks.model": link("ipa", "model")})
    doc["nodes"].update({
        "cv": {"type": "CLIPVisionLoader", "inputs": {"name": encoder}},
        "ipl": {"type": "IPAdapterModelLoader", "inputs": {"name": "tiny-ip-adapter_sd15.safetensors"}},
        "ref": {"type": "LoadImage", "inputs": {"image": "ipa_bear_ref.png"}},
        "ipa": {"type": "IPAdapterApply", "inputs": {"model": link("ckpt", "model"), "ipadapter": link("ipl", "ipadapter"),
                                                      "image": link("ref", "image"), "clip_vision": link("cv", "clip_vision"),
                                                      "weight": 0.5}},
    })
    return doc


def _mask_graph() -> dict:
    doc = _ipadapter_graph("tiny-clip-vision.safetensors")
    doc["nodes"]["msk"] = {"type": "SolidMask", "inputs": {"value": 1.0, "width": 0 + 8, "height": 4096}}
    doc["nodes"]["ipa"]["inputs"]["attn_mask"] = link("msk", "mask")
    return doc


def _embeds_graph() -> dict:
    doc = txt2img(**{"ks.model": link("ipa", "model")})
    doc["nodes"].update({
        "ipl": {"type": "IPAdapterModelLoader", "inputs": {"name": "tiny-ip-adapter_sd15.safetensors"}},
        "emb": {"type": "LoadImageEmbeds", "inputs": {"name": "wide-embeds.ipadpt"}},
        "ipa": {"type": "IPAdapterApply", "inputs": {"model": link("ckpt", "model"), "ipadapter": link("ipl", "ipadapter"),
                                                      "embeds": link("emb", "embeds"), "weight": 0.5}},
    })
    return doc


# -- the bad files -------------------------------------------------------------------------------------------------

def _png(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (the decoder must never be reached)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ipgraph-hostile-pickle-ran",))


def write_bad_files(models_dir, input_dir) -> None:
    import torch
    from safetensors.torch import save_file

    good = (models_dir / "checkpoints" / CKPT).read_bytes()
    vae = models_dir / "vae"
    junk = {
        "random.safetensors": os.urandom(2048),
        "truncated.safetensors": good[: len(good) // 3],
        "huge-header.safetensors": struct.pack("<Q", 2**62) + b"{}",
        "empty.safetensors": b"",
        "not-json-header.safetensors": struct.pack("<Q", 16) + b"this is not json",
        "payload.ckpt": pickle.dumps({"state_dict": {"x": _Payload()}}),
        "random.ckpt": os.urandom(4096),
    }
    for kind in ("checkpoints", "vae", "clip_vision", "ipadapter", "controlnet", "embeds"):
        (models_dir / kind).mkdir(parents=True, exist_ok=True)
        for name, data in junk.items():
            (models_dir / kind / name).write_bytes(data)
    (models_dir / "checkpoints" / "vae-only.safetensors").write_bytes((vae / "tiny-sd15-vae.safetensors").read_bytes())
    (models_dir / "embeds" / "payload.ipadpt").write_bytes(pickle.dumps([_Payload()]))
    (models_dir / "embeds" / "random.ipadpt").write_bytes(os.urandom(512))
    save_file({"cond": torch.randn(1, 48), "uncond": torch.zeros(1, 48)}, str(models_dir / "embeds" / "plain.safetensors"))
    from ipgraph.nodes.ipadapter.embeds import ImageEmbeds, save_embeds

    save_embeds(ImageEmbeds(torch.randn(1, 48), torch.zeros(1, 48), "image_embeds", "tiny-clip-vision-wide", ""),
                models_dir / "embeds" / "wide-embeds.ipadpt")
    input_dir.mkdir(parents=True, exist_ok=True)
    (input_dir / "bomb.png").write_bytes(_bomb_png())
    (input_dir / "not-an-image.png").write_bytes(b"GIF89a? no, plain text pretending")
    (input_dir / "truncated.png").write_bytes(_png((64, 64))[:60])
    (input_dir / "empty.png").write_bytes(b"")
    (input_dir / "text.jpg").write_text("hello")
    Image.new("RGB", (4100, 4100)).save(input_dir / "large.png")
