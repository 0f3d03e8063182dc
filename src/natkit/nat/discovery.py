"""NAT behaviour discovery (RFC 5780 §4), sans-IO.

:class:`NatProber` runs the tests of RFC 5780 §4 against one STUN server and
reports a :class:`ProbeResult`. It never touches a socket: the driver opens
the local UDP sockets named by :attr:`ProbeConfig.socket_ids`, sends what
:meth:`NatProber.datagrams_to_send` returns, hands every datagram received on
any of those sockets to :meth:`NatProber.handle_response`, and calls
:meth:`NatProber.handle_timeout` at :meth:`NatProber.next_deadline`.

The order of the tests follows RFC 5780 §4.1 (filtering tests are sensitive
to prior state, so they run before the socket has sent anything to the
server's alternate addresses) and §5 (at most ten new transactions a
second):

1. test I from the primary socket to the server (RFC 5780 §4.2): UDP
   connectivity, the mapped address, OTHER-ADDRESS, "open" when the mapped
   address is the local one;
2. filtering tests II and III (RFC 5780 §4.4), together;
3. mapping tests II and III (RFC 5780 §4.3); then plain requests to the
   alternate addresses whose silence a filtering verdict relies on, so that
   a dead alternate address is not mistaken for filtering;
4. without OTHER-ADDRESS: test I against the extra servers, to compare
   mappings (nothing can be said about filtering);
5. one request from each other socket to the server, for the port
   allocation pattern;
6. hairpinning (RFC 5780 §3.4): the second socket sends a Binding request to
   the first socket's mapped address and the prober watches for it on the
   first socket;
7. binding lifetime (RFC 5780 §4.6), only when ``lifetime_max`` is set.

Each test is one :class:`~natkit.stun.transaction.ClientTransaction` with
the short :data:`PROBE_POLICY` timers (about 3 s until a test gives up).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field

from natkit.nat.classify import (
    Behaviour,
    MappingVerdict,
    NatType,
    PortAllocation,
    PortSample,
    ServerMapping,
    classify_filtering,
    classify_mapping,
    classify_nat_type,
    classify_ports,
    mapping_from_servers,
    recommended_keepalive,
)
from natkit.nat.endpoint import Endpoint
from natkit.stun.attributes import (
    Attribute,
    ChangeRequest,
    MappedAddress,
    OtherAddress,
    ResponsePort,
    Software,
    XorMappedAddress,
)
from natkit.stun.constants import MessageClass, Method
from natkit.stun.errors import DecodeError, UsageError
from natkit.stun.message import Message, decode, encode, is_stun, new_transaction_id
from natkit.stun.transaction import (
    ClientTransaction,
    RetransmitPolicy,
    TransactionState,
    Transport,
    message_key,
)

logger = logging.getLogger(__name__)

#: the socket every RFC 5780 §4.3/§4.4 test is sent from (port X of §4.6)
PRIMARY = "primary"
#: the second socket: hairpinning and the §4.6 probes (port Y)
SECONDARY = "secondary"

#: Retransmission timers for probing: sends at 0, 0.15, 0.45, 1.05 and
#: 2.25 s, gives up at 3.0 s (RFC 8489 §6.2.1 timers with a shorter RTO).
PROBE_POLICY = RetransmitPolicy(rto=0.15, rc=5, rm=5)

#: RFC 5780 §5: no more than ten new STUN transactions a second.
DEFAULT_PACING = 0.1

JsonValue = str | float | bool | None | list[str] | list[dict[str, object]]


def port_socket(index: int) -> str:
    """The id of the ``index``-th (from 1) extra socket for port sampling."""
    return f"port-{index}"


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """What to test and how patiently (keyword arguments).

    ``port_samples`` extra sockets each send one request, so that the port
    allocation pattern is judged on enough bindings. ``lifetime_max``
    enables the RFC 5780 §4.6 binding lifetime search, waiting up to that
    many seconds between refresh and check; the search starts at
    ``lifetime_start``, doubles until a binding has expired, then halves the
    interval until it is narrower than ``lifetime_resolution`` seconds or
    10 % of the lifetime. The whole search takes at most about
    ``lifetime_max`` × (2 + log2(lifetime_max / lifetime_resolution)).
    """

    policy: RetransmitPolicy = PROBE_POLICY
    port_samples: int = 3
    hairpinning: bool = True
    lifetime_max: float | None = None
    lifetime_start: float = 10.0
    lifetime_resolution: float = 1.0
    pacing: float = DEFAULT_PACING
    software: str | None = None
    fingerprint: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port_samples <= 16:
            raise UsageError(f"port samples must be 0-16, not {self.port_samples}")
        if self.lifetime_max is not None and self.lifetime_max <= 0:
            raise UsageError(f"lifetime max must be positive, not {self.lifetime_max}")
        if self.lifetime_start <= 0:
            raise UsageError(f"lifetime start must be positive: {self.lifetime_start}")
        if self.lifetime_resolution <= 0:
            raise UsageError(
                f"lifetime resolution must be positive: {self.lifetime_resolution}"
            )
        if self.pacing < 0:
            raise UsageError(f"pacing must not be negative, not {self.pacing}")

    @property
    def socket_ids(self) -> tuple[str, ...]:
        """The local UDP sockets the driver must open, all on one local IP."""
        extra = tuple(port_socket(i) for i in range(1, self.port_samples + 1))
        return (PRIMARY, SECONDARY, *extra)


@dataclass(frozen=True, slots=True)
class ProbeDatagram:
    """Send ``data`` from local socket ``socket`` to ``destination``."""

    socket: str
    destination: Endpoint
    data: bytes


@dataclass(frozen=True, slots=True)
class ProbeStep:
    """How one test went, for a verbose report."""

    name: str
    socket: str
    destination: Endpoint
    outcome: str
    mapped: Endpoint | None
    source: Endpoint | None
    received_on: str | None
    transmissions: int
    rtt: float | None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What RFC 5780 discovery found; ``undetermined`` wherever it could not tell.

    ``binding_lifetime_s`` is the longest idle time the binding was seen to
    survive (a lower bound), or None when not measured. ``notes`` explain
    every undetermined value and anything unusual.
    """

    mapping: Behaviour
    filtering: Behaviour
    nat_type: NatType
    mapped: Endpoint | None
    local: Endpoint
    hairpinning: bool | None
    port_allocation: PortAllocation
    binding_lifetime_s: float | None
    recommended_keepalive_s: float | None
    notes: tuple[str, ...]
    server: Endpoint
    other_address: Endpoint | None = None
    tests: tuple[ProbeStep, ...] = field(default=(), repr=False)

    def to_json(self, *, verbose: bool = False) -> dict[str, JsonValue]:
        """A JSON-ready dict; ``verbose`` adds the list of tests run."""
        out: dict[str, JsonValue] = {
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "nat_type": self.nat_type.value,
            "mapped": str(self.mapped) if self.mapped else None,
            "local": str(self.local),
            "hairpinning": self.hairpinning,
            "port_allocation": self.port_allocation.value,
            "binding_lifetime_s": self.binding_lifetime_s,
            "recommended_keepalive_s": self.recommended_keepalive_s,
            "notes": list(self.notes),
            "server": str(self.server),
            "other_address": str(self.other_address) if self.other_address else None,
        }
        if verbose:
            out["tests"] = [_outcome_json(t) for t in self.tests]
        return out


