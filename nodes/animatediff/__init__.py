"""AnimateDiff: motion modules (motion.py), their installation during sampling (patch.py), context windows
(context.py) and the nodes (nodes.py), including ComfyUI-AnimateDiff-Evolved's class names."""

from . import patch  # noqa: F401  (registers the MotionPatch installer)
