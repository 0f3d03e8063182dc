"""``natkit serve``: configuration, TLS material, listeners and signals, wired.

:func:`serve` runs one server until its stop event is set (SIGINT and SIGTERM
set it when running in the main thread); :func:`run` does so on uvloop when it
is installed, on the plain asyncio loop otherwise.
"""

import asyncio
import logging
import signal
import stat
from collections.abc import Callable
from pathlib import Path

from natkit import __version__
from natkit.net.address import ListenAddress, Transport
from natkit.net.listeners import ServiceStats, StreamLimits, StunService
from natkit.security.certs import TlsFiles, ensure_self_signed, server_context
from natkit.server.config import ServerConfig
from natkit.stun.errors import NatkitError
from natkit.stun.server import BindingResponder

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartupError(NatkitError):
    """The server cannot start: data directory, certificate or listener."""


def ensure_data_dir(path: Path) -> Path:
    """Create the data directory with mode 0700 if it is missing.

    An existing directory is kept as it is; a warning says so if others can
    read it.
    """
    if not path.exists():
        try:
            path.mkdir(mode=0o700, parents=True)
            path.chmod(0o700)
        except OSError as exc:
            raise StartupError(
                f"cannot create data directory {path}: {exc.strerror}"
            ) from None
        logger.info("created data directory %s", path)
    elif not path.is_dir():
        raise StartupError(f"data directory {path} is not a directory")
    else:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            logger.warning(
                "data directory %s is open to other users (mode %04o)", path, mode
            )
    return path


def tls_files(config: ServerConfig) -> TlsFiles:
    """The configured certificate, or the generated one in the data directory."""
    if config.tls_cert is not None and config.tls_key is not None:
        return TlsFiles(config.tls_cert, config.tls_key)
    return ensure_self_signed(config.data_dir)


async def serve(
    config: ServerConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[tuple[ListenAddress, ...]], None] | None = None,
) -> ServiceStats:
    """Run the server until ``stop`` is set; return its final counters.

    ``on_ready`` is called with the bound listeners (ports resolved) once all
    are open. Raises :class:`StartupError` when it cannot start.
    """
    listeners = config.listeners()
    stop = stop or asyncio.Event()
    handled = _install_signals(stop)
    try:
        service = await _start(config, listeners)
    except BaseException:
        _remove_signals(handled)
        raise

    # run until told to stop
    try:
        if on_ready is not None:
            on_ready(service.bound)
        await stop.wait()
    finally:
        _remove_signals(handled)
        await service.close()
    stats = service.stats()
    logger.info(
        "stopped: %d responses (%d errors), %d malformed, %d ignored, "
        "%d idle connections closed, %d connections refused",
        stats.success + stats.responder.errors,
        stats.responder.errors,
        stats.malformed,
        stats.responder.ignored,
        stats.idle_closed,
        stats.rejected_connections,
    )
    return stats


async def _start(
    config: ServerConfig, listeners: tuple[ListenAddress, ...]
) -> StunService:
    """Data directory, TLS material (when needed), then every listener."""
    ensure_data_dir(config.data_dir)

    # step 1: TLS material, only when a TLS listener is asked for
    ssl_context = None
    if any(a.transport is Transport.TLS for a in listeners):
        try:
            ssl_context = server_context(tls_files(config))
        except NatkitError as exc:
            raise StartupError(str(exc)) from None

    # step 2: the listeners
    service = StunService(
        BindingResponder(config.software),
        limits=StreamLimits(
            idle_timeout=config.stream_idle_timeout,
            max_connections=config.max_connections,
            max_message_size=config.max_message_size,
        ),
    )
    try:
        bound = await service.start(listeners, ssl_context=ssl_context)
    except NatkitError as exc:
        raise StartupError(str(exc)) from None
    for address in bound:
        logger.info("listening %s %s", address.transport, address.endpoint)
    return service


def _install_signals(stop: asyncio.Event) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in _STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, _on_signal, stop, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or no signal support
        handled.append(sig)
    return handled


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    logger.info("%s received, stopping", sig.name)
    stop.set()


def _remove_signals(handled: list[signal.Signals]) -> None:
    loop = asyncio.get_running_loop()
    for sig in handled:
        loop.remove_signal_handler(sig)


def run(config: ServerConfig) -> ServiceStats:
    """Run :func:`serve` to completion on uvloop, or plain asyncio without it."""
    logger.info("natkit %s starting, data directory %s", __version__, config.data_dir)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop
    except ImportError:
        logger.debug("uvloop not installed, using the asyncio event loop")
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(config))
