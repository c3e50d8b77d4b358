"""The ``ipgraph`` command: run/validate graphs, list nodes, make the tiny models, serve the web editor.

This is the one module that sees every room (engine, nodes, server); it holds no logic of its own beyond
parsing arguments and printing events.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from ipgraph.engine import (
    CancelToken,
    Engine,
    Graph,
    GraphFormatError,
    NodeFailed,
    Registry,
    RunCancelledError,
    ValidationFailed,
    events,
)
from ipgraph.engine.comfy import graph_from_document
from ipgraph.engine.graph import parse_json


def add_limit_options(parser) -> None:
    from ipgraph.limits import add_limit_options as add

    add(parser)


class CliError(Exception):
    """A user mistake reported as one readable sentence (no traceback unless --debug)."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the server parses its own options (see `ipgraph serve --help`)
        from ipgraph.server import main as serve_main

        return int(serve_main(argv[1:]) or 0)
    if argv[:1] == ["worker"]:  # a remote worker of a server (see `ipgraph worker --help`)
        from ipgraph.server.workers.remote import main as worker_main

        return int(worker_main(argv[1:]) or 0)
    parser = build_parser(training=argv[:1] in (["train"], ["convert"]))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CliError, GraphFormatError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser(training: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipgraph", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--models-dir", help="models folder (default $IPGRAPH_MODELS_DIR or ./models)")
        p.add_argument("--registry", help="use MODULE:ATTR as the node registry instead of ipgraph's nodes")
        p.add_argument("--debug", action="store_true", help="show tracebacks")

    run = sub.add_parser("run", help="run a graph (ipgraph JSON, a ComfyUI workflow in UI or API format, or a "
                                     "PNG saved by ipgraph or ComfyUI)")
    run.add_argument("graph")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="change an input before running (VALUE is JSON, or a plain string)")
    run.add_argument("--output-dir", help="where output images go (default ./output)")
    run.add_argument("--input-dir", help="where input images are looked up (default ./input)")
    run.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    run.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="model dtype")
    run.add_argument("--channels-last", action="store_true", default=None,
                     help="UNet/VAE convolutions in channels-last memory (CPU: faster; results differ ~1e-4)")
    run.add_argument("--repeat", type=int, default=1, help="run N times (later runs hit the cache)")
    add_limit_options(run)
    common(run)
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a graph and print every problem")
    val.add_argument("graph")
    val.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    val.add_argument("--input-dir", help="where input images are looked up (default ./input)")
    add_limit_options(val)
    val.add_argument("--strict", action="store_true",
                     help="treat warnings (inputs a node does not have, unreadable widget values) as errors")
    common(val)
    val.set_defaults(func=cmd_validate)

    nodes = sub.add_parser("nodes", help="list node types")
    nodes.add_argument("--json", action="store_true", help="full JSON description")
    common(nodes)
    nodes.set_defaults(func=cmd_nodes)

    models = sub.add_parser("models", help="model files (ipgraph models tiny | list)")
    models.set_defaults(func=lambda args: (models.print_help(), 2)[1])
    models_sub = models.add_subparsers(dest="models_command")
    tiny = models_sub.add_parser("tiny", help="write the tiny random-weight models (real formats)")
    tiny.add_argument("--models-dir")
    tiny.add_argument("--debug", action="store_true")
    tiny.set_defaults(func=cmd_models_tiny)
    lst = models_sub.add_parser("list", help="list the models folder")
    lst.add_argument("--models-dir")
    lst.add_argument("--debug", action="store_true")
    lst.set_defaults(func=cmd_models_list)

    graphs = sub.add_parser("graphs", help="list the bundled example graphs (or copy them with --copy DIR)")
    graphs.add_argument("--copy", metavar="DIR", help="copy the graphs and their assets into DIR")
    graphs.add_argument("--debug", action="store_true")
    graphs.set_defaults(func=cmd_graphs)

    sub.add_parser("serve", help="run the HTTP/websocket server and the web editor (ipgraph serve --help)")
    if training:  # its options need the node families (and torch): built only when asked for
        from ipgraph.nodes.training.cli import add_subcommands as add_training_subcommands

        add_training_subcommands(sub)  # train ipadapter, convert ipadapter
    else:
        sub.add_parser("train", help="train an IP-Adapter (ipgraph train ipadapter --help)")
        sub.add_parser("convert", help="convert a reference training checkpoint (ipgraph convert ipadapter --help)")
    sub.add_parser("worker", help="run jobs of a server on this machine (ipgraph worker --help)")
    return parser


