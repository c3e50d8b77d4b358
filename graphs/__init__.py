"""The bundled example workflows (``*.json``) and the images and embeddings they use (``assets/``).

Shipped as package data so that an installed ipgraph finds them without the source tree.
"""

from pathlib import Path

GRAPHS_DIR = Path(__file__).resolve().parent
ASSETS_DIR = GRAPHS_DIR / "assets"
