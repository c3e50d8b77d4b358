"""Node declaration: a node is a typed function registered under a stable type name.

    class AddIn(NodeInputs):
        a: float = Field(0.0, ge=-10, le=10, description="first term")
        x: Any = Socket("NUMBER")

    class AddOut(NodeOutputs):
        total: Any = Output("NUMBER")

    @node("Add", version=1, category="math")
    def add(inp: AddIn, ctx: NodeContext) -> AddOut:
        return AddOut(total=inp.a + inp.x)

Widgets are ordinary pydantic fields (bounds, defaults, ``Literal`` choices, a description); links are fields
marked with :func:`Socket` and a socket type name. Outputs are named fields marked with :func:`Output`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.fields import FieldInfo

# Widget python types and the socket type a link into them must carry (ComfyUI's primitive types).
PRIMITIVE_SOCKETS = {int: "INT", float: "FLOAT", str: "STRING", bool: "BOOLEAN"}
ANY = "*"


class NodeInputs(BaseModel):
    """Base class of a node's inputs. Values are frozen: a node never changes what it receives."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", frozen=True)


class NodeOutputs(BaseModel):
    """Base class of a node's named outputs."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", frozen=True)


def Socket(type_name: str, *, optional: bool = False, description: str = "") -> Any:  # noqa: N802
    """Mark an input as a link of socket type ``type_name`` (drawn as a port, never as a widget)."""
    extra = {"socket": type_name}
    if optional:
        return Field(None, description=description, json_schema_extra=extra)
    return Field(..., description=description, json_schema_extra=extra)


def Output(type_name: str, *, description: str = "") -> Any:  # noqa: N802
    """Mark an output field with its socket type."""
    return Field(None, description=description, json_schema_extra={"socket": type_name})


def _socket_of(info: FieldInfo) -> str | None:
    extra = info.json_schema_extra
    return extra.get("socket") if isinstance(extra, dict) else None


@dataclass(frozen=True)
class InputSpec:
    """One input of a node type, as the validator and the UI see it."""

    name: str
    socket: str | None  # link type for sockets; None for widgets
    widget_type: str | None  # INT/FLOAT/STRING/BOOLEAN/COMBO for widgets
    required: bool
    default: Any
    info: FieldInfo
    adapter: TypeAdapter | None = None  # validates a literal value for a widget
    choices: tuple | None = None

    @property
    def accepts_link_type(self) -> str:
        return self.socket or self.widget_type or ANY

    def describe(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "required": self.required}
        if self.socket:
            out["socket"] = self.socket
        else:
            out["type"] = self.widget_type
            if not self.required:
                out["default"] = self.default
            for meta in self.info.metadata:
                for attr in ("ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length"):
                    value = getattr(meta, attr, None)
                    if value is not None:
                        out[attr] = value
            if self.choices is not None:
                out["choices"] = list(self.choices)
            extra = self.info.json_schema_extra
            if isinstance(extra, dict):
                out.update({k: v for k, v in extra.items() if k != "socket"})
        if self.info.description:
            out["description"] = self.info.description
        return out


@dataclass(frozen=True)
class OutputSpec:
    name: str
    socket: str
    description: str = ""


def _widget_type(annotation: Any) -> tuple[str, tuple | None]:
    """Map a widget annotation to ComfyUI's widget kinds (INT, FLOAT, STRING, BOOLEAN, COMBO)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "COMBO", tuple(get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _widget_type(args[0])
    if annotation in PRIMITIVE_SOCKETS:
        return PRIMITIVE_SOCKETS[annotation], None
    return "JSON", None


@dataclass(frozen=True)
class BatchPolicy:
    """How runs of several graphs that differ only in some literal inputs of this node share one call.

    ``varying``: the literal inputs that may differ between the graphs of one batch (a seed). ``run(inputs,
    contexts)`` gets one inputs model and one context per distinct call (in the graphs' order) and returns one
    outputs model per call, each equal to what the node alone would return for it, or None when these calls
    cannot share one (the engine then runs them one by one). Each context reports to its own run(s).
    """

    varying: tuple[str, ...]
    run: Callable[[list, list], list | None]


@dataclass
class NodeType:
    """A registered node type: the function, its input/output models and its policies."""

    type_name: str
    version: int
    category: str
    fn: Callable[..., Any]
    inputs_model: type[NodeInputs]
    outputs_model: type[NodeOutputs]
    output_node: bool = False
    cacheable: bool = True
    fingerprint: Callable[[dict, Any], str] | None = None
    check: Callable[[dict, Any], Iterable[tuple[str, str]]] | None = None
    display_name: str = ""
    description: str = ""
    comfy_aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    renamed_inputs: dict[str, str] = field(default_factory=dict)  # an older document's name -> today's
    renamed_outputs: dict[str, str] = field(default_factory=dict)
    upgraded_from: dict[str, str] = field(default_factory=dict)  # an input only an older node had -> today's type
    inputs: dict[str, InputSpec] = field(default_factory=dict)
    outputs: dict[str, OutputSpec] = field(default_factory=dict)
    batch: BatchPolicy | None = None  # set with Registry.set_batch

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(self.inputs_model, include_extras=True)
        for name, info in self.inputs_model.model_fields.items():
            socket = _socket_of(info)
            required = info.is_required()
            if socket:
                self.inputs[name] = InputSpec(name, socket, None, required, None, info)
            else:
                wtype, choices = _widget_type(hints[name])
                adapter = TypeAdapter(typing.Annotated[hints[name], info])
                default = None if required else info.get_default(call_default_factory=True)
                self.inputs[name] = InputSpec(name, None, wtype, required, default, info, adapter, choices)
        for name, info in self.outputs_model.model_fields.items():
            socket = _socket_of(info)
            if socket is None:
                raise TypeError(f"{self.type_name}: output {name!r} must be declared with Output(TYPE)")
            self.outputs[name] = OutputSpec(name, socket, info.description or "")

    def upgraded_type(self, inputs: dict) -> str | None:
        """The type an older document's node of this type is today (it gives an input only that node had)."""
        return next((today for name, today in self.upgraded_from.items() if name in inputs), None)

    def describe(self) -> dict:
        """JSON description for the web page and ComfyUI-style /object_info."""
        return {
            "type": self.type_name,
            "version": self.version,
            "category": self.category,
            "display_name": self.display_name or self.type_name,
            "description": self.description,
            "output_node": self.output_node,
            "inputs": [spec.describe() for spec in self.inputs.values()],
            "outputs": [{"name": o.name, "socket": o.socket, "description": o.description}
                        for o in self.outputs.values()],
        }


