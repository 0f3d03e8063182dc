"""The HTTP rendezvous of ``natkit ice`` (:mod:`natkit.net.rendezvous`).

The store is tested with an injected clock; the HTTP side with a real
server on 127.0.0.1 (an ephemeral port) and natkit's own client calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from natkit.net import rendezvous
from natkit.net.rendezvous import (
    MAX_BODY,
    TTL,
    RendezvousError,
    RendezvousStore,
    fetch_description,
    make_app,
    publish_description,
)
from ports import pick_block

OFFER = json.dumps({"natkit_ice": 1, "ufrag": "abcd"})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_store_keeps_one_description_per_room_and_role() -> None:
    store = RendezvousStore()
    assert store.get("r", "offer") is None
    store.put("r", "offer", "one")
    store.put("r", "offer", "two")
    store.put("r", "answer", "three")
    assert (store.get("r", "offer"), store.get("r", "answer")) == ("two", "three")
    assert len(store) == 2


def test_store_forgets_after_the_ttl() -> None:
    clock = Clock()
    store = RendezvousStore(clock=clock)
    store.put("r", "offer", "x")
    clock.now += TTL - 1
    assert store.get("r", "offer") == "x"
    clock.now += 2
    assert store.get("r", "offer") is None
    assert len(store) == 0


def test_store_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rendezvous, "MAX_ENTRIES", 3)
    store = RendezvousStore()
    for room in "abcd":
        store.put(room, "offer", room)
    assert len(store) == 3
    assert store.get("a", "offer") is None  # the oldest went first
    assert store.get("d", "offer") == "d"


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    runner = web.AppRunner(make_app(RendezvousStore()))
    await runner.setup()
    port = pick_block(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _text(text: str) -> str:
    return text


def _deadline(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_publish_then_fetch(base_url: str) -> None:
    url = f"{base_url}/room-1/offer"
    assert await fetch_description(url, _deadline(0.2), accept=_text) is None
    await publish_description(url, OFFER, timeout=5)
    assert await fetch_description(url, _deadline(5), accept=_text) == OFFER


async def test_fetch_waits_for_a_description_it_accepts(base_url: str) -> None:
    url = f"{base_url}/room-2/answer"
    await publish_description(url, json.dumps({"old": True}), timeout=5)

    async def answer_later() -> None:
        await asyncio.sleep(0.2)
        await publish_description(url, json.dumps({"new": True}), timeout=5)

    task = asyncio.create_task(answer_later())
    text = await fetch_description(
        url, _deadline(5), accept=lambda t: t if "new" in t else None
    )
    await task
    assert text == json.dumps({"new": True})


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/room/offer", "not json", "400 the body is not JSON"),
        ("/room/offer", "[1, 2]", "400 the body is not a JSON object"),
        ("/room/offer", json.dumps({"x": "y" * MAX_BODY}), "413"),
        ("/bad.room/offer", OFFER, "400 a room name is"),
        ("/room/sdp", OFFER, "404 no such description"),
    ],
)
async def test_refused_puts_say_why(
    base_url: str, path: str, body: str, message: str
) -> None:
    with pytest.raises(RendezvousError, match=message):
        await publish_description(base_url + path, body, timeout=5)


async def test_unreachable_and_non_http_urls_are_errors() -> None:
    port = pick_block(1)  # nothing listens there
    with pytest.raises(RendezvousError, match="cannot reach"):
        await publish_description(f"http://127.0.0.1:{port}/r/offer", OFFER, timeout=2)
    with pytest.raises(RendezvousError, match="cannot reach"):
        await fetch_description(
            f"http://127.0.0.1:{port}/r/offer", _deadline(2), accept=_text
        )
    with pytest.raises(RendezvousError, match="not an http"):
        await publish_description("ftp://127.0.0.1/r/offer", OFFER, timeout=2)