def _outcome_json(test: ProbeStep) -> dict[str, object]:
    return {
        "name": test.name,
        "socket": test.socket,
        "destination": str(test.destination),
        "outcome": test.outcome,
        "mapped": str(test.mapped) if test.mapped else None,
        "source": str(test.source) if test.source else None,
        "received_on": test.received_on,
        "transmissions": test.transmissions,
        "rtt": test.rtt,
    }


class _Test:
    """One Binding request of the probe and what became of it."""

    __slots__ = (
        "name",
        "socket",
        "destination",
        "transaction",
        "expect_from",
        "hairpin_to",
        "source",
        "received_on",
    )

    def __init__(
        self,
        name: str,
        socket: str,
        destination: Endpoint,
        transaction: ClientTransaction,
        *,
        expect_from: Endpoint | None,
        hairpin_to: str | None,
    ) -> None:
        self.name = name
        self.socket = socket
        self.destination = destination
        self.transaction = transaction
        #: where a CHANGE-REQUEST response must come from
        self.expect_from = expect_from
        #: for the hairpinning test: the socket the request should reach
        self.hairpin_to = hairpin_to
        #: source of the response (or of the hairpinned request) and the
        #: local socket it arrived on
        self.source: Endpoint | None = None
        self.received_on: str | None = None

    @property
    def done(self) -> bool:
        return self.transaction.done

    @property
    def succeeded(self) -> bool:
        return self.transaction.state is TransactionState.SUCCEEDED

    @property
    def timed_out(self) -> bool:
        return self.transaction.state is TransactionState.TIMED_OUT

    @property
    def hairpinned(self) -> bool:
        return self.hairpin_to is not None and self.received_on == self.hairpin_to

    @property
    def mapped(self) -> Endpoint | None:
        """XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS) of a success response."""
        response = self.transaction.response
        if not self.succeeded or response is None:
            return None
        attr = response.get(XorMappedAddress) or response.get(MappedAddress)
        return Endpoint(attr.ip, attr.port) if attr else None

    @property
    def reason(self) -> str:
        """Why the test ended as it did, in words."""
        if self.hairpinned:
            return "request arrived"
        if self.timed_out:
            waited = self.transaction.policy.give_up_after(Transport.UDP)
            return f"no response in {waited:g} s"
        if self.succeeded:
            return "response" if self.mapped else "response without a mapped address"
        return self.transaction.failure_reason or "failed"

    def outcome(self) -> ProbeStep:
        return ProbeStep(
            name=self.name,
            socket=self.socket,
            destination=self.destination,
            outcome=self.reason,
            mapped=self.mapped,
            source=self.source,
            received_on=self.received_on,
            transmissions=self.transaction.transmissions,
            rtt=self.transaction.rtt,
        )