class Registry:
    """Maps type names to node types. ``nodes/`` registers into the default :data:`REGISTRY`."""

    def __init__(self) -> None:
        self._types: dict[str, NodeType] = {}

    def __contains__(self, type_name: str) -> bool:
        return type_name in self._types

    def __getitem__(self, type_name: str) -> NodeType:
        return self._types[type_name]

    def get(self, type_name: str) -> NodeType | None:
        return self._types.get(type_name)

    def types(self) -> list[str]:
        return sorted(self._types)

    def describe(self) -> dict[str, dict]:
        return {name: self._types[name].describe() for name in self.types()}

    def add(self, node_type: NodeType) -> NodeType:
        if node_type.type_name in self._types:
            raise ValueError(f"node type {node_type.type_name!r} is registered twice")
        self._types[node_type.type_name] = node_type
        return node_type

    def set_batch(self, type_name: str, varying: Iterable[str], run: Callable[[list, list], list | None]) -> None:
        """Let runs of graphs that differ only in ``varying`` literal inputs of ``type_name`` share its calls
        (:class:`BatchPolicy`; ``run_batch``)."""
        nt = self._types[type_name]
        varying = tuple(varying)
        unknown = [v for v in varying if v not in nt.inputs or nt.inputs[v].socket]
        if unknown:
            raise ValueError(f"{type_name}: {', '.join(unknown)} are not literal inputs of the node")
        nt.batch = BatchPolicy(varying, run)

    def comfy_class(self, class_type: str) -> tuple[NodeType, dict[str, str]] | None:
        """Resolve a ComfyUI class name: an ipgraph type name or a declared alias (with input renames)."""
        if class_type in self._types:  # same name in both; its alias entry (if any) still renames inputs
            nt = self._types[class_type]
            return nt, nt.comfy_aliases.get(class_type, {})
        for nt in self._types.values():
            if class_type in nt.comfy_aliases:
                return nt, nt.comfy_aliases[class_type]
        return None

    def node(
        self,
        type_name: str,
        *,
        version: int = 1,
        category: str = "misc",
        output_node: bool = False,
        cacheable: bool = True,
        fingerprint: Callable[[dict, Any], str] | None = None,
        check: Callable[[dict, Any], Iterable[tuple[str, str]]] | None = None,
        display_name: str = "",
        comfy_aliases: dict[str, dict[str, str]] | None = None,
        renamed_inputs: dict[str, str] | None = None,
        renamed_outputs: dict[str, str] | None = None,
        upgraded_from: dict[str, str] | None = None,
    ) -> Callable[[Callable], Callable]:
        """Register ``fn(inputs, ctx) -> outputs``; input/output models come from its annotations.

        ``fingerprint(literals, resources)`` adds to the cache key what the literals do not say (a file's
        size and mtime). ``check(literals, resources)`` yields ``(input_name, sentence)`` problems found
        before anything runs (a model file that does not exist). ``renamed_inputs`` / ``renamed_outputs`` map
        names an older version of the node used to today's names, so saved documents keep loading;
        ``upgraded_from`` maps an input that only an older node of this name had to the type that node is today
        (when this type name was given to another node): ``{"positive": "ControlNetApplyAdvanced"}``.
        """

        def register(fn: Callable) -> Callable:
            hints = typing.get_type_hints(fn)
            params = list(inspect.signature(fn).parameters)
            if len(params) != 2:
                raise TypeError(f"{type_name}: a node function takes (inputs, ctx)")
            inputs_model, outputs_model = hints.get(params[0]), hints.get("return")
            if not (isinstance(inputs_model, type) and issubclass(inputs_model, NodeInputs)):
                raise TypeError(f"{type_name}: first parameter must be annotated with a NodeInputs subclass")
            if not (isinstance(outputs_model, type) and issubclass(outputs_model, NodeOutputs)):
                raise TypeError(f"{type_name}: return must be annotated with a NodeOutputs subclass")
            self.add(NodeType(
                type_name=type_name,
                version=version,
                category=category,
                fn=fn,
                inputs_model=inputs_model,
                outputs_model=outputs_model,
                output_node=output_node,
                cacheable=cacheable,
                fingerprint=fingerprint,
                check=check,
                display_name=display_name,
                description=inspect.cleandoc(fn.__doc__ or ""),
                comfy_aliases=dict(comfy_aliases or {}),
                renamed_inputs=dict(renamed_inputs or {}),
                renamed_outputs=dict(renamed_outputs or {}),
                upgraded_from=dict(upgraded_from or {}),
            ))
            return fn

        return register


REGISTRY = Registry()
node = REGISTRY.node
