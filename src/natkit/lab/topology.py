"""The NAT lab: an "internet" and NATed hosts in Linux network namespaces.

    with Lab([NatType.SYMMETRIC, NatType.FULL_CONE]) as lab:
        host = lab.hosts[0]
        lab.exec(host, ["python3", "-c", "..."])

Layout for a lab with prefix ``P`` and NATs 1..n::

    P inet   bridge br0: 203.0.113.1 (gateway), 203.0.113.10 and .11 (servers)
      |  veth rN (in P inet, on br0) <-> wan (in P rN)
    P rN     router: wan 203.0.113.(100+N)/24, lan 10.X.0.1/24, nft table natkit
      |  veth lan (in P rN) <-> eth0 (in P hN)
    P hN     host: eth0 10.X.0.2/24, default via the router

An ``open`` NAT routes a public /29 instead (lan 198.51.100.(8N+1), host
198.51.100.(8N+2)), which the internet namespace routes to the router. The
lab's ranges are checked against the host namespace's addresses and routes at
start; a collision refuses to start. Nothing is added to the host namespace:
all links are created inside the lab's namespaces and go away with them.

A state file (``/run/natkit/lab/<prefix>.json``, or ``$NATKIT_LAB_STATE_DIR``)
lists the namespaces before any is created, so another process can remove the
lab (:meth:`Lab.down`) and crashed runs can be found (:meth:`Lab.cleanup_stale`).
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from natkit.lab import nat_rules, netns
from natkit.lab.nat_rules import (
    DELAYER_MARK,
    NatSpec,
    NatType,
    RouterPlan,
    ShapingMethod,
)
from natkit.lab.netns import LabError

logger = logging.getLogger(__name__)

#: The lab's "internet" and its server addresses (RFC 5737 documentation ranges).
INTERNET_NET = ipaddress.IPv4Network("203.0.113.0/24")
OPEN_NET = ipaddress.IPv4Network("198.51.100.0/24")
GATEWAY_IP = "203.0.113.1"
SERVER_IPS = ("203.0.113.10", "203.0.113.11")
MAX_NATS = 30

BRIDGE = "br0"
WAN_IF = "wan"
LAN_IF = "lan"
HOST_IF = "eth0"

STATE_VERSION = 1
DEFAULT_STATE_DIR = Path("/run/natkit/lab")
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
_DEFAULT_PREFIX = re.compile(r"^nk-(\d+)-")


@dataclass(frozen=True, slots=True, kw_only=True)
class LabHost:
    """One NATed host and its router."""

    index: int
    name: str
    nat: NatSpec
    netns: str
    router_netns: str
    ip: str
    gateway: str
    router_wan_ip: str
    lan_cidr: str

    @property
    def public_ip(self) -> str:
        """The address servers see for this host (its own for an open NAT)."""
        return self.router_wan_ip if self.nat.type.translates else self.ip


@dataclass(frozen=True, slots=True, kw_only=True)
class LabState:
    """What the state file records about a lab."""

    prefix: str
    pid: int
    detached: bool
    created: float
    internet: str
    namespaces: tuple[str, ...]
    hosts: tuple[LabHost, ...]

    def to_json(self) -> str:
        """The state as JSON text."""
        data = asdict(self)
        for host in data["hosts"]:
            host["nat"]["type"] = str(host["nat"]["type"])
        return json.dumps({"version": STATE_VERSION, **data}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LabState:
        """Parse a state file; LabError if it is not one."""
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                raise LabError(f"unsupported lab state version {data.get('version')}")
            hosts = tuple(
                LabHost(
                    **{
                        **h,
                        "nat": NatSpec(
                            **{**h["nat"], "type": NatType(h["nat"]["type"])}
                        ),
                    }
                )
                for h in data["hosts"]
            )
            return cls(
                prefix=str(data["prefix"]),
                pid=int(data["pid"]),
                detached=bool(data["detached"]),
                created=float(data["created"]),
                internet=str(data["internet"]),
                namespaces=tuple(str(n) for n in data["namespaces"]),
                hosts=hosts,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LabError(f"bad lab state file: {exc}") from exc


def state_dir() -> Path:
    """Directory of the lab state files (``$NATKIT_LAB_STATE_DIR`` overrides)."""
    return Path(os.environ.get("NATKIT_LAB_STATE_DIR", str(DEFAULT_STATE_DIR)))


def default_prefix() -> str:
    """``nk-<pid>-``: unique per process, so stale labs can be told apart."""
    return f"nk-{os.getpid()}-"


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if usable as a lab name prefix, else raise LabError."""
    if not _PREFIX.match(prefix):
        raise LabError(
            f"bad lab prefix {prefix!r}: lowercase letters, digits and '-', "
            "starting with a letter, at most 24 characters"
        )
    return prefix


