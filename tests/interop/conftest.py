"""Fixtures that run real STUN peers on loopback for the interop tests.

Findings about the peers (Debian bookworm packages coturn 4.6.1-1 and
stun-client 0.97~dfsg-2.1+b1), from running them on this machine:

coturn ``turnserver`` 4.6.1
    The package does not start a daemon (``TURNSERVER_ENABLED`` is commented out
    in /etc/default/coturn), so nothing holds 3478; the fixture uses a free port
    anyway. Start-up flags that keep it on loopback and inside a temp dir:

    * ``-n``: do not read /etc/turnserver.conf, command line only.
    * ``--listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port P``:
      UDP and TCP listeners on 127.0.0.1:P (one socket per CPU for UDP).
    * ``--no-tls --no-dtls``: no 5349 listeners, no certificate needed.
    * ``--no-cli``: no telnet CLI on 127.0.0.1:5766. The web admin and the
      Prometheus exporter are off unless asked for.
    * ``--stun-only --no-auth``: Binding needs no credentials anyway; TURN
      requests are ignored.
    * ``--no-rfc5780``: with one IP it cannot do CHANGE-REQUEST and says so.
    * ``--log-file DIR/turn.log --simple-log``: without --simple-log it appends a
      date to the name; without --log-file it tries /var/log/turnserver, /var/log,
      /var/tmp, /tmp and ".". ``--no-stdout-log`` keeps stdout quiet.
    * ``--userdb DIR/turndb``: it creates this SQLite file on start (default
      /var/lib/turn/turndb). ``--pidfile DIR/turnserver.pid`` (default
      /var/run/turnserver.pid).
    * ``-v`` logs "IPv4. UDP listener opened on: 127.0.0.1:P" and the TCP
      equivalent; the fixture still waits for a real Binding answer over UDP and
      an accepted TCP connection, which is the only reliable readiness signal.

    It prints "socket: Protocol not supported" on stderr at start (no SCTP in
    the kernel); harmless. SIGTERM stops it at once (exit status -15).

``turnutils_stunclient`` (coturn 4.6.1)
    ``turnutils_stunclient -p PORT 127.0.0.1``: one RFC 5389 Binding request
    (magic cookie, no attributes) over UDP from an ephemeral port (only ``-L``
    for the local address, no local-port option). It prints
    ``0: : IPv4. UDP reflexive addr: 127.0.0.1:42142`` (twice: stdout and its
    logger). It needs XOR-MAPPED-ADDRESS: a response with only MAPPED-ADDRESS
    gives "Cannot read the response", an error response gives
    "The response is an error 400 (reason)". It always exits 0 and waits forever
    if nothing answers, so it runs under a time limit. ``-f`` (RFC 5780 mode)
    sends a second request with CHANGE-REQUEST; against a server without RFC
    5780 (coturn --no-rfc5780 as much as natkit serve) it gets a 420 and then
    hangs, so the tests do not use it.

Debian ``stun`` (stun-client 0.97, the Vovida RFC 3489 client)
    ``stun 127.0.0.1:PORT -v -p SRCPORT``: the server port goes after a colon;
    ``-p`` is the *source* port (it opens SRCPORT and SRCPORT+1). It runs the RFC
    3489 §10.1 tests: old-style Binding requests with a 16-byte transaction id
    (no magic cookie; the first byte is the test number) each carrying
    CHANGE-REQUEST (flags 0, change-IP+port, change-port); then "test I(2)" to
    the CHANGED-ADDRESS if one was given. Its verbose trace on stderr shows
    ``MappedAddress = 127.0.0.1:SRCPORT`` per decoded response and a summary
    (``test I = 1``...); stdout says ``Primary: <NAT type>`` and
    ``Return value is 0x...``, which is also its exit status: Open with the port
    preserved is 0x01, "Firewall" 0x0b, "Blocked or could not reach STUN
    server" 0x1c (28).

    What a server must do so this client gets its answer (tried against a fake
    responder): echo the whole 16-byte id (a response with the magic cookie
    written over the first 4 bytes is not matched, and the client reports
    Blocked), and include MAPPED-ADDRESS (RFC 8489 §12.2 asks for it when the
    cookie is absent; with only XOR-MAPPED-ADDRESS it decodes 0.0.0.0:0).
    XOR-MAPPED-ADDRESS next to it, SOFTWARE and FINGERPRINT are tolerated. For
    the requests with change flags, either a normal answer from the same
    address or a 420 error response counts as "answered" (the client reports
    Open); ignoring them gives "Firewall". Without CHANGED-ADDRESS it skips
    test I(2). natkit serve (first version) answers test I with MAPPED-ADDRESS
    only, and the change-flag requests with 420 + UNKNOWN-ATTRIBUTES, as coturn
    does without RFC 5780: the client reports "Open", exit status 1.

coturn as a TURN server (``coturn_turn_server``)
    ``--lt-cred-mech --user U:P --realm R`` (long-term credentials, the user
    given in plain text), ``--allow-loopback-peers`` (else a loopback peer
    gets 403), ``--min-port/--max-port`` for the relay ports, and the same
    loopback/temp-dir flags as above without ``--stun-only --no-auth``.

``turnutils_peer`` (coturn 4.6.1)
    ``turnutils_peer -L 127.0.0.1 -p P``: a UDP echo server on P *and* P+1
    (turnutils_uclient sends its "RTCP" stream to the peer port + 1). It echoes
    every datagram unchanged, so readiness is an echoed datagram.

``turnutils_uclient`` (coturn 4.6.1)
    ``turnutils_uclient -u U -w P -p PORT -e PEER_IP -r PEER_PORT -n N -m M
    -l LEN SERVER_IP``. The realm comes from the 401 (there is no realm
    option; ``-r`` is the peer port). ``-t`` TCP, ``-t -S`` TLS (``-S``
    without ``-t`` would be DTLS, which natkit does not serve); it does not
    verify the certificate unless given ``-E``. ``-c``: one allocation per
    client; without it each client makes two (RTP and RTCP, ``msz=2``), the
    second talking to PEER_PORT + 1. ``-s``: Send/Data indications instead of
    ChannelBind/ChannelData. ``-y``: clients pair up and send to each other's
    relayed addresses (no echo peer involved). Channel numbers are picked at
    random in 0x4000-0x7FFF (RFC 5766 allowed up to 0x7FFF). It never deletes
    its UDP allocations (they expire), so a server under test is started with
    no per-user quota. The summary is parsed by
    :func:`peers.uclient_summary`; a run takes 2-7 s whatever ``-n`` is.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .peers import (
    TURN_PASSWORD,
    TURN_REALM,
    TURN_USER,
    Endpoint,
    Listener,
    ServerProcess,
    coturn_argv,
    coturn_long_term,
    free_port,
    free_udp_port_pair,
    has_ipv6_loopback,
    relay_port_window,
    require_binary,
    running_server,
)


@pytest.fixture(scope="session")
def natkit_argv() -> list[str]:
    """How to run the natkit CLI: the console script of this venv, if installed."""
    script = Path(sys.executable).with_name("natkit")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    if importlib.util.find_spec("natkit.cli") is not None:
        return [sys.executable, "-c", "from natkit.cli import main; main()"]
    pytest.skip("natkit CLI not installed; run pip install -e . in the venv")


def _natkit_serve(
    natkit_argv: list[str],
    workdir: Path,
    ip: str,
    *,
    tls: bool,
    extra: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """``natkit serve`` on ``ip``: UDP and TCP on one port, TLS on another.

    ``natkit serve --listen udp:IP:P --listen tcp:IP:P --listen tls:IP:Q
    --data-dir WORKDIR/data --log-level debug [EXTRA...]``: the generated TLS
    certificate and key land in ``WORKDIR/data``, the output in
    ``WORKDIR/natkit-serve.out``.
    """
    port = free_port(ip)
    udp, tcp = Endpoint(ip, port), Endpoint(ip, port)
    listen = [f"udp:{udp}", f"tcp:{tcp}"]
    listeners = [Listener(udp, udp=True), Listener(tcp, udp=False)]
    tls_endpoint = None
    if tls:
        tls_endpoint = Endpoint(ip, free_port(ip))
        listen.append(f"tls:{tls_endpoint}")
        listeners.append(Listener(tls_endpoint, udp=False))
    argv = [*natkit_argv, "serve", "--data-dir", str(workdir / "data")]
    argv += ["--log-level", "debug"]
    for item in listen:
        argv += ["--listen", item]
    argv += extra
    # a developer's own NATKIT_* settings must not change the server under test
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATKIT_")}
    with running_server(
        "natkit-serve",
        argv,
        workdir=workdir,
        listeners=listeners,
        env=env,
        tls_endpoint=tls_endpoint,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def natkit_server(
    natkit_argv: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """``natkit serve`` on 127.0.0.1 (UDP+TCP on one port, TLS on another)."""
    workdir = tmp_path_factory.mktemp("natkit-serve")
    yield from _natkit_serve(natkit_argv, workdir, "127.0.0.1", tls=True)


@pytest.fixture(scope="module")
def natkit_server_v6(
    natkit_argv: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """``natkit serve`` on [::1]; skips where the machine has no IPv6 loopback."""
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    workdir = tmp_path_factory.mktemp("natkit-serve-v6")
    yield from _natkit_serve(natkit_argv, workdir, "::1", tls=True)


def _natkit_turn_flags(*, allow_loopback: bool) -> list[str]:
    """TURN settings for ``natkit serve``: the interop user, relays on
    127.0.0.1, no per-user quota (turnutils_uclient leaves its UDP
    allocations to expire), and loopback peers allowed or not."""
    low, high = relay_port_window()
    flags = ["--user", f"{TURN_USER}:{TURN_PASSWORD}", "--realm", TURN_REALM]
    flags += ["--relay-ip", "127.0.0.1", "--relay-ports", f"{low}-{high}"]
    flags += ["--user-quota", "0"]
    if allow_loopback:
        flags += ["--allow-peer", "127.0.0.1/32"]
    return flags


@pytest.fixture(scope="module")
def natkit_turn_server(
    natkit_argv: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """``natkit serve`` as a TURN server on 127.0.0.1 (UDP+TCP, TLS on another
    port) with ``--allow-peer 127.0.0.1/32``, so loopback echo peers work."""
    workdir = tmp_path_factory.mktemp("natkit-turn")
    flags = _natkit_turn_flags(allow_loopback=True)
    yield from _natkit_serve(natkit_argv, workdir, "127.0.0.1", tls=True, extra=flags)


@pytest.fixture(scope="module")
def natkit_turn_server_strict(
    natkit_argv: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """``natkit serve`` as a TURN server with the default peer policy: loopback
    peers are denied, except the relayed addresses of its own allocations."""
    workdir = tmp_path_factory.mktemp("natkit-turn-strict")
    flags = _natkit_turn_flags(allow_loopback=False)
    yield from _natkit_serve(natkit_argv, workdir, "127.0.0.1", tls=True, extra=flags)


@pytest.fixture(scope="module")
def turnutils_echo_peer(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """coturn's ``turnutils_peer``: a UDP echo peer on 127.0.0.1:P and P+1."""
    binary = require_binary("turnutils_peer", "coturn")
    workdir = tmp_path_factory.mktemp("turnutils-peer")
    endpoint = Endpoint("127.0.0.1", free_udp_port_pair("127.0.0.1"))
    second = Endpoint(endpoint.ip, endpoint.port + 1)
    argv = [binary, "-L", endpoint.ip, "-p", str(endpoint.port)]
    with running_server(
        "turnutils_peer",
        argv,
        workdir=workdir,
        listeners=[
            Listener(endpoint, udp=True, echo=True),
            Listener(second, udp=True, echo=True),
        ],
    ) as peer:
        yield peer


