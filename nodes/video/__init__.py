"""Video outputs: animated WebP/PNG/GIF and MP4/WebM (PyAV)."""
