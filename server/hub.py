"""Websocket clients by id (ComfyUI's ``sid`` / ``client_id``), fed from the worker thread.

Each client has an asyncio queue drained by one sender task, so frames reach a client in the order the worker
produced them. The worker thread never awaits: it hands frames to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import uuid
from dataclasses import dataclass, field

from fastapi import WebSocket

PREVIEW_IMAGE = 1  # uint32 event, uint32 format (1=JPEG, 2=PNG), image bytes
PREVIEW_IMAGE_WITH_METADATA = 4  # uint32 event, uint32 json length, json, image bytes
_MAX_BACKLOG = 1000  # frames kept for a slow client before the oldest previews/progress are dropped


@dataclass
class Client:
    sid: str
    ws: WebSocket
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    features: dict = field(default_factory=dict)
    task: asyncio.Task | None = None


class Hub:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.clients: dict[str, Client] = {}

    # -- connection life cycle (event loop) ------------------------------------------------------
    async def attach(self, ws: WebSocket, sid: str | None) -> Client:
        self.loop = asyncio.get_running_loop()
        sid = sid if sid and len(sid) <= 128 else uuid.uuid4().hex
        old = self.clients.get(sid)
        if old is not None:  # a reconnect with the same id replaces the old socket
            await self.detach(old)
        client = Client(sid, ws)
        client.task = asyncio.create_task(self._pump(client))
        self.clients[sid] = client
        return client

    async def detach(self, client: Client) -> None:
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]
        if client.task is not None:
            client.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await client.task

    async def _pump(self, client: Client) -> None:
        while True:
            frame = await client.queue.get()
            try:
                if isinstance(frame, bytes):
                    await client.ws.send_bytes(frame)
                else:
                    await client.ws.send_text(frame)
            except Exception:  # the socket is gone; the receive loop will detach it
                return

    # -- sending (any thread) ---------------------------------------------------------------------
    def _put(self, client: Client, frame: str | bytes) -> None:
        if client.queue.qsize() >= _MAX_BACKLOG:
            return  # a stalled client must not grow memory without bound
        client.queue.put_nowait(frame)

    def _dispatch(self, sid: str | None, frame_for) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return

        def deliver() -> None:
            targets = list(self.clients.values()) if sid is None else (
                [self.clients[sid]] if sid in self.clients else [])
            for client in targets:
                frame = frame_for(client)
                if frame is not None:
                    self._put(client, frame)

        with contextlib.suppress(RuntimeError):  # loop closed while shutting down
            loop.call_soon_threadsafe(deliver)

    def send(self, event: str, data: dict, sid: str | None) -> None:
        """Send ``{"type": event, "data": data}`` to one client, or to everyone when ``sid`` is None."""
        text = json.dumps({"type": event, "data": data}, default=str)
        self._dispatch(sid, lambda client: text)

    def send_preview(self, sid: str | None, image_bytes: bytes, mime: str, meta: dict) -> None:
        if sid is None:
            return
        legacy = struct.pack(">II", PREVIEW_IMAGE, 2 if mime == "image/png" else 1) + image_bytes
        meta_json = json.dumps({**meta, "image_type": mime}).encode()
        rich = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta_json)) + meta_json + image_bytes

        def pick(client: Client) -> bytes:
            return rich if client.features.get("supports_preview_metadata") else legacy

        self._dispatch(sid, pick)

    def has(self, sid: str | None) -> bool:
        return sid is not None and sid in self.clients
