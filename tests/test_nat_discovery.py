"""The sans-IO RFC 5780 prober, driven by hand against scripted servers.

These tests need no NAT: the client sits on the open internet and the
"server" is a function from a request to the replies it sends, so each test
can break one rule of RFC 5780 §6 and check that the prober says so instead
of guessing. NAT behaviours are covered in test_nat_sim_probe.py.
"""

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from natkit.nat.classify import Behaviour, NatType, PortAllocation
from natkit.nat.discovery import (
    PRIMARY,
    PROBE_POLICY,
    SECONDARY,
    NatProber,
    ProbeConfig,
    ProbeDatagram,
    ProbeResult,
    port_socket,
)
from natkit.nat.endpoint import Endpoint
from natkit.nat.server import Rfc5780Responder, ServerReply
from natkit.stun.attributes import (
    ChangeRequest,
    ErrorCodeAttr,
    Fingerprint,
    MappedAddress,
    OtherAddress,
    ResponsePort,
    XorMappedAddress,
)
from natkit.stun.constants import MessageClass, Method
from natkit.stun.errors import UsageError
from natkit.stun.message import Message, decode, encode, new_transaction_id
from natkit.stun.server import BindingResponder
from natkit.stun.transaction import Transport

SERVER = Endpoint("198.51.100.10", 3478)
ALTERNATE = Endpoint("198.51.100.11", 3479)
CLIENT_IP = "192.0.2.10"

#: a server: (request bytes, address it arrived on, its source) -> replies
Server = Callable[[bytes, Endpoint, Endpoint], list[ServerReply]]


def rfc5780_server() -> Server:
    responder = Rfc5780Responder(SERVER, ALTERNATE)

    def serve(data: bytes, local: Endpoint, source: Endpoint) -> list[ServerReply]:
        if local not in responder.addresses:
            return []
        reply = responder.handle(data, local=local, source=source)
        return [reply] if reply else []

    return serve


def plain_server(*addresses: Endpoint) -> Server:
    """RFC 8489 servers without RFC 5780 (420 for CHANGE-REQUEST)."""
    responder = BindingResponder()

    def serve(data: bytes, local: Endpoint, source: Endpoint) -> list[ServerReply]:
        if local not in addresses:
            return []
        reply = responder.handle(data, source.ip, source.port)
        return [ServerReply(local, source, reply)] if reply else []

    return serve


@dataclass(frozen=True, slots=True)
class Sent:
    at: float
    datagram: ProbeDatagram


class Direct:
    """A driver with no NAT and no delay: every reply arrives at once."""

    def __init__(
        self,
        server: Server,
        *,
        config: ProbeConfig | None = None,
        extra_servers: tuple[Endpoint, ...] = (),
    ) -> None:
        self.config = config or ProbeConfig()
        self.server = server
        self.local = {
            sid: Endpoint(CLIENT_IP, 40000 + i)
            for i, sid in enumerate(self.config.socket_ids)
        }
        self.prober = NatProber(
            SERVER, local=self.local, config=self.config, extra_servers=extra_servers
        )
        self.now = 0.0
        self.sent: list[Sent] = []

    def run(self) -> ProbeResult:
        self.prober.start(self.now)
        for _ in range(100_000):
            self.flush()
            if self.prober.result is not None:
                return self.prober.result
            deadline = self.prober.next_deadline()
            assert deadline is not None and deadline >= self.now
            self.now = deadline
            self.prober.handle_timeout(self.now)
        raise AssertionError("probe did not finish")

    def flush(self) -> None:
        queue = deque(self.prober.datagrams_to_send())
        while queue:
            datagram = queue.popleft()
            self.sent.append(Sent(self.now, datagram))
            source = self.local[datagram.socket]
            self.deliver(source, datagram.destination, datagram.data)
            for reply in self.server(datagram.data, datagram.destination, source):
                self.deliver(reply.source, reply.destination, reply.data)
            queue.extend(self.prober.datagrams_to_send())

    def deliver(self, source: Endpoint, destination: Endpoint, data: bytes) -> None:
        for sid, address in self.local.items():
            if address == destination:
                self.prober.handle_response(sid, source, data, self.now)