def plan_hosts(
    prefix: str, specs: Sequence[NatSpec], taken: Sequence[str] = ()
) -> tuple[LabHost, ...]:
    """Addresses and namespaces for each NAT; ``taken`` are host CIDRs to avoid.

    Public ranges that collide with the host refuse; the private 10.X.0.0/24
    of each NAT skips any X that collides.
    """
    if not 1 <= len(specs) <= MAX_NATS:
        raise LabError(f"a lab has 1..{MAX_NATS} NATs, not {len(specs)}")
    busy = [ipaddress.IPv4Network(c, strict=False) for c in taken]
    for public in (INTERNET_NET, OPEN_NET):
        for net in busy:
            if net.prefixlen > 0 and net.overlaps(public):
                raise LabError(
                    f"the host already uses {net}, which overlaps the lab's {public}; "
                    "refusing to start"
                )
    hosts: list[LabHost] = []
    used: set[int] = set()
    for index, spec in enumerate(specs, start=1):
        if spec.type.translates:
            lan = _private_lan(index, busy, used)
        else:
            lan = ipaddress.IPv4Network(f"198.51.100.{8 * index}/29")
        hosts.append(
            LabHost(
                index=index,
                name=f"h{index}",
                nat=spec,
                netns=f"{prefix}h{index}",
                router_netns=f"{prefix}r{index}",
                ip=str(lan.network_address + 2),
                gateway=str(lan.network_address + 1),
                router_wan_ip=str(INTERNET_NET.network_address + 100 + index),
                lan_cidr=str(lan),
            )
        )
    return tuple(hosts)


def _private_lan(
    index: int, busy: Sequence[ipaddress.IPv4Network], used: set[int]
) -> ipaddress.IPv4Network:
    """10.<index>.0.0/24, or the next free 10.X.0.0/24 if the host uses it."""
    for x in (index, *range(index + 1, 255), *range(1, index)):
        lan = ipaddress.IPv4Network(f"10.{x}.0.0/24")
        if x in used or any(n.prefixlen > 0 and n.overlaps(lan) for n in busy):
            continue
        used.add(x)
        return lan
    raise LabError("no free 10.X.0.0/24 subnet left for the lab")


