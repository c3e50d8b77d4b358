"""Video outputs: animated WebP/PNG/GIF and MP4/WebM (PyAV)."""
from . import nodes  # noqa: F401