# --- the driver contract ------------------------------------------------------


def test_socket_ids() -> None:
    config = ProbeConfig(port_samples=2)
    assert config.socket_ids == (PRIMARY, SECONDARY, "port-1", "port-2")
    assert port_socket(2) == "port-2"


def test_start_sends_test_i_from_the_primary_socket() -> None:
    direct = Direct(rfc5780_server())
    prober = direct.prober
    assert prober.next_deadline() is None
    prober.start(100.0)

    [datagram] = prober.datagrams_to_send()
    assert datagram.socket == PRIMARY
    assert datagram.destination == SERVER
    request = decode(datagram.data)
    assert (request.method, request.cls) == (Method.BINDING, MessageClass.REQUEST)
    assert request.has_fingerprint
    assert request.get(ChangeRequest) is None
    assert prober.next_deadline() == pytest.approx(100.15)
    assert prober.datagrams_to_send() == []
    assert not prober.done and prober.result is None


def test_no_response_is_udp_blocked_after_3_s() -> None:
    """RFC 5780 §4.2: no response to test I: no UDP connectivity."""
    direct = Direct(lambda data, local, source: [])
    result = direct.run()

    assert result.nat_type is NatType.UDP_BLOCKED
    assert result.mapping is Behaviour.UNDETERMINED
    assert result.filtering is Behaviour.UNDETERMINED
    assert result.mapped is None and result.hairpinning is None
    assert result.recommended_keepalive_s is None
    assert direct.now == pytest.approx(PROBE_POLICY.give_up_after(Transport.UDP))
    times = [s.at for s in direct.sent]
    assert times == pytest.approx([0.0, 0.15, 0.45, 1.05, 2.25])
    assert len({s.datagram.data for s in direct.sent}) == 1
    assert any("udp-blocked" in note for note in result.notes)


def test_error_response_to_test_i_is_not_udp_blocked() -> None:
    def refuse(data: bytes, local: Endpoint, source: Endpoint) -> list[ServerReply]:
        request = decode(data)
        response = request.reply(MessageClass.ERROR, (ErrorCodeAttr(401, "Nope"),))
        return [ServerReply(local, source, encode(response))]

    result = Direct(refuse).run()
    assert result.nat_type is NatType.UNDETERMINED
    assert any("401" in note for note in result.notes)


def test_json_has_exactly_the_documented_keys() -> None:
    result = Direct(rfc5780_server()).run()
    assert set(result.to_json()) == {
        "mapping",
        "filtering",
        "nat_type",
        "mapped",
        "local",
        "hairpinning",
        "port_allocation",
        "binding_lifetime_s",
        "recommended_keepalive_s",
        "notes",
        "server",
        "other_address",
    }
    verbose = result.to_json(verbose=True)
    assert isinstance(verbose["tests"], list) and verbose["tests"]
    assert verbose["local"] == f"{CLIENT_IP}:40000"


def test_open_internet() -> None:
    """RFC 5780 §4.3: mapped address equal to the local one: no NAT."""
    result = Direct(rfc5780_server()).run()
    assert result.nat_type is NatType.OPEN
    assert result.mapping is Behaviour.ENDPOINT_INDEPENDENT
    assert result.filtering is Behaviour.ENDPOINT_INDEPENDENT
    assert result.mapped == result.local == Endpoint(CLIENT_IP, 40000)
    assert result.other_address == ALTERNATE
    assert result.hairpinning is True
    assert result.port_allocation is PortAllocation.PRESERVING
    assert result.recommended_keepalive_s is None


def test_order_and_pacing_of_the_tests() -> None:
    """RFC 5780 §4.4 before anything goes to the alternate address; §5 pacing."""
    direct = Direct(rfc5780_server())
    direct.run()
    first = list(direct.sent)
    requests = [decode(s.datagram.data) for s in first]

    # test I, then the two filtering tests, all to the primary address
    assert requests[0].get(ChangeRequest) is None
    changes = [r.get(ChangeRequest) for r in requests[1:3]]
    assert changes == [
        ChangeRequest(change_ip=True, change_port=True),
        ChangeRequest(change_ip=False, change_port=True),
    ]
    assert all(s.datagram.destination == SERVER for s in first[:3])

    # no two new transactions closer than 0.1 s
    starts: dict[bytes, float] = {}
    for sent, request in zip(first, requests, strict=True):
        starts.setdefault(request.transaction_id, sent.at)
    ordered = sorted(starts.values())
    gaps = [b - a for a, b in zip(ordered, ordered[1:], strict=False)]
    assert min(gaps) >= 0.1 - 1e-9


