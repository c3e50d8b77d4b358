"""A registry described as JSON (a *catalogue*) and rebuilt from it without the code that implements the nodes.

The catalogue holds what validation and the editor need of every node type: name, version, category, display
name, description, output node or not, inputs in order (socket type, or widget type with required, default,
choices, bounds and editor options), outputs in order with their types, ComfyUI class-name aliases with their
input renames, and the input/output names and types older documents used. :func:`registry_from_catalog` turns it
back into a :class:`Registry` of node types whose input models are built with ``pydantic.create_model`` from
those specs, so :func:`engine.validate.validate` runs over them unchanged: same checks, same sentences.

What such node types cannot do: run (their function raises), fingerprint files, or run a node's own ``check``
hook (model file headers, image files, output paths). A program that knows its node families can validate a graph's structure with the
catalogue first and import the families only for a graph that passes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model

from .node import NodeInputs, NodeOutputs, NodeType, Output, Registry, Socket

CATALOG_FORMAT = "ipgraph-catalog/1"
_BOUNDS = ("ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length")
_KNOWN_KEYS = {"name", "required", "socket", "type", "default", "choices", "description", *_BOUNDS}
_CATALOG_ONLY = ("cacheable", "comfy_aliases", "renamed_inputs", "renamed_outputs", "upgraded_from")
_WIDGET_TYPES = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def catalog_of(registry: Registry) -> dict:
    """The catalogue of every node type in ``registry`` (JSON-ready, sorted by type name)."""
    return {"format": CATALOG_FORMAT, "nodes": {name: describe_for_catalog(registry[name])
                                                for name in registry.types()}}


def describe_for_catalog(nt: NodeType) -> dict:
    """``NodeType.describe()`` plus what validation and document import need beyond it."""
    for spec in nt.inputs.values():
        extra = spec.info.json_schema_extra
        clash = sorted(set(extra) & _KNOWN_KEYS - {"socket"}) if isinstance(extra, dict) else []
        if clash:
            raise ValueError(f"{nt.type_name}: input {spec.name!r} has editor options named like catalogue keys: "
                             f"{', '.join(clash)}")
    out = nt.describe()
    out.update(cacheable=nt.cacheable, comfy_aliases=nt.comfy_aliases, renamed_inputs=nt.renamed_inputs,
               renamed_outputs=nt.renamed_outputs, upgraded_from=nt.upgraded_from)
    return out


def described_nodes(catalog: dict) -> dict[str, dict]:
    """``Registry.describe()`` of the registry the catalogue was made from, without building a node type."""
    return {name: {k: v for k, v in d.items() if k not in _CATALOG_ONLY} for name, d in catalog["nodes"].items()}


def registry_from_catalog(catalog: dict) -> CatalogRegistry:
    """A registry of node types rebuilt from ``catalog``: they validate like the originals and cannot run."""
    if not isinstance(catalog, dict) or catalog.get("format") != CATALOG_FORMAT:
        raise ValueError(f"not a node catalogue (expected format {CATALOG_FORMAT!r})")
    return CatalogRegistry(catalog["nodes"])


class CatalogRegistry(Registry):
    """A :class:`Registry` over catalogue descriptions; a node type is built the first time it is asked for
    (building all of them costs more than a graph's validation)."""

    def __init__(self, described: dict[str, dict]) -> None:
        super().__init__()
        self._described = dict(described)

    def __contains__(self, type_name: str) -> bool:
        return type_name in self._described

    def __getitem__(self, type_name: str) -> NodeType:
        found = self.get(type_name)
        if found is None:
            raise KeyError(type_name)
        return found

    def get(self, type_name: str) -> NodeType | None:
        if type_name not in self._types and type_name in self._described:
            self._types[type_name] = node_type_from_description(type_name, self._described[type_name])
        return self._types.get(type_name)

    def types(self) -> list[str]:
        return sorted(self._described)

    def describe(self) -> dict[str, dict]:
        return {name: self[name].describe() for name in self.types()}

    def comfy_class(self, class_type: str) -> tuple[NodeType, dict[str, str]] | None:
        name = class_type if class_type in self._described else next(
            (n for n, d in self._described.items() if class_type in d.get("comfy_aliases", {})), None)
        if name is None:
            return None
        nt = self[name]
        return nt, nt.comfy_aliases.get(class_type, {})

    def add(self, node_type: NodeType) -> NodeType:
        raise TypeError("a catalogue registry is read-only: add node types to the registry it describes")


def node_type_from_description(type_name: str, d: dict) -> NodeType:
    fields: dict[str, Any] = {}
    for spec in d["inputs"]:
        description = spec.get("description", "")
        if "socket" in spec:
            fields[spec["name"]] = (Any, Socket(spec["socket"], optional=not spec["required"],
                                                description=description))
            continue
        if spec["type"] == "COMBO" and spec.get("choices"):
            annotation: Any = Literal[tuple(spec["choices"])]
        else:  # a JSON widget (any other annotation) is not checked here: the full validation does it
            annotation = _WIDGET_TYPES.get(spec["type"], Any)
        extra = {k: v for k, v in spec.items() if k not in _KNOWN_KEYS}
        bounds = {k: spec[k] for k in _BOUNDS if k in spec}
        default = ... if spec["required"] else spec.get("default")
        fields[spec["name"]] = (annotation, Field(default, description=description or None,
                                                  json_schema_extra=extra or None, **bounds))
    outputs = {o["name"]: (Any, Output(o["socket"], description=o.get("description", ""))) for o in d["outputs"]}
    model_name = "".join(c if c.isalnum() else "_" for c in type_name)

    def cannot_run(inputs, ctx):
        raise RuntimeError(f"{type_name} comes from the node catalogue: import the node families to run it")

    return NodeType(
        type_name=type_name, version=d["version"], category=d["category"], fn=cannot_run,
        inputs_model=create_model(f"{model_name}Inputs", __base__=NodeInputs, **fields),
        outputs_model=create_model(f"{model_name}Outputs", __base__=NodeOutputs, **outputs),
        output_node=d["output_node"], cacheable=d.get("cacheable", True),
        display_name="" if d["display_name"] == type_name else d["display_name"],
        description=d.get("description", ""), comfy_aliases=d.get("comfy_aliases", {}),
        renamed_inputs=d.get("renamed_inputs", {}), renamed_outputs=d.get("renamed_outputs", {}),
        upgraded_from=d.get("upgraded_from", {}),
    )