class Lab:
    """A NAT lab in network namespaces; a context manager that always cleans up.

    ``nats`` lists the NATs, each a NatType, a NatSpec or a type name. The lab
    is built by :meth:`up` (or entering the ``with`` block) and removed by
    :meth:`teardown` (or leaving it, also on an exception, KeyboardInterrupt or
    SIGTERM). A partly built lab is removed before the error propagates.
    """

    def __init__(
        self,
        nats: Sequence[NatType | NatSpec | str],
        *,
        name_prefix: str | None = None,
    ) -> None:
        self.prefix = check_prefix(name_prefix or default_prefix())
        self.specs = tuple(NatSpec.of(n) for n in nats)
        self.internet = f"{self.prefix}inet"
        self.server_ips: tuple[str, str] = SERVER_IPS
        self.gateway_ip = GATEWAY_IP
        self.hosts: tuple[LabHost, ...] = ()
        self.shaping: dict[int, ShapingMethod] = {}
        self._namespaces: tuple[str, ...] = ()
        self._procs: list[subprocess.Popen[Any]] = []
        self._detached = False
        self._is_up = False
        self._old_sigterm: Any = None

    # --- life cycle ----------------------------------------------------------

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._detached:
            self._restore_sigterm()
            return
        try:
            self.teardown()
        except LabError as err:
            if exc is None:
                raise
            logger.error("lab %s: teardown after an error failed: %s", self.prefix, err)

    def up(self) -> Lab:
        """Build the lab; on any failure remove what was built and re-raise."""
        if self._is_up:
            raise LabError(f"lab {self.prefix} is already up")
        self._install_sigterm()
        try:
            self._check_tools()
            self.hosts = plan_hosts(
                self.prefix,
                self.specs,
                [*netns.host_ipv4_networks(), *netns.host_ipv4_routes()],
            )
            self._namespaces = (
                self.internet,
                *(h.router_netns for h in self.hosts),
                *(h.netns for h in self.hosts),
            )
            self._claim()
        except BaseException:
            self._restore_sigterm()
            raise

        # from here on the namespaces are ours: any failure removes them again
        self._is_up = True
        _LIVE.add(self)
        try:
            self._build()
        except BaseException:
            logger.debug("lab %s: build failed, removing what was built", self.prefix)
            self.teardown(quiet=True)
            raise
        logger.info("lab %s up: %s", self.prefix, ", ".join(s.type for s in self.specs))
        return self

    def detach(self) -> None:
        """Keep the lab after this process ends (``natkit lab up``).

        The state file is marked detached, so :meth:`cleanup_stale` leaves it;
        remove it with :meth:`down`. Processes started with :meth:`popen` keep
        running inside the namespaces.
        """
        self._require_up()
        self._detached = True
        _LIVE.discard(self)
        self._write_state()

    def teardown(self, *, quiet: bool = False) -> None:
        """Stop the lab's processes and delete its namespaces (idempotent).

        Raises LabError if a namespace could not be removed, unless ``quiet``.
        """
        if not self._is_up:
            return
        old_handlers = _ignore_signals()
        try:
            for proc in self._procs:
                _stop(proc)
            self._procs.clear()
            problems = _remove_namespaces(self._namespaces)
            if not problems:
                _state_path(self.prefix).unlink(missing_ok=True)
        finally:
            _restore_signals(old_handlers)
            self._restore_sigterm()
            self._is_up = False
            _LIVE.discard(self)
        if problems:
            message = f"lab {self.prefix}: teardown incomplete: {problems[0]}"
            if not quiet:
                raise LabError(message)
            logger.warning("%s", message)
            return
        logger.info("lab %s down", self.prefix)

    @property
    def is_up(self) -> bool:
        """True between :meth:`up` and :meth:`teardown`."""
        return self._is_up

    @property
    def namespaces(self) -> tuple[str, ...]:
        """All namespaces of the lab: internet first, then routers, then hosts."""
        return self._namespaces

    # --- running things inside ----------------------------------------------

    def netns_of(self, target: LabHost | str) -> str:
        """Namespace of ``target``: a LabHost (its host), "inet", "hN", "rN" or a
        full namespace name of this lab."""
        if isinstance(target, LabHost):
            return target.netns
        if target in ("inet", "internet"):
            return self.internet
        name = target if target.startswith(self.prefix) else f"{self.prefix}{target}"
        if name not in self._namespaces:
            raise LabError(f"no namespace {target!r} in lab {self.prefix}")
        return name

    def host(self, index: int) -> LabHost:
        """The host behind NAT number ``index`` (1-based, as in "h1")."""
        for host in self.hosts:
            if host.index == index:
                return host
        raise LabError(f"no host {index} in lab {self.prefix}")

    def exec(
        self,
        target: LabHost | str,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float | None = 30.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``target``'s namespace and wait for it.

        Output is captured as text. A timeout raises subprocess.TimeoutExpired.
        """
        self._require_up()
        return subprocess.run(
            netns.in_netns(self.netns_of(target), argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=env,
        )

    def popen(
        self, target: LabHost | str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``target``'s namespace (Popen keyword arguments
        pass through); teardown stops it."""
        self._require_up()
        proc = netns.popen_in(self.netns_of(target), argv, **kwargs)
        self._procs.append(proc)
        return proc

    @staticmethod
    def python_env() -> dict[str, str]:
        """Environment for Python children that must import natkit."""
        return nat_rules.python_env()

    # --- changing conditions -------------------------------------------------

    def set_shaping(
        self, host: LabHost, *, delay_ms: int = 0, loss_percent: float = 0.0
    ) -> ShapingMethod:
        """Set the delay and loss of ``host``'s packets towards the internet.

        Returns how it is done (netem, or nftables and the NFQUEUE delayer).
        """
        self._require_up()
        NatSpec(type=host.nat.type, delay_ms=delay_ms, loss_percent=loss_percent)
        netns.kill_netns_processes(host.router_netns, matching=DELAYER_MARK)
        method, proc = nat_rules.apply_shaping(
            host.router_netns,
            wan_if=WAN_IF,
            lan_if=LAN_IF,
            delay_ms=delay_ms,
            loss_percent=loss_percent,
        )
        if proc is not None:
            self._procs.append(proc)
        self.shaping[host.index] = method
        return method

    def set_udp_timeout(self, host: LabHost, seconds: int | None) -> None:
        """Set the UDP binding timeout of ``host``'s router (None: kernel default).

        Existing conntrack entries keep their current deadline until their next
        packet; flush them with ``conntrack -F`` in the router for a clean start.
        """
        self._require_up()
        NatSpec(type=host.nat.type, udp_timeout=seconds)
        nat_rules.set_udp_timeout(host.router_netns, seconds)

    # --- other processes' labs -----------------------------------------------

    @classmethod
    def attach(cls, prefix: str) -> Lab:
        """A handle on a running lab made by another process (from its state file).

        The handle can :meth:`exec` and :meth:`teardown`; leaving a ``with``
        block on it does not remove the lab unless :meth:`teardown` is called.
        """
        state = read_state(prefix)
        lab = cls([h.nat for h in state.hosts], name_prefix=state.prefix)
        lab.hosts = state.hosts
        lab._namespaces = state.namespaces
        lab._is_up = True
        lab._detached = True
        return lab

    @staticmethod
    def down(prefix: str) -> bool:
        """Remove the lab with ``prefix`` (``natkit lab down``); False if none."""
        path = _state_path(check_prefix(prefix))
        if not path.exists():
            return False
        state = read_state(prefix)
        problems = _remove_namespaces(state.namespaces)
        if problems:
            raise LabError(f"lab {prefix}: teardown incomplete: {problems[0]}")
        path.unlink(missing_ok=True)
        return True

    @staticmethod
    def list_labs() -> list[LabState]:
        """State of every lab that has a state file."""
        labs: list[LabState] = []
        for path in sorted(state_dir().glob("*.json")):
            try:
                labs.append(LabState.from_json(path.read_text()))
            except (OSError, LabError) as exc:
                logger.warning("skipping %s: %s", path, exc)
        return labs

    @staticmethod
    def cleanup_stale() -> list[str]:
        """Remove labs whose owner process is gone; return the namespaces removed.

        A lab is stale when its state file is not detached and its pid is dead,
        or when a namespace named ``nk-<pid>-...`` has no state file and its pid
        is dead. Detached labs stay until :meth:`down`.
        """
        removed: list[str] = []
        claimed: set[str] = set()
        for state in Lab.list_labs():
            claimed.update(state.namespaces)
            if state.detached or netns.pid_alive(state.pid):
                continue
            existing = set(netns.list_netns())
            removed += [n for n in state.namespaces if n in existing]
            if not _remove_namespaces(state.namespaces):
                _state_path(state.prefix).unlink(missing_ok=True)
        for name in netns.list_netns():
            match = _DEFAULT_PREFIX.match(name)
            if name in claimed or match is None or netns.pid_alive(int(match[1])):
                continue
            if not _remove_namespaces([name]):
                removed.append(name)
        return removed

    # --- building ------------------------------------------------------------

    def _check_tools(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the NAT lab needs root (network namespaces, nftables)")
        for tool in ("ip", "nft", "sysctl", "iptables"):
            if not any(Path(d, tool).exists() for d in _PATH_DIRS):
                raise LabError(f"the NAT lab needs '{tool}' (not found in PATH)")

    def _claim(self) -> None:
        """Refuse a prefix in use, then record the planned namespaces."""
        path = _state_path(self.prefix)
        if path.exists():
            other = read_state(self.prefix)
            if other.detached or netns.pid_alive(other.pid):
                raise LabError(
                    f"lab prefix {self.prefix!r} is in use (pid {other.pid})"
                )
        existing = set(netns.list_netns())
        clash = [n for n in self._namespaces if n in existing]
        if clash:
            raise LabError(f"namespace {clash[0]} already exists; is a lab running?")
        self._write_state()

    def _write_state(self) -> None:
        state = LabState(
            prefix=self.prefix,
            pid=os.getpid(),
            detached=self._detached,
            created=time.time(),
            internet=self.internet,
            namespaces=self._namespaces,
            hosts=self.hosts,
        )
        directory = state_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        tmp = directory / f".{self.prefix}.json.tmp"
        tmp.write_text(state.to_json())
        tmp.replace(_state_path(self.prefix))

    def _build(self) -> None:
        # the internet: a bridge with the gateway and the two server addresses
        netns.add_netns(self.internet)
        netns.add_bridge(self.internet, BRIDGE)
        for ip in (GATEWAY_IP, *SERVER_IPS):
            netns.add_address(self.internet, BRIDGE, f"{ip}/{INTERNET_NET.prefixlen}")
        netns.set_sysctl(self.internet, "net.ipv4.ip_forward", "1")
        for host in self.hosts:
            self._build_nat(host)

    def _build_nat(self, host: LabHost) -> None:
        router, lan = host.router_netns, ipaddress.IPv4Network(host.lan_cidr)
        netns.add_netns(router)
        netns.add_netns(host.netns)

        # WAN: veth rN on the internet bridge <-> wan in the router
        uplink = f"r{host.index}"
        netns.add_veth(self.internet, uplink, router, WAN_IF)
        netns.enslave(self.internet, uplink, BRIDGE)
        netns.link_up(self.internet, uplink)
        netns.add_address(
            router, WAN_IF, f"{host.router_wan_ip}/{INTERNET_NET.prefixlen}"
        )
        netns.link_up(router, WAN_IF)
        netns.add_route(router, "default", GATEWAY_IP)

        # LAN: lan in the router <-> eth0 in the host
        netns.add_veth(router, LAN_IF, host.netns, HOST_IF)
        netns.add_address(router, LAN_IF, f"{host.gateway}/{lan.prefixlen}")
        netns.add_address(host.netns, HOST_IF, f"{host.ip}/{lan.prefixlen}")
        netns.link_up(router, LAN_IF)
        netns.link_up(host.netns, HOST_IF)
        netns.add_route(host.netns, "default", host.gateway)
        if not host.nat.type.translates:
            netns.add_route(self.internet, host.lan_cidr, host.router_wan_ip)

        # the NAT itself, then the link conditions
        plan = RouterPlan(
            wan_if=WAN_IF,
            lan_if=LAN_IF,
            wan_ip=host.router_wan_ip,
            lan_cidr=host.lan_cidr,
            host_ip=host.ip,
        )
        nat_rules.apply_nat(router, host.nat, plan)
        if host.nat.delay_ms or host.nat.loss_percent:
            self.set_shaping(
                host, delay_ms=host.nat.delay_ms, loss_percent=host.nat.loss_percent
            )

    def _require_up(self) -> None:
        if not self._is_up:
            raise LabError(f"lab {self.prefix} is not up")

    # --- signals -------------------------------------------------------------

    def _install_sigterm(self) -> None:
        """Turn SIGTERM into SystemExit so that ``with`` blocks clean up."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


_PATH_DIRS = tuple(os.environ.get("PATH", "").split(os.pathsep)) + (
    "/usr/sbin",
    "/sbin",
)

#: Labs that are up in this process, removed at interpreter exit if still up.
_LIVE: weakref.WeakSet[Lab] = weakref.WeakSet()


@atexit.register
def _teardown_live_labs() -> None:
    for lab in list(_LIVE):
        try:
            lab.teardown(quiet=True)
        except Exception as exc:  # noqa: BLE001 - last-chance cleanup at exit
            logger.error("lab %s: teardown at exit failed: %s", lab.prefix, exc)


def _sigterm_to_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


_TEARDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore_signals() -> list[Any]:
    """Ignore Ctrl-C and SIGTERM (so teardown runs to the end); old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return []
    return [signal.signal(sig, signal.SIG_IGN) for sig in _TEARDOWN_SIGNALS]


def _restore_signals(old: list[Any]) -> None:
    for sig, handler in zip(_TEARDOWN_SIGNALS, old, strict=False):
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate (then kill) a child and close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=2)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _remove_namespaces(names: Sequence[str]) -> list[str]:
    """Delete the namespaces (hosts first); return one line per failure."""
    problems: list[str] = []
    for name in reversed(names):
        try:
            netns.delete_netns(name)
        except LabError as exc:
            problems.append(str(exc))
    return problems


def _state_path(prefix: str) -> Path:
    return state_dir() / f"{prefix}.json"


def read_state(prefix: str) -> LabState:
    """The state of lab ``prefix``; LabError if there is none."""
    path = _state_path(check_prefix(prefix))
    try:
        return LabState.from_json(path.read_text())
    except FileNotFoundError as exc:
        raise LabError(f"no lab {prefix!r} (no state file {path})") from exc