# -- commands -----------------------------------------------------------------------------------------

def cmd_run(args) -> int:
    doc = load_document(Path(args.graph))  # before the node families: a JSON typo never imports torch
    if (code := check_structure(args, doc)) is not None:
        return code
    registry = load_registry(args.registry)
    runtime = make_runtime(args, registry)
    warnings: list[str] = []
    graph = apply_sets(load_graph(doc, registry, runtime, warnings), args.set)
    print_warnings(warnings)
    if registry is default_registry():
        from ipgraph.nodes.tiny import ensure_for_graph

        ensure_for_graph(graph, runtime)
    engine = Engine(registry, runtime)
    printer = ProgressPrinter()
    for i in range(max(1, args.repeat)):
        try:
            result = engine.run(graph, on_event=printer, cancel=CancelToken())
        except ValidationFailed as exc:
            print_problems(exc.problems)
            return 1
        except NodeFailed as exc:
            printer.close()
            print(f"error: {exc.error}", file=sys.stderr)
            if args.debug:
                print(exc.error.traceback, file=sys.stderr)
            return 1
        except RunCancelledError:
            printer.close()
            print("cancelled", file=sys.stderr)
            return 130
        printer.close()
        print(f"run {i + 1}: {len(result.executed)} executed, {len(result.cached)} cached, "
              f"{result.seconds:.2f} s")
        for node_id, ui in result.ui.items():
            for image in ui.get("images", []):
                print(f"  {node_id}: saved {Path(runtime.output_dir) / image.get('subfolder', '') / image['filename']}")
            if "text" in ui:
                print(f"  {node_id}: {ui['text']}")
    return 0


def cmd_validate(args) -> int:
    doc = load_document(Path(args.graph))  # before the node families: a JSON typo never imports torch
    if (code := check_structure(args, doc)) is not None:
        return code
    registry = load_registry(args.registry)
    runtime = make_runtime(args, registry)
    graph, warnings, problems = check_graph(args, doc, registry, runtime)
    if report(args, warnings, problems):
        return 1
    print(f"{args.graph}: valid ({len(graph.nodes)} nodes)")
    return 0


STRUCTURE_ONLY = ("  (checked against the node catalogue; model files, images, output paths and limits are "
                  "checked once these are fixed)")


def check_structure(args, doc: Any) -> int | None:
    """With ipgraph's own nodes, the graph's structure is checked against the node catalogue first, without
    importing the node families (torch): unknown types, inputs and outputs, missing inputs, socket types, widget
    values, cycles. When that finds a problem in a node, it is the answer (printed; the exit code is returned):
    the nodes' own checks (model files, images, output paths, limits) wait until the structure holds. Else
    None: the node families validate the whole graph (a graph whose only problem is that it has no output node
    still gets its nodes checked)."""
    if args.registry:
        return None
    from ipgraph.catalog import catalog_registry

    make_limits(args)  # a bad limit option is reported whatever the graph
    graph, warnings, problems = check_graph(args, doc, catalog_registry(), None)
    if not any(p.node_id is not None for p in problems):
        return None
    report(args, warnings, problems)
    print(STRUCTURE_ONLY, file=sys.stderr)
    return 1


def check_graph(args, doc: Any, registry: Registry, runtime: Any) -> tuple[Graph, list[str], list]:
    """(graph, import warnings, validation problems) of a document, ``--set`` applied."""
    warnings: list[str] = []
    graph = apply_sets(load_graph(doc, registry, runtime, warnings), args.set)
    return graph, warnings, Engine(registry, runtime).validate(graph)


