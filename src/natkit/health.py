"""``natkit health``: does the local server answer a STUN Binding request?

Meant for container health checks (the image's ``HEALTHCHECK``, a Kubernetes
exec probe): one Binding request over UDP (RFC 8489 §6.2.1 retransmissions,
shortened to fit the timeout), exit 0 on a success response carrying
XOR-MAPPED-ADDRESS, exit 1 otherwise. It uses a plain blocking socket, so it
starts fast and needs no event loop.
"""

import socket
import sys
import time
from dataclasses import dataclass

import click

from natkit.stun.attributes import ErrorCodeAttr, XorMappedAddress
from natkit.stun.constants import MessageClass, Method
from natkit.stun.errors import DecodeError, NatkitError
from natkit.stun.message import Message, decode, encode, new_transaction_id

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3478
DEFAULT_TIMEOUT = 2.0
# first retransmission timeout; doubled after each send (RFC 8489 §6.2.1 uses
# 500 ms for the Internet, a loopback answer takes well under a millisecond)
FIRST_RTO = 0.1
MAX_DATAGRAM = 2048


class HealthError(NatkitError):
    """The server did not give a valid Binding success response."""


@dataclass(frozen=True, slots=True)
class HealthResult:
    """A successful check: who answered, with which mapped address, how fast."""

    server: str
    mapped_ip: str
    mapped_port: int
    rtt: float


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HealthError(f"cannot resolve {host!r}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def _server_text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _answer(data: bytes, transaction_id: bytes) -> XorMappedAddress | None:
    """The mapped address of a matching success response; None for strays.

    RFC 8489 §6.3: a response whose transaction ID matches no request is
    discarded; an error response ends the transaction.
    """
    try:
        msg = decode(data)
    except DecodeError:
        return None
    if msg.transaction_id != transaction_id or msg.method != Method.BINDING:
        return None
    if msg.cls == MessageClass.ERROR:
        error = msg.get(ErrorCodeAttr)
        code = f"{error.code} {error.reason}" if error else "without ERROR-CODE"
        raise HealthError(f"error response {code}")
    if msg.cls != MessageClass.SUCCESS:
        return None
    mapped = msg.get(XorMappedAddress)
    if mapped is None:
        raise HealthError("success response without XOR-MAPPED-ADDRESS")
    return mapped


def check(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> HealthResult:
    """Send a Binding request to ``host``:``port`` over UDP and wait for the
    answer, retransmitting with a doubling timeout until ``timeout`` seconds
    have passed. Raises HealthError when there is no valid answer."""
    family, address = _resolve(host, port)
    server = _server_text(address)
    transaction_id = new_transaction_id()
    request = encode(
        Message(Method.BINDING, MessageClass.REQUEST, transaction_id),
        fingerprint=True,
    )
    started = time.monotonic()
    deadline = started + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        # connected: an ICMP port unreachable shows as ECONNREFUSED at once
        sock.connect(address)
        rto = FIRST_RTO
        resend_at = started
        while (now := time.monotonic()) < deadline:
            if now >= resend_at:
                sock.send(request)
                resend_at = now + rto
                rto *= 2
            sock.settimeout(max(min(resend_at, deadline) - now, 0.001))
            try:
                data = sock.recv(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                raise HealthError(f"nothing listens on udp {server}") from None
            except OSError as exc:
                raise HealthError(f"udp {server}: {exc.strerror or exc}") from None
            mapped = _answer(data, transaction_id)
            if mapped is not None:
                rtt = time.monotonic() - started
                return HealthResult(server, mapped.ip, mapped.port, rtt)
    raise HealthError(f"no STUN answer from udp {server} within {timeout:g} s")


_HEALTH_EPILOG = """\b
Examples:
  natkit health
  natkit health --port 3479 --timeout 1
  natkit health --host ::1

Exit status 0: the server answered; 1: it did not (one line says why).
"""


# a plain click command: natkit.cli imports this module, and its group turns
# the usage errors of every subcommand into one line
@click.command("health", epilog=_HEALTH_EPILOG)
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Server address.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Server UDP port.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True, max=60),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the answer.",
)
def health(host: str, port: int, timeout: float) -> None:
    """Check that the local STUN server answers (for container health checks)."""
    try:
        result = check(host, port, timeout=timeout)
    except HealthError as exc:
        click.echo(f"natkit: error: health: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"ok: {result.server} answered in {result.rtt * 1000:.1f} ms "
        f"(mapped {_server_text((result.mapped_ip, result.mapped_port))})"
    )
