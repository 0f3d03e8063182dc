"""Network namespace primitives for the NAT lab.

Everything here shells out to iproute2 (``ip``), ``nft``, ``sysctl`` and ``tc``,
run inside a namespace with ``ip netns exec``. Nothing touches the host's own
network configuration: links are created directly inside the lab's namespaces
(``ip -n NS link add ... peer name ... netns OTHER``), so their names never
appear in the host namespace and deleting a namespace deletes its links.

The module also holds the NFQUEUE delayer, a tiny netlink program that holds
each queued packet for a fixed time before accepting it. It stands in for
``tc qdisc ... netem delay`` on kernels built without ``sch_netem``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from natkit.stun.errors import NatkitError

logger = logging.getLogger(__name__)

#: Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
IFNAME_MAX = 15

#: Namespace names must be short, portable file names (they live in /run/netns).
_NETNS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")

#: Seconds any single lab command may take before it is called hung.
COMMAND_TIMEOUT = 20.0


class LabError(NatkitError):
    """A lab set-up or tear-down step failed; the message says which and why."""


def check_netns_name(name: str) -> str:
    """Return ``name`` if it is a usable namespace name, else raise LabError."""
    if not _NETNS_NAME.match(name):
        raise LabError(f"bad network namespace name {name!r}")
    return name


def check_ifname(name: str) -> str:
    """Return ``name`` if it is a valid interface name (max 15 bytes)."""
    if not name or len(name.encode()) > IFNAME_MAX or "/" in name or " " in name:
        raise LabError(f"bad interface name {name!r} (1-{IFNAME_MAX} bytes)")
    return name


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input_text: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run one administrative command on the host, capturing its output.

    A non-zero exit raises LabError with the command and its stderr when
    ``check`` is true.
    """
    logger.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"command timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit status {proc.returncode}"
        raise LabError(f"{' '.join(argv)}: {reason}")
    return proc


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """Return ``argv`` wrapped so that it runs inside namespace ``netns``."""
    return ["ip", "netns", "exec", check_netns_name(netns), *argv]