def report(args, warnings: list[str], problems: list) -> bool:
    """Print the warnings and problems; True when the graph is not valid (``--strict``: warnings count)."""
    if getattr(args, "strict", False) and warnings:
        print(f"error: {len(warnings)} warning(s) under --strict:", file=sys.stderr)
        for w in warnings:
            print(f"  - {w}", file=sys.stderr)
        if problems:
            print_problems(problems)
        return True
    print_warnings(warnings)
    if problems:
        print_problems(problems)
    return bool(problems)


def cmd_nodes(args) -> int:
    if args.registry:
        described = load_registry(args.registry).describe()
    else:  # ipgraph's own nodes, from the catalogue: no node family (torch) is imported
        from ipgraph.catalog import load_catalog
        from ipgraph.engine.catalog import described_nodes

        described = described_nodes(load_catalog())
    if args.json:
        print(json.dumps(described, indent=2, default=repr))
        return 0
    for name, d in described.items():
        ins = ", ".join(f"{i['name']}:{i.get('socket') or i.get('type')}" for i in d["inputs"])
        outs = ", ".join(f"{o['name']}:{o['socket']}" for o in d["outputs"])
        flag = " [output]" if d["output_node"] else ""
        print(f"{name}{flag} ({d['category']})\n    in:  {ins or '-'}\n    out: {outs or '-'}")
    return 0


def cmd_models_tiny(args) -> int:
    from ipgraph.nodes.core.runtime import Runtime
    from ipgraph.nodes.tiny import write_all

    runtime = Runtime.create(models_dir=args.models_dir)
    started = time.perf_counter()
    written = write_all(runtime.models_dir)
    for path in written:
        print(path)
    print(f"tiny models in {runtime.models_dir} ({time.perf_counter() - started:.1f} s)")
    return 0


def cmd_models_list(args) -> int:
    from ipgraph.nodes.core.runtime import MODEL_KINDS, Runtime

    runtime = Runtime.create(models_dir=args.models_dir)
    for kind in MODEL_KINDS:
        print(f"{kind}/")
        for name in runtime.list_models(kind):
            print(f"  {name}")
    return 0


def cmd_graphs(args) -> int:
    import shutil

    from ipgraph.graphs import ASSETS_DIR, GRAPHS_DIR, bundled

    if args.copy:
        dest = Path(args.copy)
        (dest / "assets").mkdir(parents=True, exist_ok=True)
        for path in bundled().values():
            shutil.copy2(path, dest / path.name)
        for asset in ASSETS_DIR.iterdir():
            if asset.is_file() and asset.suffix != ".py":
                shutil.copy2(asset, dest / "assets" / asset.name)
        print(f"copied {len(bundled())} graphs and their assets to {dest}")
        return 0
    for name in bundled():
        print(name)
    print(f"(in {GRAPHS_DIR}; `ipgraph run NAME` runs one)", file=sys.stderr)
    return 0


# -- helpers ------------------------------------------------------------------------------------------

def default_registry() -> Registry:
    import ipgraph.nodes  # noqa: F401  (registers the node families)
    from ipgraph.engine import REGISTRY

    return REGISTRY


def load_registry(spec: str | None) -> Registry:
    if not spec:
        return default_registry()
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import registry module {module_name!r}: {exc}") from None
    registry = getattr(module, attr or "REGISTRY", None)
    if not isinstance(registry, Registry):
        raise CliError(f"{spec!r} is not an engine.Registry")
    return registry


def make_runtime(args, registry: Registry) -> Any:
    if registry is not default_registry():
        return None
    from ipgraph.nodes.core.runtime import Runtime

    limits = make_limits(args)
    try:
        return Runtime.create(models_dir=getattr(args, "models_dir", None),
                              output_dir=getattr(args, "output_dir", None), input_dir=getattr(args, "input_dir", None),
                              device=getattr(args, "device", None), dtype=getattr(args, "dtype", None), limits=limits,
                              channels_last=getattr(args, "channels_last", None))
    except ValueError as exc:
        raise CliError(str(exc)) from None


