"""A small HTTP rendezvous for ``natkit ice``: two peers swap descriptions.

``natkit ice rendezvous`` keeps, in memory, one description per room and
role. A peer stores its own with ``PUT /ROOM/offer`` (or ``/ROOM/answer``)
and fetches the other's with ``GET``, which answers 404 until it is there.
The offerer polls for an answer to *its* offer (the description names the
offer it answers), so a stale answer from an earlier run is never taken.

It is signalling for tests, labs and diagnostics, not a service: plain
HTTP (the descriptions carry ICE passwords, so keep it on loopback or a
trusted network), nothing on disk, bounded in every direction (rooms,
body size, age). Room names are 1-64 letters, digits, ``-`` or ``_``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import ClientError, ClientResponse, ClientSession, ClientTimeout, web

from natkit.stun.errors import NatkitError

__all__ = [
    "MAX_BODY",
    "MAX_ENTRIES",
    "ROLES",
    "TTL",
    "RendezvousError",
    "RendezvousStore",
    "fetch_description",
    "make_app",
    "publish_description",
]

#: the largest description accepted, in bytes
MAX_BODY = 64 * 1024
#: descriptions kept at most (rooms × roles); the oldest go first
MAX_ENTRIES = 1024
#: seconds a description is kept
TTL = 600.0
#: the two descriptions of a room
ROLES = ("offer", "answer")
#: how often a waiting peer asks again
POLL = 0.05

T = TypeVar("T")

_ROOM = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


class RendezvousError(NatkitError):
    """The rendezvous refused a request or could not be reached."""


@dataclass(frozen=True, slots=True)
class _Entry:
    text: str
    stored_at: float


class RendezvousStore:
    """Descriptions by (room, role), bounded in count and age."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def put(self, room: str, role: str, text: str) -> None:
        self._expire()
        key = (room, role)
        self._entries.pop(key, None)
        while len(self._entries) >= MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = _Entry(text, self._clock())

    def get(self, room: str, role: str) -> str | None:
        self._expire()
        entry = self._entries.get((room, role))
        return entry.text if entry is not None else None

    def _expire(self) -> None:
        oldest = self._clock() - TTL
        for key in [k for k, e in self._entries.items() if e.stored_at < oldest]:
            del self._entries[key]


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _key(request: web.Request) -> tuple[str, str] | web.Response:
    room, role = request.match_info["room"], request.match_info["role"]
    if not _ROOM.match(room):
        return _problem(400, "a room name is 1-64 letters, digits, '-' or '_'")
    if role not in ROLES:
        return _problem(404, f"no such description: {role!r} (offer or answer)")
    return room, role


def make_app(store: RendezvousStore) -> web.Application:
    """The HTTP application over ``store``."""

    async def put(request: web.Request) -> web.Response:
        key = _key(request)
        if isinstance(key, web.Response):
            return key
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return _problem(413, f"a description is at most {MAX_BODY} bytes")
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return _problem(400, "the body is not JSON")
        if not isinstance(parsed, dict):
            return _problem(400, "the body is not a JSON object")
        store.put(*key, body.decode())
        return web.json_response({"stored": "/".join(key)}, status=201)

    async def get(request: web.Request) -> web.Response:
        key = _key(request)
        if isinstance(key, web.Response):
            return key
        text = store.get(*key)
        if text is None:
            return _problem(404, "not there yet")
        return web.Response(text=text, content_type="application/json")

    app = web.Application(client_max_size=MAX_BODY + 1)
    app.router.add_put("/{room}/{role}", put)
    app.router.add_get("/{room}/{role}", get)
    return app


def _check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise RendezvousError(f"{url}: not an http:// or https:// URL")


async def publish_description(url: str, text: str, *, timeout: float) -> None:
    """PUT our description at ``url``."""
    _check_url(url)
    try:
        async with ClientSession(timeout=ClientTimeout(total=timeout)) as session:
            async with session.put(
                url, data=text, headers={"Content-Type": "application/json"}
            ) as response:
                if response.status != 201:
                    raise RendezvousError(
                        f"{url}: {response.status} {await _reason(response)}"
                    )
    except (ClientError, TimeoutError, ValueError) as exc:
        raise RendezvousError(
            f"cannot reach {url}: {exc or type(exc).__name__}"
        ) from None


async def fetch_description(
    url: str, deadline: float, *, accept: Callable[[str], T | None]
) -> T | None:
    """GET ``url`` until ``accept`` makes something of what it holds (not
    None), and return that; None once ``deadline`` (loop time) has passed."""
    _check_url(url)
    loop = asyncio.get_running_loop()
    try:
        async with ClientSession() as session:
            while loop.time() < deadline:
                budget = ClientTimeout(total=max(0.1, deadline - loop.time()))
                async with session.get(url, timeout=budget) as response:
                    if response.status == 200:
                        taken = accept(await response.text())
                        if taken is not None:
                            return taken
                    elif response.status != 404:
                        raise RendezvousError(
                            f"{url}: {response.status} {await _reason(response)}"
                        )
                await asyncio.sleep(POLL)
    except (ClientError, TimeoutError, ValueError) as exc:
        raise RendezvousError(
            f"cannot reach {url}: {exc or type(exc).__name__}"
        ) from None
    return None


async def _reason(response: ClientResponse) -> str:
    """The ``error`` of our JSON error bodies, else the HTTP reason."""
    try:
        data = await response.json(content_type=None)
    except (ClientError, ValueError):
        return response.reason or ""
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return response.reason or ""