def ns_run(
    netns: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    input_text: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run an administrative command inside ``netns`` (see :func:`run`)."""
    return run(
        in_netns(netns, argv), check=check, input_text=input_text, timeout=timeout
    )


def list_netns() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    proc = run(["ip", "netns", "list"])
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def add_netns(name: str) -> None:
    """Create namespace ``name`` with its loopback up and IPv6 switched off.

    IPv6 is disabled so that router solicitations and DAD do not add noise to
    the lab's IPv4 NAT traffic.
    """
    run(["ip", "netns", "add", check_netns_name(name)])
    ns_run(name, ["ip", "link", "set", "lo", "up"])
    for key in ("all", "default"):
        set_sysctl(name, f"net.ipv6.conf.{key}.disable_ipv6", "1", check=False)


def netns_pids(name: str) -> list[int]:
    """PIDs of the processes that run inside namespace ``name``."""
    proc = run(["ip", "netns", "pids", name], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def kill_netns_processes(
    name: str, *, matching: str | None = None, grace: float = 1.0
) -> None:
    """Stop the processes inside ``name``: SIGTERM, then SIGKILL after ``grace``.

    With ``matching``, only those whose command line contains that text.
    """
    pids = netns_pids(name)
    if matching is not None:
        pids = [pid for pid in pids if matching in _cmdline(pid)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        if pids:
            time.sleep(0.02)
    for pid in pids:
        _signal(pid, signal.SIGKILL)


def delete_netns(name: str) -> None:
    """Stop the processes inside ``name`` and delete it (missing is fine)."""
    if name not in list_netns():
        return
    kill_netns_processes(name)
    run(["ip", "netns", "del", name])


def add_veth(netns: str, name: str, peer_netns: str, peer_name: str) -> None:
    """Create a veth pair with one end in ``netns`` and the other in ``peer_netns``.

    The pair is created inside ``netns`` itself, so neither name ever exists in
    the host namespace and two labs may use the same interface names.
    """
    check_ifname(name)
    check_ifname(peer_name)
    argv = ["ip", "-n", netns, "link", "add", "name", name, "type", "veth"]
    run([*argv, "peer", "name", peer_name, "netns", check_netns_name(peer_netns)])


def add_bridge(netns: str, name: str) -> None:
    """Create a bridge ``name`` inside ``netns`` and bring it up."""
    argv = ["ip", "-n", netns, "link", "add", "name", check_ifname(name)]
    run([*argv, "type", "bridge"])
    link_up(netns, name)


def enslave(netns: str, name: str, bridge: str) -> None:
    """Attach interface ``name`` to ``bridge`` (both inside ``netns``)."""
    run(["ip", "-n", netns, "link", "set", "dev", name, "master", bridge])


def link_up(netns: str, name: str) -> None:
    """Bring interface ``name`` inside ``netns`` up."""
    run(["ip", "-n", netns, "link", "set", "dev", name, "up"])


def add_address(netns: str, name: str, cidr: str) -> None:
    """Add IPv4 address ``cidr`` (``a.b.c.d/len``) to interface ``name``."""
    run(["ip", "-n", netns, "addr", "add", cidr, "dev", name])


def add_route(netns: str, dest: str, via: str) -> None:
    """Add a route to ``dest`` (``default`` or a CIDR) via gateway ``via``."""
    run(["ip", "-n", netns, "route", "add", dest, "via", via])


def set_sysctl(netns: str, key: str, value: str, *, check: bool = True) -> None:
    """Set sysctl ``key`` inside ``netns`` (``sysctl -w`` via ``ip netns exec``)."""
    ns_run(netns, ["sysctl", "-q", "-w", f"{key}={value}"], check=check)


def get_sysctl(netns: str, key: str) -> str:
    """Read sysctl ``key`` inside ``netns``."""
    return ns_run(netns, ["sysctl", "-n", key]).stdout.strip()


def load_nft(netns: str, ruleset: str) -> None:
    """Load an nftables ruleset atomically inside ``netns`` (``nft -f -``)."""
    ns_run(netns, ["nft", "-f", "-"], input_text=ruleset)


def host_ipv4_networks() -> list[str]:
    """The host namespace's IPv4 interface addresses as CIDRs (``ip -4 addr``)."""
    proc = run(["ip", "-o", "-4", "addr", "show"])
    cidrs: list[str] = []
    for line in proc.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            cidrs.append(fields[fields.index("inet") + 1])
    return cidrs


_ROUTE_TYPES = frozenset(
    {"unicast", "local", "broadcast", "multicast", "anycast", "blackhole"}
    | {"unreachable", "prohibit", "throw", "nat"}
)


def host_ipv4_routes() -> list[str]:
    """Destinations of the host namespace's IPv4 routes (``ip -4 route``)."""
    proc = run(["ip", "-4", "route", "show", "table", "all"])
    dests: list[str] = []
    for line in proc.stdout.splitlines():
        fields = line.split()
        if not fields:
            continue
        typed = fields[0] in _ROUTE_TYPES and len(fields) > 1
        dest = fields[1] if typed else fields[0]
        if dest[0].isdigit():
            dests.append(dest)
    return dests


def popen_in(netns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` inside ``netns`` and return its Popen (``ip netns exec``)."""
    return subprocess.Popen(in_netns(netns, argv), **kwargs)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists."""
    return pid > 0 and _alive(pid)


# --- the NFQUEUE delayer ----------------------------------------------------
#
# Netlink constants from linux/netfilter/nfnetlink_queue.h and linux/netlink.h.

NETLINK_NETFILTER = 12
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_PACKET = 0
_NFQNL_MSG_VERDICT = 1
_NFQNL_MSG_CONFIG = 2
_NFQA_PACKET_HDR = 1
_NFQA_VERDICT_HDR = 2
_NFQA_CFG_CMD = 1
_NFQA_CFG_PARAMS = 2
_NFQA_CFG_QUEUE_MAXLEN = 3
_NFQNL_CFG_CMD_BIND = 1
_NFQNL_COPY_META = 1
_NF_ACCEPT = 1
_NLM_F_REQUEST = 1
_NLM_F_ACK = 4
_NLMSG_ERROR = 2
_NLMSG_HDR = struct.Struct("=IHHII")
_NFGEN_HDR = struct.Struct("!BBH")
_ATTR_HDR = struct.Struct("=HH")


def _nl_attr(attr_type: int, payload: bytes) -> bytes:
    raw = _ATTR_HDR.pack(_ATTR_HDR.size + len(payload), attr_type) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _nfq_message(msg_type: int, queue: int, attrs: bytes, seq: int) -> bytes:
    body = _NFGEN_HDR.pack(socket.AF_UNSPEC, 0, queue) + attrs
    kind = (_NFNL_SUBSYS_QUEUE << 8) | msg_type
    flags = _NLM_F_REQUEST | (_NLM_F_ACK if msg_type == _NFQNL_MSG_CONFIG else 0)
    return _NLMSG_HDR.pack(_NLMSG_HDR.size + len(body), kind, flags, seq, 0) + body


def _packet_ids(data: bytes) -> list[int]:
    """Packet ids of the NFQNL_MSG_PACKET messages in one netlink read.

    Netlink error messages carrying a non-zero errno raise LabError (these are
    answers to our own config requests).
    """
    ids: list[int] = []
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size:
            break
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + _NLMSG_HDR.size)
            if code != 0:
                raise LabError(f"nfqueue netlink error: {os.strerror(-code)}")
        elif kind == (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_PACKET:
            pos = offset + _NLMSG_HDR.size + _NFGEN_HDR.size
            end = offset + length
            while pos + _ATTR_HDR.size <= end:
                alen, atype = _ATTR_HDR.unpack_from(data, pos)
                if alen < _ATTR_HDR.size:
                    break
                if atype & 0x3FFF == _NFQA_PACKET_HDR:
                    (packet_id,) = struct.unpack_from("!I", data, pos + 4)
                    ids.append(packet_id)
                    break
                pos += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return ids


def _bind_queue(queue: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    bind = struct.pack("!BBH", _NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)
    params = struct.pack("!IB", 0, _NFQNL_COPY_META)
    attrs = (
        _nl_attr(_NFQA_CFG_CMD, bind)
        + _nl_attr(_NFQA_CFG_PARAMS, params)
        + _nl_attr(_NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 4096))
    )
    sock.send(_nfq_message(_NFQNL_MSG_CONFIG, queue, attrs, 1))
    _packet_ids(sock.recv(65536))
    return sock


def run_delayer(queue: int, delay: float, *, ready: IO[str] | None = None) -> None:
    """Hold every packet of NFQUEUE ``queue`` for ``delay`` seconds, then accept.

    Runs until SIGTERM. With a constant delay the release order is the arrival
    order, so a FIFO is enough. Prints ``ready`` to ``ready`` once bound.
    """
    sock = _bind_queue(queue)
    signal.signal(signal.SIGTERM, lambda _sig, _frm: sys.exit(0))
    pending: deque[tuple[float, int]] = deque()
    seq = 2
    if ready is not None:
        ready.write("ready\n")
        ready.flush()
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            try:
                data = sock.recv(1 << 17)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                logger.warning("nfqueue %s: receive buffer overrun", queue)
                continue
            due = time.monotonic() + delay
            pending.extend((due, packet_id) for packet_id in _packet_ids(data))

        # release every packet whose time has come
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, packet_id = pending.popleft()
            verdict = struct.pack("!II", _NF_ACCEPT, packet_id)
            attrs = _nl_attr(_NFQA_VERDICT_HDR, verdict)
            sock.send(_nfq_message(_NFQNL_MSG_VERDICT, queue, attrs, seq))
            seq += 1


def delayer_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the delayer process: ``QUEUE DELAY_SECONDS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        raise SystemExit("usage: delayer QUEUE DELAY_SECONDS")
    run_delayer(int(args[0]), float(args[1]), ready=sys.stdout)
