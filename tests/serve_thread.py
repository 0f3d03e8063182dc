"""``natkit.server.daemon.serve`` for tests: in a thread, or on the test's loop.

The test thread keeps making blocking socket calls while the server runs;
:class:`ServeThread` starts the server, waits until every listener is open,
and stops it again, re-raising in the test thread whatever the server raised.
:func:`serving` does the same on the running event loop of an async test.
"""

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from natkit.net.address import ListenAddress
from natkit.net.listeners import ServiceStats
from natkit.server.config import ServerConfig
from natkit.server.daemon import serve


@asynccontextmanager
async def serving(
    config: ServerConfig, *, timeout: float = 5.0
) -> AsyncIterator[tuple[ListenAddress, ...]]:
    """``serve(config)`` on this loop until the block ends; yields what it bound."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    bound: list[ListenAddress] = []

    def on_ready(addresses: tuple[ListenAddress, ...]) -> None:
        bound.extend(addresses)
        ready.set()

    task = asyncio.create_task(serve(config, stop=stop, on_ready=on_ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=timeout, return_when="FIRST_COMPLETED")
    waiter.cancel()
    if task.done():
        task.result()
    if not ready.is_set():
        task.cancel()
        pytest.fail("natkit serve did not start")
    try:
        yield tuple(bound)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout * 2)


class ServeThread:
    """One running server; :meth:`stop` returns its final statistics."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
        timeout: float = 5.0,
    ) -> None:
        self.config = config
        self.loop = loop_factory()
        self.stats: ServiceStats | None = None
        self._timeout = timeout
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("natkit serve did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            self.stats = await serve(
                self.config, stop=self._stop, on_ready=lambda _: self._ready.set()
            )

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> ServiceStats:
        stop = self._stop
        if stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(stop.set)
        self._thread.join(self._timeout)
        if self._error is not None:
            raise self._error
        if self.stats is None:
            raise RuntimeError("natkit serve did not stop")
        return self.stats