def make_limits(args) -> Any:
    from ipgraph.limits import SPECS, Limits

    try:
        return Limits.create(**{spec.field: getattr(args, spec.field, None) for spec in SPECS})
    except ValueError as exc:
        raise CliError(str(exc)) from None


def load_document(path: Path) -> Any:
    """The JSON document in a file: a .json file, or the text chunks of a PNG saved by ipgraph
    (``ipgraph``) or ComfyUI (``prompt``: the API-format prompt that ran, else ``workflow``: the editor's graph)."""
    if not path.exists():
        from ipgraph.graphs import bundled

        found = bundled().get(path.stem if path.suffix == ".json" and path.parent == Path(".") else str(path))
        if found is None:
            raise CliError(f"no such graph file: {path} (`ipgraph graphs` lists the bundled ones)")
        path = found
    if path.is_dir():
        raise CliError(f"{path} is a folder; give a graph file (.json or .png)")
    if path.suffix.lower() == ".png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                info = dict(image.info)
        except Image.DecompressionBombError:
            raise CliError(f"{path} is larger than the image pixel limit allows; it was not opened") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise CliError(f"{path} is not a readable PNG: {exc}") from None
        for key in ("ipgraph", "prompt", "workflow"):
            if isinstance(info.get(key), str):
                try:
                    return parse_json(info[key])
                except GraphFormatError as exc:
                    raise CliError(f"{path}: its {key!r} text chunk is broken: {exc}") from None
        raise CliError(f"{path} carries no graph in its metadata (no ipgraph, prompt or workflow text chunk)")
    try:
        return parse_json(path.read_bytes())
    except GraphFormatError as exc:
        raise CliError(f"{path}: {exc}") from None
    except OSError as exc:
        raise CliError(f"{path} could not be read ({exc.strerror or exc})") from None


def load_graph(doc: Any, registry: Registry, runtime: Any = None, warnings: list[str] | None = None) -> Graph:
    """The graph of a document read by :func:`load_document` (ipgraph/1, ComfyUI API or UI format)."""

    def object_info() -> dict:
        from ipgraph.server.comfy_api import object_info as describe

        return describe(registry, runtime)

    return graph_from_document(doc, registry, object_info, warnings)


def apply_sets(graph: Graph, sets: list[str]) -> Graph:
    for item in sets:
        target, sep, raw = item.partition("=")
        node_id, dot, input_name = target.partition(".")
        if not sep or not dot or not node_id or not input_name:
            raise CliError(f"--set expects NODE.INPUT=VALUE, got {item!r}")
        if node_id not in graph.nodes:
            raise CliError(f"--set {item!r}: the graph has no node {node_id!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        graph.set(node_id, input_name, value)
    return graph


def print_warnings(warnings: list[str]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def print_problems(problems) -> None:
    print(f"the graph has {len(problems)} problem(s):", file=sys.stderr)
    for p in problems:
        print(f"  - {p}  [{p.type}]", file=sys.stderr)


class ProgressPrinter:
    """Subscribes to engine events: one line per node, a tqdm bar for nodes that report steps."""

    def __init__(self) -> None:
        self.bar = None
        self.types: dict[str, str] = {}

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.NodeStarted):
            self.close()
            self.types[event.node_id] = event.node_type
        elif isinstance(event, events.NodeProgress):
            if self.bar is None:
                from tqdm import tqdm

                label = f"{event.node_id} ({self.types.get(event.node_id, '')})"
                self.bar = tqdm(total=event.max, desc=label, leave=False, file=sys.stderr)
            self.bar.n = event.value
            self.bar.refresh()
        elif isinstance(event, events.NodeFinished):
            self.close()
            print(f"  ran    {event.node_id} ({event.node_type}) {event.seconds:.2f} s", file=sys.stderr)
        elif isinstance(event, events.NodeCached):
            print(f"  cached {event.node_id} ({event.node_type})", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


if __name__ == "__main__":
    sys.exit(main())
