"""InsightFace models from ``models/insightface/models/<name>/`` and face embeddings from images.

Why not ``insightface.app.FaceAnalysis``: it downloads a missing pack from the internet; ipgraph never
downloads. The pack's ONNX files are opened with insightface's own ``model_zoo.get_model`` (SCRFD detector,
ArcFace recogniser), and what FaceAnalysis + ComfyUI_IPAdapter_plus do with them is done here:

* detection at 640×640, retried at 576, 512, ... 320 until a face is found (the pack's loop); the first face
  is used;
* the ArcFace embedding of the face aligned to 112×112 (``normed_embedding`` = embedding / its L2 norm);
* the face crop for FaceID-plus: ``face_align.norm_crop`` at 224 px (SD1.5) or 256 px (SDXL), RGB.

Images go to insightface as BGR uint8, as ComfyUI_IPAdapter_plus passes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROVIDERS = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider", "ROCM": "ROCMExecutionProvider",
             "DirectML": "DmlExecutionProvider", "OpenVINO": "OpenVINOExecutionProvider",
             "CoreML": "CoreMLExecutionProvider"}
DET_SIZES = tuple(range(640, 256, -64))


class InsightFaceError(ValueError):
    """A missing package or model, or no face; the message is a plain sentence."""


@dataclass(frozen=True, eq=False)
class InsightFace:
    """A loaded pack: the detector (None when the pack has none) and the recogniser."""

    name: str
    detector: Any
    recognizer: Any
    provider: str

    def cache_nbytes(self) -> int:
        return 0


@dataclass(frozen=True, eq=False)
class FaceEmbeds:
    """Face-ID embeddings ``[N, 512]`` (one per face) and, when they came from images, the aligned crops."""

    embeds: torch.Tensor
    crops: torch.Tensor | None = None  # IMAGE [N, H, W, 3] 0..1, for FaceID-plus's CLIP vision input
    source: str = ""

    def cache_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.embeds, self.crops) if t is not None)


def _import():
    try:
        from insightface.model_zoo import get_model
        from insightface.utils import face_align
    except ImportError:
        raise InsightFaceError("FaceID from images needs the insightface package with onnxruntime: "
                               "pip install 'ipgraph[faceid]'") from None
    return get_model, face_align


def load_insightface(models_dir: Path, name: str = "buffalo_l", provider: str = "CPU") -> InsightFace:
    """Open ``models/insightface/models/<name>/*.onnx`` (never downloads)."""
    get_model, _ = _import()
    folder = Path(models_dir) / "insightface" / "models" / name
    files = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    if not files:
        raise InsightFaceError(
            f"no InsightFace model {name!r}: put the {name} pack's .onnx files (from insightface's {name}.zip) into "
            f"{folder} (ipgraph downloads nothing).")
    providers = [PROVIDERS.get(provider, "CPUExecutionProvider")]
    detector = recognizer = None
    for f in files:
        model = get_model(str(f), providers=providers)
        task = getattr(model, "taskname", None)
        if task == "detection" and detector is None:
            detector = model
        elif task == "recognition" and recognizer is None:
            recognizer = model
    if recognizer is None:
        raise InsightFaceError(f"the InsightFace pack in {folder} has no recognition model (e.g. w600k_r50.onnx).")
    if detector is not None:
        detector.prepare(0, input_size=(640, 640), det_thresh=0.5)
    return InsightFace(name, detector, recognizer, provider)


def _bgr(image: torch.Tensor) -> np.ndarray:
    arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return np.ascontiguousarray(arr[..., [2, 1, 0]])


def _rgb_tensor(bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(bgr[..., [2, 1, 0]])).float() / 255.0


def _embed(face: InsightFace, aligned_bgr: np.ndarray) -> torch.Tensor:
    import cv2

    if aligned_bgr.shape[:2] != (112, 112):
        aligned_bgr = cv2.resize(aligned_bgr, (112, 112), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(face.recognizer.get_feat(aligned_bgr)[0].astype(np.float32))


def face_embeds(face: InsightFace, images: torch.Tensor, crop_size: int = 224, aligned: bool = False,
                normed: bool = True, input_name: str = "image") -> FaceEmbeds:
    """One embedding (and aligned crop) per image of the IMAGE batch ``[B,H,W,C]``.

    ``aligned``: the images already are aligned face crops (ArcFace layout); detection is skipped.
    """
    _, face_align = _import()
    embeds, crops = [], []
    for i, img in enumerate(images):
        bgr = _bgr(img[..., :3])
        if aligned:
            crop = bgr
            emb = _embed(face, bgr)
        else:
            if face.detector is None:
                raise InsightFaceError(f"input {input_name}: the InsightFace pack {face.name!r} has no detection "
                                       "model; add det_10g.onnx, or give aligned face crops.")
            kps = None
            for size in DET_SIZES:
                _, found = face.detector.detect(bgr, input_size=(size, size))
                if found is not None and len(found):
                    kps = found[0]
                    break
            if kps is None:
                raise InsightFaceError(f"input {input_name}: InsightFace found no face in image {i}.")
            emb = _embed(face, face_align.norm_crop(bgr, landmark=kps, image_size=112))
            crop = face_align.norm_crop(bgr, landmark=kps, image_size=crop_size)
        embeds.append(emb / emb.norm() if normed else emb)
        crops.append(_rgb_tensor(crop))
    same = len({tuple(c.shape) for c in crops}) == 1
    return FaceEmbeds(torch.stack(embeds), torch.stack(crops) if same else None, f"InsightFace {face.name}")
