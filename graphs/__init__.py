"""The bundled example workflows (``*.json``) and the images and embeddings they use (``assets/``).

Shipped as package data so that an installed ipgraph finds them without the source tree: ``ipgraph graphs``
lists them, ``ipgraph run NAME`` runs one by name, LoadImage finds the assets by file name.
"""

from pathlib import Path

GRAPHS_DIR = Path(__file__).resolve().parent
ASSETS_DIR = GRAPHS_DIR / "assets"


def bundled() -> dict[str, Path]:
    """Bundled graph name (file stem) -> path."""
    return {path.stem: path for path in sorted(GRAPHS_DIR.glob("*.json"))}