@dataclass(frozen=True, slots=True)
class _Batch:
    """Run these tests together; resume when all have ended."""

    tests: tuple[_Test, ...]


@dataclass(frozen=True, slots=True)
class _Sleep:
    """Resume at ``until`` (RFC 5780 §4.6 waits between refresh and check)."""

    until: float


_Step = _Batch | _Sleep
_Plan = Generator[_Step, None, ProbeResult]


class NatProber:
    """RFC 5780 §4 NAT behaviour discovery against one server, sans-IO.

    ``local`` maps every id of ``config.socket_ids`` to the local address
    of the UDP socket the driver opened for it: a concrete IP (the one that
    routes to the server, not a wildcard) and the port the OS gave. The
    ``server`` and ``extra_servers`` are IP literals; name resolution is
    the driver's job. ``extra_servers`` are used only when the server does
    not support RFC 5780 (no OTHER-ADDRESS), to compare mappings.

    Driver loop::

        prober.start(now)
        while not prober.done:
            for d in prober.datagrams_to_send():
                sockets[d.socket].sendto(d.data, (d.destination.ip, d.destination.port))
            wait for a datagram on any socket, or until prober.next_deadline()
            if a datagram came on socket s from (ip, port):
                prober.handle_response(s, Endpoint(ip, port), data, now)
            else:
                prober.handle_timeout(now)
        result = prober.result
    """

    def __init__(
        self,
        server: Endpoint,
        *,
        local: Mapping[str, Endpoint],
        extra_servers: Sequence[Endpoint] = (),
        config: ProbeConfig | None = None,
    ) -> None:
        self.config = config or ProbeConfig()
        self.server = server
        self.local = dict(local)
        self.extra_servers = tuple(
            dict.fromkeys(s for s in extra_servers if s != server)
        )
        self._check_sockets()

        self.phase = "not started"
        self._gen: _Plan | None = None
        self._step: _Step | None = None
        self._result: ProbeResult | None = None
        self._now = 0.0
        self._last_start: float | None = None
        self._tests: dict[bytes, _Test] = {}
        self._order: list[_Test] = []
        self._outbox: list[ProbeDatagram] = []
        self._notes: list[str] = []
        #: RFC 5780 §4.6 found the binding gone after this many idle seconds
        #: and alive after none
        self._expires_within: float | None = None

    def __repr__(self) -> str:
        return f"<NatProber {self.server} {self.phase}>"

    # --- the driver's interface ----------------------------------------------

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> ProbeResult | None:
        """The findings once :attr:`done`; None before."""
        return self._result

    def start(self, now: float) -> None:
        """Begin with test I; its datagram is then in :meth:`datagrams_to_send`."""
        if self._gen is not None:
            raise UsageError("the probe has already started")
        self._now = now
        self._gen = self._plan()
        self._resume(now)

    def datagrams_to_send(self) -> list[ProbeDatagram]:
        """Everything queued for sending since the last call, in order."""
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` must next be called; None when done."""
        step = self._step
        if self._result is not None or step is None:
            return None
        if isinstance(step, _Sleep):
            return step.until
        deadlines = [
            d for t in step.tests if (d := t.transaction.next_deadline()) is not None
        ]
        return min(deadlines, default=None)

    def handle_timeout(self, now: float) -> None:
        """Fire due retransmission timers and move on when a step has ended."""
        self._require_started()
        self._now = now
        if isinstance(self._step, _Batch):
            for test in self._step.tests:
                self._fire(test, now)
        self._resume(now)

    def handle_response(
        self, socket: str, source: Endpoint, data: bytes, now: float
    ) -> None:
        """Take any datagram received on local socket ``socket`` from ``source``.

        Responses settle their test wherever they arrive (RFC 5780 §4.6 sends
        from one socket and receives on another). A Binding request is how a
        hairpinned probe shows up (RFC 5780 §3.4). Anything else, and what
        does not decode, is ignored.
        """
        self._require_started()
        if socket not in self.local:
            raise UsageError(f"unknown socket {socket!r}")
        self._now = now
        if self._result is not None or not is_stun(data):
            return
        try:
            msg = decode(data)
        except DecodeError as exc:
            logger.debug(
                "%s: ignoring undecodable datagram from %s: %s", socket, source, exc
            )
            return
        test = self._tests.get(message_key(msg))
        if test is None:
            logger.debug("%s: ignoring %s from %s", socket, msg, source)
            return

        if msg.cls is MessageClass.REQUEST:
            if test.hairpin_to == socket and not test.done:
                test.source, test.received_on = source, socket
                test.transaction.cancel(now, "hairpinned request arrived")
        elif test.transaction.handle_response(msg, now):
            test.source, test.received_on = source, socket
        self._resume(now)

    # --- stepping the plan ---------------------------------------------------

    def _require_started(self) -> None:
        if self._gen is None:
            raise UsageError("call start() first")

    def _resume(self, now: float) -> None:
        """Run the plan until it waits for something not yet finished."""
        while self._result is None and self._gen is not None:
            step = self._step
            if isinstance(step, _Sleep) and now < step.until:
                return
            if isinstance(step, _Batch) and not all(t.done for t in step.tests):
                return
            try:
                step = next(self._gen)
            except StopIteration as stop:
                self._finish(stop.value)
                return
            self._step = step
            if isinstance(step, _Batch):
                for test in step.tests:
                    self._fire(test, now)

    def _finish(self, result: ProbeResult) -> None:
        logger.debug(
            "probe of %s: %s -> done (%s)", self.server, self.phase, result.nat_type
        )
        self.phase = "done"
        self._result = result
        self._step = None

    def _fire(self, test: _Test, now: float) -> None:
        for data in test.transaction.handle_timeout(now):
            self._outbox.append(ProbeDatagram(test.socket, test.destination, data))

    def _test(
        self,
        name: str,
        socket: str,
        destination: Endpoint,
        *,
        change: ChangeRequest | None = None,
        response_port: int | None = None,
        expect_from: Endpoint | None = None,
        hairpin_to: str | None = None,
    ) -> _Test:
        """A new test, its first transmission paced (RFC 5780 §5)."""
        attributes: list[Attribute] = []
        if self.config.software:
            attributes.append(Software(self.config.software))
        if change is not None:
            attributes.append(change)
        if response_port is not None:
            attributes.append(ResponsePort(response_port))
        request = Message(
            Method.BINDING,
            MessageClass.REQUEST,
            new_transaction_id(),
            tuple(attributes),
        )
        data = encode(request, fingerprint=self.config.fingerprint)

        start = self._now
        if self._last_start is not None:
            start = max(start, self._last_start + self.config.pacing)
        self._last_start = start
        transaction = ClientTransaction(
            data, transport=Transport.UDP, now=start, policy=self.config.policy
        )
        test = _Test(
            name,
            socket,
            destination,
            transaction,
            expect_from=expect_from,
            hairpin_to=hairpin_to,
        )
        self._tests[transaction.key] = test
        self._order.append(test)
        logger.debug("probe of %s: %s -> %s", self.server, self.phase, name)
        self.phase = name
        return test

    def _note(self, text: str) -> None:
        logger.debug("probe of %s: %s", self.server, text)
        self._notes.append(text)

    def _check_sockets(self) -> None:
        wanted = set(self.config.socket_ids)
        if set(self.local) != wanted:
            missing = ", ".join(sorted(wanted - set(self.local))) or "none"
            extra = ", ".join(sorted(set(self.local) - wanted)) or "none"
            raise UsageError(f"local sockets: missing {missing}, unexpected {extra}")
        if len(set(self.local.values())) != len(self.local):
            raise UsageError("every local socket needs its own address")
        for sid, address in self.local.items():
            if address.is_unspecified:
                raise UsageError(
                    f"socket {sid}: give the local IP that routes to the server, "
                    f"not {address.ip}"
                )
            if address.is_ipv6 != self.server.is_ipv6:
                raise UsageError(
                    f"socket {sid} {address} and server {self.server} "
                    "are of different address families"
                )
        for extra_server in self.extra_servers:
            if extra_server.is_ipv6 != self.server.is_ipv6:
                raise UsageError(f"server {extra_server} is of another address family")

    # --- the plan: RFC 5780 §4 -----------------------------------------------

    def _plan(self) -> _Plan:
        """The tests in order; yields a step, resumes when it has ended."""
        # RFC 5780 §4.2: UDP connectivity, test I of §4.3 and §4.4
        test1 = self._test("test I", PRIMARY, self.server)
        yield _Batch((test1,))
        mapped = test1.mapped
        if mapped is None:
            return (yield from self._no_mapping(test1))
        local = self.local[PRIMARY]
        is_open = mapped == local
        if is_open:
            self._note("no NAT: the mapped address is the local address")
        self._check_alg(test1)

        # RFC 5780 §4.4 and §4.3 with OTHER-ADDRESS; else compare servers
        other = self._other_address(test1)
        if other is not None:
            both, port_only = yield from self._filtering(other)
            verdict = yield from self._mapping(mapped, other, is_open)
            both, port_only = yield from self._confirm_filtering(other, both, port_only)
            filtering = classify_filtering(both, port_only)
        else:
            filtering = Behaviour.UNDETERMINED
            self._note(
                "filtering: undetermined, the server does not support RFC 5780 "
                "(no usable OTHER-ADDRESS), so no response can come from another "
                "address"
            )
            verdict = yield from self._mapping_fallback(mapped, is_open)
        if verdict.note:
            self._note(verdict.note)

        # port allocation, hairpinning, binding lifetime
        yield from self._port_samples()
        ports = classify_ports(self._port_samples_seen())
        for text in ports.notes:
            self._note(text)
        hairpinning = yield from self._hairpinning(mapped, is_open)
        lifetime: float | None = None
        if self.config.lifetime_max is not None:
            lifetime = yield from self._lifetime(self.config.lifetime_max)

        nat_type = classify_nat_type(
            blocked=False,
            is_open=is_open,
            endpoint_independent=verdict.endpoint_independent,
            filtering=filtering,
        )
        if is_open and filtering is not Behaviour.ENDPOINT_INDEPENDENT:
            self._note(
                f"no NAT, but a firewall: filtering is {filtering.value}, so "
                "unsolicited traffic may not get in"
            )
        return self._result_of(
            mapping=verdict.behaviour,
            filtering=filtering,
            nat_type=nat_type,
            mapped=mapped,
            hairpinning=hairpinning,
            port_allocation=ports.pattern,
            lifetime=lifetime,
            other=other,
        )

    def _result_of(
        self,
        *,
        mapping: Behaviour,
        filtering: Behaviour,
        nat_type: NatType,
        mapped: Endpoint | None,
        hairpinning: bool | None,
        port_allocation: PortAllocation,
        lifetime: float | None,
        other: Endpoint | None,
    ) -> ProbeResult:
        keepalive = recommended_keepalive(
            nat_type, filtering, lifetime, expires_within=self._expires_within
        )
        if keepalive is not None and lifetime is None and not self._expires_within:
            self._note(
                f"keepalive: binding lifetime not measured; {keepalive:g} s is the "
                "RFC 8445 §11 default"
            )
        return ProbeResult(
            mapping=mapping,
            filtering=filtering,
            nat_type=nat_type,
            mapped=mapped,
            local=self.local[PRIMARY],
            hairpinning=hairpinning,
            port_allocation=port_allocation,
            binding_lifetime_s=lifetime,
            recommended_keepalive_s=keepalive,
            notes=tuple(self._notes),
            server=self.server,
            other_address=other,
            tests=tuple(t.outcome() for t in self._order),
        )

    def _no_mapping(self, test1: _Test) -> _Plan:
        """Test I gave no mapped address: blocked, refused or broken."""
        nat_type = NatType.UNDETERMINED
        if test1.timed_out:
            answered = yield from self._any_extra_server_answers()
            if answered is None:
                nat_type = NatType.UDP_BLOCKED
                self._note(
                    f"udp-blocked: no response from {self.server} ({test1.reason}); "
                    "UDP is blocked on the way, or the server is down"
                )
            else:
                self._note(
                    f"no response from {self.server} ({test1.reason}), but "
                    f"{answered} answered: check the server address"
                )
        else:
            self._note(f"test I to {self.server} failed: {test1.reason}")
        return self._result_of(
            mapping=Behaviour.UNDETERMINED,
            filtering=Behaviour.UNDETERMINED,
            nat_type=nat_type,
            mapped=None,
            hairpinning=None,
            port_allocation=PortAllocation.UNDETERMINED,
            lifetime=None,
            other=None,
        )

    def _any_extra_server_answers(self) -> Generator[_Step, None, Endpoint | None]:
        tests = tuple(
            self._test(f"test I via {s}", PRIMARY, s) for s in self.extra_servers
        )
        if tests:
            yield _Batch(tests)
        return next((t.destination for t in tests if t.mapped), None)

    def _check_alg(self, test1: _Test) -> None:
        """RFC 5780 §3.6: MAPPED-ADDRESS rewritten but not XOR-MAPPED-ADDRESS."""
        response = test1.transaction.response
        if response is None:
            return
        plain = response.get(MappedAddress)
        xored = response.get(XorMappedAddress)
        if plain and xored and (plain.ip, plain.port) != (xored.ip, xored.port):
            self._note(
                f"a generic ALG rewrites addresses in packets: MAPPED-ADDRESS "
                f"{Endpoint(plain.ip, plain.port)} differs from XOR-MAPPED-ADDRESS"
            )

    def _other_address(self, test1: _Test) -> Endpoint | None:
        """OTHER-ADDRESS of test I, if RFC 5780 tests can use it (RFC 5780 §6)."""
        response = test1.transaction.response
        attr = response.get(OtherAddress) if response else None
        if attr is None:
            return None
        other = Endpoint(attr.ip, attr.port)
        if other.ip == self.server.ip or other.port == self.server.port:
            self._note(
                f"OTHER-ADDRESS {other} must differ from {self.server} in both IP "
                "and port; RFC 5780 tests skipped"
            )
            return None
        if other.is_ipv6 != self.server.is_ipv6:
            self._note(f"OTHER-ADDRESS {other} is of another address family; skipped")
            return None
        return other

    def _filtering(
        self, other: Endpoint
    ) -> Generator[_Step, None, tuple[bool | None, bool | None]]:
        """RFC 5780 §4.4 tests II (change IP and port) and III (change port).

        Run together: both only ever send to the primary address, so one
        cannot open the filter for the other (RFC 5780 §4.5 allows combining).
        """
        both = self._test(
            "filtering test II",
            PRIMARY,
            self.server,
            change=ChangeRequest(change_ip=True, change_port=True),
            expect_from=other,
        )
        port_only = self._test(
            "filtering test III",
            PRIMARY,
            self.server,
            change=ChangeRequest(change_ip=False, change_port=True),
            expect_from=self.server.with_port(other.port),
        )
        yield _Batch((both, port_only))
        return self._filter_outcome(both), self._filter_outcome(port_only)

    def _filter_outcome(self, test: _Test) -> bool | None:
        """True: the changed-address response got in; False: none came."""
        if test.timed_out:
            return False
        if test.succeeded and test.source == test.expect_from:
            return True
        if test.succeeded:
            self._note(
                f"filtering: {test.name} was answered from {test.source}, not from "
                f"{test.expect_from} as CHANGE-REQUEST asked; the server does not "
                "honour CHANGE-REQUEST"
            )
        else:
            self._note(f"filtering: {test.name} failed: {test.reason}")
        return None

    def _confirm_filtering(
        self, other: Endpoint, both: bool | None, port_only: bool | None
    ) -> Generator[_Step, None, tuple[bool | None, bool | None]]:
        """Make sure a missing response means filtering, not a dead address.

        A filtering test that got no response proves something only if the
        address it would have come from answers at all; plain requests to
        those addresses (now that the filtering tests are over) tell.
        """
        needed: list[Endpoint] = []
        if both is False:
            needed.append(other)
        if both is False and port_only is False:
            needed.append(self.server.with_port(other.port))
        answered = {t.destination for t in self._order if t.succeeded}
        controls = tuple(
            self._test(f"control {address}", PRIMARY, address)
            for address in needed
            if address not in answered
        )
        if controls:
            yield _Batch(controls)
        dead = {t.destination for t in controls if not t.succeeded}
        if other in dead:
            self._note(
                f"filtering: the alternate address {other} does not answer, so the "
                "missing response of test II proves nothing"
            )
            both = None
        if self.server.with_port(other.port) in dead:
            self._note(
                f"filtering: {self.server.with_port(other.port)} does not answer, so "
                "the missing response of test III proves nothing"
            )
            port_only = None
        return both, port_only

    def _mapping(
        self, mapped: Endpoint, other: Endpoint, is_open: bool
    ) -> Generator[_Step, None, MappingVerdict]:
        """RFC 5780 §4.3 tests II and III, from the primary socket."""
        if is_open:
            return MappingVerdict(Behaviour.ENDPOINT_INDEPENDENT, True)
        test2 = self._test(
            "mapping test II", PRIMARY, Endpoint(other.ip, self.server.port)
        )
        yield _Batch((test2,))
        if test2.mapped is None or test2.mapped == mapped:
            return classify_mapping(mapped, test2.mapped, None)
        test3 = self._test("mapping test III", PRIMARY, other)
        yield _Batch((test3,))
        return classify_mapping(mapped, test2.mapped, test3.mapped)

    def _mapping_fallback(
        self, mapped: Endpoint, is_open: bool
    ) -> Generator[_Step, None, MappingVerdict]:
        """Without RFC 5780: the same socket asks every extra server."""
        if is_open:
            return MappingVerdict(Behaviour.ENDPOINT_INDEPENDENT, True)
        tests = tuple(
            self._test(f"mapping via {s}", PRIMARY, s) for s in self.extra_servers
        )
        if tests:
            yield _Batch(tests)
        samples = [ServerMapping(self.server, mapped)]
        for test in tests:
            if test.mapped is None:
                self._note(f"mapping: server {test.destination}: {test.reason}")
            else:
                samples.append(ServerMapping(test.destination, test.mapped))
        return mapping_from_servers(samples)

    def _port_samples(self) -> Generator[_Step, None, None]:
        """One request from each other socket to the server, one at a time."""
        for socket in self.config.socket_ids:
            if socket != PRIMARY:
                yield _Batch((self._test(f"ports {socket}", socket, self.server),))

    def _port_samples_seen(self) -> list[PortSample]:
        """Every binding learnt so far, in the order the NAT created them."""
        return [
            PortSample(t.socket, self.local[t.socket].port, mapped.port)
            for t in self._order
            if t.received_on == t.socket and (mapped := t.mapped) is not None
        ]

    def _hairpinning(
        self, mapped: Endpoint, is_open: bool
    ) -> Generator[_Step, None, bool | None]:
        """RFC 5780 §3.4: does a request to our own mapped address come back?"""
        if not self.config.hairpinning:
            self._note("hairpinning: not tested")
            return None
        test = self._test("hairpinning", SECONDARY, mapped, hairpin_to=PRIMARY)
        yield _Batch((test,))
        if test.hairpinned:
            if not is_open and test.source == self.local[SECONDARY]:
                self._note(
                    "hairpinning: the NAT delivers hairpinned packets with the "
                    "internal source address (no source translation)"
                )
            return True
        if test.timed_out:
            return False
        self._note(f"hairpinning: undetermined, {test.reason}")
        return None

    def _lifetime(self, maximum: float) -> Generator[_Step, None, float | None]:
        """RFC 5780 §4.6: the longest idle time a binding survives.

        Each trial refreshes the primary socket's binding (port X), waits T,
        then asks from the second socket (port Y) for a response sent to X's
        mapped port with RESPONSE-PORT. A first trial with T = 0 checks that
        the method works at all. T doubles from ``lifetime_start`` until a
        binding has expired, then the interval is halved.
        """
        works = yield from self._lifetime_trial(0.0)
        if works is None:
            return None
        if not works:
            self._note(
                "binding lifetime: undetermined, a response redirected with "
                "RESPONSE-PORT to the first socket's mapping did not arrive even "
                "without waiting"
            )
            return None

        # step 1: double T until a binding has expired, or up to the maximum
        low, high = 0.0, None
        wait = min(self.config.lifetime_start, maximum)
        while high is None:
            alive = yield from self._lifetime_trial(wait)
            if alive is None:
                return low or None
            if not alive:
                high = wait
            elif wait >= maximum:
                low = wait
                break
            else:
                low, wait = wait, min(wait * 2, maximum)

        # step 2: halve the interval in which the lifetime lies
        while high is not None and high - low > max(
            self.config.lifetime_resolution, 0.1 * low
        ):
            middle = (low + high) / 2
            alive = yield from self._lifetime_trial(middle)
            if alive is None:
                break
            low, high = (middle, high) if alive else (low, middle)
        if high is None:
            self._note(
                f"binding lifetime: still alive after {low:g} s idle, the maximum "
                "tested; it is at least that"
            )
        elif low == 0:
            self._note(f"binding lifetime: expired in less than {high:g} s")
            self._expires_within = high
            return None
        else:
            self._note(
                f"binding lifetime: alive after {low:g} s idle, expired after "
                f"{high:g} s"
            )
        return low

    def _lifetime_trial(self, wait: float) -> Generator[_Step, None, bool | None]:
        """One RFC 5780 §4.6 trial: True if X's binding outlived ``wait`` s."""
        refresh = self._test("lifetime refresh", PRIMARY, self.server)
        yield _Batch((refresh,))
        mapped = refresh.mapped
        sent_at = refresh.transaction.last_sent_at
        if mapped is None or sent_at is None:
            self._note(f"binding lifetime: refresh failed: {refresh.reason}")
            return None
        if sent_at + wait > self._now:
            yield _Sleep(sent_at + wait)
        check = self._test(
            f"lifetime check after {wait:g} s",
            SECONDARY,
            self.server,
            response_port=mapped.port,
        )
        yield _Batch((check,))
        if check.succeeded:
            # RFC 5780 §4.6: a response on Y means X's port was given to Y
            return check.received_on == PRIMARY
        if check.timed_out:
            return False
        self._note(f"binding lifetime: undetermined, RESPONSE-PORT: {check.reason}")
        return None