def test_firewall_without_nat() -> None:
    """Open address, but only replies from where we sent get in."""
    serve = rfc5780_server()

    def firewalled(data: bytes, local: Endpoint, source: Endpoint) -> list[ServerReply]:
        return [r for r in serve(data, local, source) if r.source == local]

    result = Direct(firewalled).run()
    assert result.nat_type is NatType.OPEN
    assert result.filtering is Behaviour.ADDRESS_AND_PORT_DEPENDENT
    assert result.recommended_keepalive_s == 15.0
    assert any("firewall" in note for note in result.notes)


def test_change_request_not_honoured_is_undetermined() -> None:
    """A server that answers CHANGE-REQUEST from the primary address."""
    serve = rfc5780_server()

    def lazy(data: bytes, local: Endpoint, source: Endpoint) -> list[ServerReply]:
        return [
            ServerReply(local, r.destination, r.data)
            for r in serve(data, local, source)
        ]

    result = Direct(lazy).run()
    assert result.filtering is Behaviour.UNDETERMINED
    assert any("does not honour CHANGE-REQUEST" in note for note in result.notes)


def test_dead_alternate_address_is_not_mistaken_for_filtering() -> None:
    """OTHER-ADDRESS is advertised but nothing answers from or at it."""
    serve = rfc5780_server()

    def half(data: bytes, local: Endpoint, source: Endpoint) -> list[ServerReply]:
        if local != SERVER:
            return []
        return [r for r in serve(data, local, source) if r.source == SERVER]

    result = Direct(half).run()
    assert result.filtering is Behaviour.UNDETERMINED
    assert any("does not answer" in note for note in result.notes)


def test_other_address_on_the_same_ip_is_not_used() -> None:
    def same_ip(data: bytes, local: Endpoint, source: Endpoint) -> list[ServerReply]:
        if local != SERVER:
            return []
        request = decode(data)
        attributes = (
            XorMappedAddress(source.ip, source.port),
            OtherAddress(SERVER.ip, 3479),
        )
        response = request.reply(MessageClass.SUCCESS, attributes)
        return [ServerReply(local, source, encode(response))]

    result = Direct(same_ip).run()
    assert result.other_address is None
    assert result.filtering is Behaviour.UNDETERMINED
    assert any("both IP and port" in note for note in result.notes)


def test_alg_rewriting_mapped_address_is_noted() -> None:
    """RFC 5780 §3.6: MAPPED-ADDRESS and XOR-MAPPED-ADDRESS disagree."""
    serve = rfc5780_server()

    def alg(data: bytes, local: Endpoint, source: Endpoint) -> list[ServerReply]:
        out = []
        for reply in serve(data, local, source):
            response = decode(reply.data)
            attributes = tuple(
                MappedAddress("10.1.1.1", 1) if isinstance(a, MappedAddress) else a
                for a in response.attributes
                if not isinstance(a, Fingerprint)
            )
            rewritten = response.reply(MessageClass.SUCCESS, attributes)
            out.append(ServerReply(reply.source, reply.destination, encode(rewritten)))
        return out

    result = Direct(alg).run()
    assert any("ALG" in note for note in result.notes)


def test_plain_server_without_extra_servers() -> None:
    result = Direct(plain_server(SERVER)).run()
    # open: no NAT, so the mapping needs no second server
    assert result.nat_type is NatType.OPEN
    assert result.filtering is Behaviour.UNDETERMINED
    assert any("does not support RFC 5780" in note for note in result.notes)


def test_lifetime_against_a_server_without_response_port() -> None:
    """RFC 5780 §5: a client must be prepared for 420 to RESPONSE-PORT."""
    config = ProbeConfig(lifetime_max=30.0)
    result = Direct(plain_server(SERVER), config=config).run()
    assert result.binding_lifetime_s is None
    assert any("RESPONSE-PORT" in note and "420" in note for note in result.notes)


