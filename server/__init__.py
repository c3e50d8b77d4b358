"""ipgraph's HTTP + websocket server: job queue, history, ComfyUI-compatible API and the web editor.

    ipgraph serve [--host 127.0.0.1] [--port 8188] [--models-dir DIR] [--data-dir DIR] [--token TOKEN]

``main(argv)`` parses those options and runs uvicorn; ``create_app(ServerConfig(...))`` builds the ASGI app for
embedding and tests. See ``server/README.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

__all__ = ["ServerConfig", "build_parser", "create_app", "main", "run"]


def __getattr__(name: str):  # lazy: importing ``server`` must not import FastAPI or torch
    if name in ("ServerConfig", "create_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipgraph serve", description="Run the ipgraph server and web editor.")
    p.add_argument("--host", default=os.environ.get("IPGRAPH_HOST", "127.0.0.1"),
                   help="address to bind (default 127.0.0.1; anything else should use --token)")
    p.add_argument("--port", type=int, default=int(os.environ.get("IPGRAPH_PORT", "8188")))
    p.add_argument("--models-dir", default=None, help="models folder (default $IPGRAPH_MODELS_DIR or ./models)")
    p.add_argument("--data-dir", default=os.environ.get("IPGRAPH_DATA_DIR", "data"),
                   help="queue/history database, inputs, outputs, user settings (default ./data)")
    p.add_argument("--token", default=os.environ.get("IPGRAPH_TOKEN") or None,
                   help="require this bearer token on every request (or $IPGRAPH_TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest accepted upload (MB)")
    p.add_argument("--cache-gb", type=float, default=2.0, help="output cache size (GB)")
    p.add_argument("--no-frontend", action="store_true", help="API only, no web editor at /")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    from ipgraph.limits import add_limit_options

    add_limit_options(p)
    w = p.add_argument_group("workers (server/README.md, 'Workers')")
    w.add_argument("--workers", default=os.environ.get("IPGRAPH_WORKERS", "inprocess"),
                   help="inprocess (default), local:N, ray, ray:N, ray://HOST:PORT, or none (remote workers only)")
    w.add_argument("--worker-count", type=int, default=None, help="Ray workers (default: one per GPU, else 1)")
    w.add_argument("--lease-s", type=float, default=30.0, help="job lease length in seconds (default 30)")
    w.add_argument("--max-attempts", type=int, default=2,
                   help="leases a job gets before a lost worker fails it for good (default 2)")
    w.add_argument("--routing", default="affinity", choices=["affinity", "fifo", "random"],
                   help="which pending job a free worker takes (default: cache affinity)")
    p.add_argument("--channels-last", action="store_true",
                   help="UNet/VAE convolutions in channels-last memory (CPU: faster; results differ ~1e-4; "
                        "also $IPGRAPH_CHANNELS_LAST=1, which workers inherit)")
    w.add_argument("--batch", type=int, default=4,
                   help="queued jobs that differ only in their seeds run as one sampling batch, at most this "
                        "many (default 4; 1 = one job at a time; in-process and local:N workers)")
    return p


def config_from_args(args: argparse.Namespace):
    from ipgraph.limits import SPECS, Limits

    from .app import ServerConfig

    if getattr(args, "channels_last", False):
        os.environ["IPGRAPH_CHANNELS_LAST"] = "1"  # every runtime of this server and of its worker processes
    try:
        limits = Limits.create(**{spec.field: getattr(args, spec.field, None) for spec in SPECS})
    except ValueError as exc:
        raise SystemExit(f"ipgraph serve: {exc}") from None
    return ServerConfig(
        limits=limits,
        data_dir=Path(args.data_dir).resolve(),
        models_dir=Path(args.models_dir).resolve() if args.models_dir else None,
        host=args.host, port=args.port, token=args.token,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        cache_bytes=int(args.cache_gb * 1024**3),
        serve_frontend=not args.no_frontend,
        workers=args.workers, worker_count=args.worker_count, lease_s=args.lease_s,
        max_attempts=max(1, args.max_attempts), routing=args.routing, batch=max(1, args.batch),
    )


def run(config, log_level: str = "info") -> None:
    """Serve ``config`` with uvicorn until interrupted."""
    import uvicorn

    from .app import create_app

    loopback = config.host in ("127.0.0.1", "localhost", "::1") or config.host.startswith("127.")
    if not loopback and not config.token:
        print(f"warning: serving on {config.host} without --token: anyone who can reach this port can run "
              "jobs and read outputs", file=sys.stderr)
    app = create_app(config)
    url = f"http://{'[' + config.host + ']' if ':' in config.host else config.host}:{config.port}/"
    print(f"ipgraph server on {url}{'?token=…' if config.token else ''}  (API docs: {url}docs-api)", file=sys.stderr)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, ws_max_size=1 << 20)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    run(config_from_args(args), log_level=args.log_level)
    return 0
