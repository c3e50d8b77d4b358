"""FaceID nodes: InsightFace on the tiny ONNX pack (real insightface code, detector stand-in), the ComfyUI nodes,
the two ways of applying a FaceID LoRA, A-B-A, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ipgraph.engine import Graph
from ipgraph.engine.executor import NodeFailed, ValidationFailed

pytest.importorskip("insightface")
pytestmark = pytest.mark.slow
FACEID15 = "tiny-ip-adapter-faceid_sd15.bin"


def first(result, node):
    return next(iter(dict(result.outputs[node]).values()))


def txt2img(g, ck, model, seed=2):
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text="a portrait")
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text="")
    lat = g.add("EmptyLatentImage", id="lat", width=64, height=64)
    g.add("KSampler", id="ks", model=model, positive=pos.out("conditioning"), negative=neg.out("conditioning"),
          latent_image=lat.out("latent"), seed=seed, steps=3, cfg=5.0)
    return g


def test_insightface_embeds_are_insightfaces_own(engine, models_dir):
    from insightface.model_zoo import get_model
    from insightface.utils import face_align

    g = Graph()
    face = g.add("IPAdapterInsightFaceLoader", id="if", provider="CPU", model_name="buffalo_l")
    img = g.add("LoadImage", id="img", image="bear.png")
    g.add("FaceEmbedsFromImage", id="emb", insightface=face.INSIGHTFACE, image=img.out("image"))
    r = engine.run(g, outputs=["emb", "img"])
    got = first(r, "emb")
    assert got.embeds.shape == (1, 512) and abs(got.embeds.norm().item() - 1) < 1e-5
    assert got.crops.shape == (1, 224, 224, 3)
    # the same steps with insightface directly
    pack = models_dir / "insightface" / "models" / "buffalo_l"
    det, rec = get_model(str(pack / "det_10g.onnx")), get_model(str(pack / "w600k_r50.onnx"))
    det.prepare(0, input_size=(640, 640), det_thresh=0.5)
    bgr = np.ascontiguousarray((first(r, "img")[0, ..., :3] * 255).round().byte().numpy()[..., ::-1])
    _, kps = det.detect(bgr, input_size=(640, 640))
    e = rec.get_feat(face_align.norm_crop(bgr, landmark=kps[0], image_size=112))[0]
    assert np.allclose(got.embeds[0].numpy(), e / np.linalg.norm(e), atol=1e-6)


def test_aligned_crops_skip_detection(engine):
    g = Graph()
    face = g.add("IPAdapterInsightFaceLoader", id="if")
    img = g.add("LoadImage", id="img", image="bear.png")
    crop = g.add("ImageScale", id="sc", image=img.out("image"), width=112, height=112) \
        if "ImageScale" in engine.registry else img
    g.add("FaceEmbedsFromImage", id="emb", insightface=face.INSIGHTFACE, image=crop.out("image"), aligned=True)
    got = first(engine.run(g, outputs=["emb"]), "emb")
    assert got.embeds.shape == (1, 512)


def test_missing_insightface_model_says_where_to_put_buffalo_l(tmp_path):
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime

    rt = Runtime.create(models_dir=tmp_path / "empty", output_dir=tmp_path / "o", input_dir=tmp_path / "i",
                        device="cpu", dtype="float32")
    g = Graph()
    g.add("IPAdapterInsightFaceLoader", id="if")
    with pytest.raises(NodeFailed) as info:
        Engine(REGISTRY, rt).run(g, outputs=["if"])
    text = str(info.value)
    assert "buffalo_l" in text and str(tmp_path / "empty" / "insightface" / "models" / "buffalo_l") in text
    assert "downloads nothing" in text


def _comfy_faceid(g, ck, preset="FACEID", lora=0.6):
    ul = g.add("IPAdapterUnifiedLoaderFaceID", id="ul", model=ck.model, preset=preset, lora_strength=lora)
    img = g.add("LoadImage", id="img", image="bear.png")
    return g.add("IPAdapterFaceID", id="fid", model=ul.MODEL, ipadapter=ul.ipadapter, image=img.out("image"),
                 weight=0.9, weight_faceidv2=1.0)


def test_comfy_faceid_nodes_equal_the_native_ones_with_the_embedded_lora(engine):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    comfy = first(engine.run(txt2img(g, ck, _comfy_faceid(g, ck).MODEL), outputs=["ks", "fid"]), "ks").samples

    g = Graph()  # the separate *_lora.safetensors (unified loader) vs the LoRA inside the .bin (FaceIDApply)
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    face = g.add("IPAdapterInsightFaceLoader", id="if")
    img = g.add("LoadImage", id="img", image="bear.png")
    emb = g.add("FaceEmbedsFromImage", id="emb", insightface=face.INSIGHTFACE, image=img.out("image"))
    ipa = g.add("LoadFaceIDAdapter", id="ipa", name=FACEID15)
    app = g.add("FaceIDApply", id="app", model=ck.model, ipadapter=ipa.ipadapter, face_embeds=emb.face_embeds,
                weight=0.9, lora_strength=0.6)
    native = first(engine.run(txt2img(g, ck, app.model), outputs=["ks"]), "ks").samples
    assert (comfy - native).abs().max().item() <= 1e-5


def test_a_b_a_with_a_faceid_graph(engine):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    base = txt2img(g, ck, ck.model)
    a1 = first(engine.run(base, outputs=["ks"]), "ks").samples
    g2 = Graph()
    ck2 = g2.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    b = first(engine.run(txt2img(g2, ck2, _comfy_faceid(g2, ck2, "FACEID PLUS V2").MODEL), outputs=["ks"]),
              "ks").samples
    engine.cache.clear()
    a2 = first(engine.run(base, outputs=["ks"]), "ks").samples
    assert torch.equal(a1, a2) and (a1 - b).abs().max() > 1e-3


def _fails(engine, g, outputs=("app",)):
    with pytest.raises((NodeFailed, ValidationFailed)) as info:
        engine.run(g, outputs=list(outputs))
    assert "Traceback" not in str(info.value)
    return str(info.value)


def test_clip_image_embeds_given_to_a_faceid_adapter_is_a_sentence(engine, models_dir):
    (models_dir / "embeds").mkdir(exist_ok=True)
    torch.save(torch.randn(1, 32), models_dir / "embeds" / "test-clip-embeds.pt")
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    ipa = g.add("LoadFaceIDAdapter", id="ipa", name=FACEID15)
    emb = g.add("LoadFaceEmbeds", id="emb", name="test-clip-embeds.pt")
    g.add("FaceIDApply", id="app", model=ck.model, ipadapter=ipa.ipadapter, face_embeds=emb.face_embeds)
    text = _fails(engine, g)
    assert "face_embeds" in text and "CLIP image embeddings do not work with FaceID" in text and "512" in text


def test_wrong_adapters_are_sentences(engine, models_dir):
    (models_dir / "embeds").mkdir(exist_ok=True)
    np.save(models_dir / "embeds" / "test-face2.npy", np.ones(512, np.float32) / 512 ** 0.5)
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    ipa = g.add("IPAdapterModelLoader", id="ipa", name="tiny-ip-adapter_sd15.safetensors")
    emb = g.add("LoadFaceEmbeds", id="emb", name="test-face2.npy")
    g.add("FaceIDApply", id="app", model=ck.model, ipadapter=ipa.ipadapter, face_embeds=emb.face_embeds)
    assert "not a FaceID one" in _fails(engine, g)
    g = Graph()  # an SDXL FaceID adapter on SD1.5
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    ipa = g.add("LoadFaceIDAdapter", id="ipa", name="tiny-ip-adapter-faceid_sdxl.bin")
    emb = g.add("LoadFaceEmbeds", id="emb", name="test-face2.npy")
    g.add("FaceIDApply", id="app", model=ck.model, ipadapter=ipa.ipadapter, face_embeds=emb.face_embeds)
    assert "is for SDXL" in _fails(engine, g)
    g = Graph()  # plus without the CLIP vision encoder it needs
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    ipa = g.add("LoadFaceIDAdapter", id="ipa", name="tiny-ip-adapter-faceid-plusv2_sd15.bin")
    emb = g.add("LoadFaceEmbeds", id="emb", name="test-face2.npy")
    g.add("FaceIDApply", id="app", model=ck.model, ipadapter=ipa.ipadapter, face_embeds=emb.face_embeds)
    assert "clip_vision" in _fails(engine, g)
