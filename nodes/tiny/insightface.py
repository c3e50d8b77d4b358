"""A tiny InsightFace model pack (``models/insightface/models/buffalo_l/``) built with the ``onnx`` package.

* ``w600k_r50.onnx``, the recognition model: a real ONNX graph in ArcFace's interface (input ``[N,3,112,112]``,
  output ``[N,512]``): 14×14 average pooling, flatten, one random linear layer. insightface's own
  ``ArcFaceONNX`` runs it.
* ``det_10g.onnx``, a DETECTOR STAND-IN in SCRFD's interface (input ``[1,3,640,640]``; scores, box and
  landmark distances for strides 8/16/32, two anchors): it always reports one face whose five landmarks
  sit at the centre of the image, so insightface's own SCRFD decoding, ``norm_crop`` alignment and ArcFace
  run on any picture. It is no face detector: it makes the detection step testable without real weights.

Written only when the ``onnx`` package is installed (the test extra); without it no tiny pack exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import atomic_write

GENERATOR_VERSION = 1
# ArcFace's canonical 112×112 landmarks (eyes, nose, mouth corners), scaled to a 256 px face at the centre
_ARC = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                 [70.7299, 92.2041]], dtype=np.float32)


def _recognizer(seed: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((192, 512)) / np.sqrt(192)).astype(np.float32)
    nodes = [helper.make_node("AveragePool", ["input.1"], ["p"], kernel_shape=[14, 14], strides=[14, 14]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "w"], ["683"])]
    graph = helper.make_graph(nodes, "tiny_arcface",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 512])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _detector(size: int = 640):
    from onnx import TensorProto, helper, numpy_helper

    strides, anchors = (8, 16, 32), 2
    centre = size / 2
    kps = (_ARC - 56.0) * (256 / 112) + centre  # landmarks of a 256 px face centred in the input
    scores, boxes, marks, inits, nodes = [], [], [], [], []
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["m"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["m", "zero"], ["z"]))
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    for s in strides:
        n = (size // s) ** 2 * anchors
        sc, bb, kp = np.zeros((n, 1), np.float32), np.zeros((n, 4), np.float32), np.zeros((n, 10), np.float32)
        if s == 32:  # one anchor at the centre cell
            cell = (size // s // 2) * (size // s) + size // s // 2
            i = cell * anchors
            ax, ay = (size // s // 2) * s, (size // s // 2) * s
            sc[i] = 0.95
            bb[i] = np.array([ax - (centre - 128), ay - (centre - 128), centre + 128 - ax, centre + 128 - ay]) / s
            kp[i] = ((kps - np.array([ax, ay], np.float32)) / s).reshape(-1)
        for kind, arr, store in (("score", sc, scores), ("bbox", bb, boxes), ("kps", kp, marks)):
            name = f"{kind}_{s}"
            inits.append(numpy_helper.from_array(arr, name + "_c"))
            nodes.append(helper.make_node("Add", [name + "_c", "z"], [name]))
            store.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
    graph = helper.make_graph(nodes, "tiny_scrfd_standin",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
                              scores + boxes + marks, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def write_tiny_insightface(models_dir: Path) -> dict[str, Path]:
    """Write the tiny buffalo_l pack; returns {} when the ``onnx`` package is not installed."""
    try:
        import onnx
    except ImportError:
        return {}
    folder = Path(models_dir) / "insightface" / "models" / "buffalo_l"
    out = {}
    for name, make in (("w600k_r50.onnx", lambda: _recognizer(400)), ("det_10g.onnx", _detector)):
        dest = folder / name
        stamp = dest.with_name(f".{name}.v{GENERATOR_VERSION}")
        if not (dest.exists() and stamp.exists()):
            model = make()
            atomic_write(dest, lambda tmp, m=model: onnx.save(m, str(tmp)))
            stamp.touch()
        out[name] = dest
    return out