@pytest.fixture(scope="module")
def coturn_turn_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """coturn's ``turnserver`` as a TURN server on 127.0.0.1 (UDP+TCP):
    long-term credentials for the interop user, loopback peers allowed."""
    binary = require_binary("turnserver", "coturn")
    workdir = tmp_path_factory.mktemp("coturn-turn")
    endpoint = Endpoint("127.0.0.1", free_port("127.0.0.1"))
    options = coturn_long_term(
        TURN_USER, TURN_PASSWORD, TURN_REALM, relay_port_window()
    )
    argv = coturn_argv(binary, endpoint, workdir, "-v", "--no-rfc5780", *options)
    with running_server(
        "turnserver",
        argv,
        workdir=workdir,
        listeners=[Listener(endpoint, udp=True), Listener(endpoint, udp=False)],
    ) as server:
        yield server


@pytest.fixture(scope="module")
def coturn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """coturn's ``turnserver`` as a plain STUN server on 127.0.0.1 (UDP+TCP)."""
    binary = require_binary("turnserver", "coturn")
    workdir = tmp_path_factory.mktemp("coturn")
    endpoint = Endpoint("127.0.0.1", free_port("127.0.0.1"))
    argv = coturn_argv(
        binary, endpoint, workdir, "-v", "--stun-only", "--no-auth", "--no-rfc5780"
    )
    with running_server(
        "turnserver",
        argv,
        workdir=workdir,
        listeners=[Listener(endpoint, udp=True), Listener(endpoint, udp=False)],
    ) as server:
        yield server
