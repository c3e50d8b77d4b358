"""ipgraph's node catalogue: every node type of ``ipgraph.nodes`` described as JSON, shipped with the package.

The CLI reads it instead of importing the node families (and with them torch, diffusers and transformers):
``ipgraph nodes`` prints it, and ``ipgraph validate`` checks a graph's structure against it first (unknown
types, inputs and outputs, missing inputs, socket types, widget values, cycles). It is generated from the live
registry; after changing a node type, write it again (a test fails until then):

    python -m ipgraph.catalog --write     # or --check: exit 1 when it is out of step with the registry
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import lru_cache
from pathlib import Path

from ipgraph.engine import Registry
from ipgraph.engine.catalog import catalog_of, registry_from_catalog

CATALOG_PATH = Path(__file__).resolve().parent / "data" / "node_catalog.json"
WRITE_COMMAND = "python -m ipgraph.catalog --write"


def render(catalog: dict) -> str:
    """The catalogue's file text (canonical, so a rewrite of an unchanged registry changes no byte)."""
    return json.dumps(catalog, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def live_catalog() -> dict:
    """The catalogue of the node families as they are now (imports them, and torch)."""
    import ipgraph.nodes  # noqa: F401  (registers the node families)
    from ipgraph.engine import REGISTRY

    return catalog_of(REGISTRY)


@lru_cache(maxsize=1)
def load_catalog() -> dict:
    try:
        return json.loads(CATALOG_PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the node catalogue {CATALOG_PATH} is missing or broken ({exc}); "
                           f"run `{WRITE_COMMAND}`") from None


@lru_cache(maxsize=1)
def catalog_registry() -> Registry:
    """Node types rebuilt from the catalogue: they validate like ipgraph's own and cannot run."""
    return registry_from_catalog(load_catalog())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ipgraph.catalog", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help=f"write {CATALOG_PATH.name} from the registry")
    group.add_argument("--check", action="store_true", help="exit 1 when the file is out of step")
    args = parser.parse_args(argv)
    text = render(live_catalog())
    current = CATALOG_PATH.read_text(encoding="utf-8") if CATALOG_PATH.exists() else None
    if args.check:
        if current != text:
            print(f"{CATALOG_PATH} is out of step with the node registry; run `{WRITE_COMMAND}`", file=sys.stderr)
            return 1
        print(f"{CATALOG_PATH}: in step ({len(json.loads(text)['nodes'])} node types)")
        return 0
    if current != text:
        CATALOG_PATH.parent.mkdir(parents=True, exist_ok=True)
        CATALOG_PATH.write_text(text, encoding="utf-8")
    print(f"{CATALOG_PATH}: {len(json.loads(text)['nodes'])} node types"
          + ("" if current != text else " (unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