def test_lifetime_without_nat_reaches_the_maximum() -> None:
    config = ProbeConfig(lifetime_max=40.0, lifetime_start=10.0)
    direct = Direct(rfc5780_server(), config=config)
    result = direct.run()
    assert result.binding_lifetime_s == 40.0
    assert any("at least" in note for note in result.notes)
    # waits of 0, 10, 20 and 40 s
    checks = [
        s
        for s in direct.sent
        if decode(s.datagram.data).get(ResponsePort) is not None
        and s.datagram.socket == SECONDARY
    ]
    assert len({decode(s.datagram.data).transaction_id for s in checks}) == 4


def test_hairpinning_off() -> None:
    result = Direct(rfc5780_server(), config=ProbeConfig(hairpinning=False)).run()
    assert result.hairpinning is None
    assert any("hairpinning: not tested" in note for note in result.notes)


# --- robustness ---------------------------------------------------------------


def test_ignores_garbage_strangers_and_late_duplicates() -> None:
    direct = Direct(rfc5780_server())
    prober = direct.prober
    prober.start(0.0)
    [first] = prober.datagrams_to_send()

    prober.handle_response(PRIMARY, SERVER, b"not stun at all", 0.01)
    prober.handle_response(PRIMARY, SERVER, b"\x00\x01\x00\x00" + bytes(16), 0.01)
    stranger = Message(Method.BINDING, MessageClass.SUCCESS, new_transaction_id())
    prober.handle_response(PRIMARY, SERVER, encode(stranger), 0.01)
    assert prober.phase == "test I"
    assert prober.datagrams_to_send() == []

    # the real response moves on; a duplicate of it changes nothing
    [reply] = direct.server(first.data, SERVER, direct.local[PRIMARY])
    prober.handle_response(PRIMARY, reply.source, reply.data, 0.02)
    assert prober.phase == "filtering test III"
    # RFC 5780 §5 pacing: the next transaction starts 0.1 s after test I
    assert prober.next_deadline() == pytest.approx(0.1)
    assert prober.datagrams_to_send() == []
    prober.handle_response(PRIMARY, reply.source, reply.data, 0.03)
    assert prober.next_deadline() == pytest.approx(0.1)
    prober.handle_timeout(0.1)
    [filtering_ii] = prober.datagrams_to_send()
    assert decode(filtering_ii.data).get(ChangeRequest) == ChangeRequest(True, True)


def test_usage_errors() -> None:
    config = ProbeConfig(port_samples=0)
    good = {
        PRIMARY: Endpoint(CLIENT_IP, 1),
        SECONDARY: Endpoint(CLIENT_IP, 2),
    }
    with pytest.raises(UsageError, match="missing secondary"):
        NatProber(SERVER, local={PRIMARY: good[PRIMARY]}, config=config)
    with pytest.raises(UsageError, match="not 0.0.0.0"):
        NatProber(
            SERVER,
            local={**good, PRIMARY: Endpoint("0.0.0.0", 1)},
            config=config,
        )
    with pytest.raises(UsageError, match="own address"):
        NatProber(SERVER, local={**good, SECONDARY: good[PRIMARY]}, config=config)
    with pytest.raises(UsageError, match="famil"):
        NatProber(Endpoint("2001:db8::1", 3478), local=good, config=config)

    prober = NatProber(SERVER, local=good, config=config)
    with pytest.raises(UsageError, match="start"):
        prober.handle_timeout(0.0)
    prober.start(0.0)
    with pytest.raises(UsageError, match="already"):
        prober.start(0.0)
    with pytest.raises(UsageError, match="unknown socket"):
        prober.handle_response("port-9", SERVER, b"", 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port_samples": -1},
        {"lifetime_max": 0.0},
        {"lifetime_start": 0.0},
        {"lifetime_resolution": -1.0},
        {"pacing": -0.1},
    ],
)
def test_config_rejects(kwargs: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        ProbeConfig(**kwargs)  # type: ignore[arg-type]
