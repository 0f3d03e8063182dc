"""Two sans-IO ICE agents wired in memory (RFC 8445, RFC 8838, RFC 7675).

A tiny router moves each agent's :class:`Transmit` records to the other
agent's ``handle_datagram`` after a fixed delay, on a clock the test owns;
an optional one-to-one source rewrite plays a NAT so that peer-reflexive
candidates appear. Nothing touches a socket.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natkit.ice.agent import IceAgent
from natkit.ice.candidate import Candidate, CandidateType
from natkit.ice.checklist import PairState
from natkit.ice.config import DEFAULT_TA, IceConfig
from natkit.ice.credentials import Credentials
from natkit.ice.events import (
    CandidateLearned,
    DataReceived,
    IceEvent,
    IceState,
    PairSelected,
    PermissionNeeded,
    RoleChanged,
    StateChanged,
    Transmit,
)
from natkit.nat.endpoint import Endpoint
from natkit.stun.attributes import (
    ErrorCodeAttr,
    IceControlled,
    IceControlling,
    Priority,
    UnknownAttribute,
    UseCandidate,
    Username,
    XorMappedAddress,
)
from natkit.stun.constants import MessageClass, Method
from natkit.stun.errors import UsageError
from natkit.stun.integrity import short_term_key
from natkit.stun.message import Message, decode, encode, new_transaction_id
from natkit.stun.message import verify_integrity as verify

A_HOST = Endpoint("192.0.2.1", 1000)
B_HOST = Endpoint("192.0.2.2", 2000)
TURN = Endpoint("198.51.100.30", 3478)

_E = TypeVar("_E")


@dataclass
class Peer:
    """One agent on the router, its sockets (id -> address) and what it got."""

    name: str
    agent: IceAgent
    sockets: dict[str, Endpoint] = field(default_factory=dict)
    events: list[IceEvent] = field(default_factory=list)
    sent: list[tuple[float, Transmit]] = field(default_factory=list)

    def add_host(self, address: Endpoint) -> Candidate:
        candidate = Candidate.host(address)
        self.sockets[str(address)] = address
        self.agent.add_local_candidate(candidate)
        return candidate

    def of(self, kind: type[_E]) -> list[_E]:
        return [e for e in self.events if isinstance(e, kind)]

    def states(self) -> list[IceState]:
        return [e.new for e in self.of(StateChanged)]

    def data(self) -> list[bytes]:
        return [e.data for e in self.of(DataReceived)]


@dataclass(order=True)
class _Flight:
    when: float
    seq: int
    deliver: Callable[[], None] = field(compare=False)


class Router:
    """Moves datagrams between agents with ``delay``; owns the clock.

    ``nat`` maps a private socket address to the public address the other
    side sees (and back). ``drop(sender, transmit)`` loses datagrams.
    """

    def __init__(self, *, delay: float = 0.005) -> None:
        self.now = 0.0
        self.delay = delay
        self.peers: list[Peer] = []
        self.nat: dict[Endpoint, Endpoint] = {}
        self.drop: Callable[[Peer, Transmit], bool] = lambda peer, t: False
        self._flights: list[_Flight] = []
        self._seq = itertools.count()

    def add(self, name: str, agent: IceAgent) -> Peer:
        peer = Peer(name, agent)
        self.peers.append(peer)
        return peer

    def _owner(self, destination: Endpoint) -> tuple[Peer, str] | None:
        private = next((k for k, v in self.nat.items() if v == destination), None)
        target = private or destination
        for peer in self.peers:
            for socket, address in peer.sockets.items():
                if address == target:
                    return peer, socket
        return None

    def send(self, sender: Peer, transmit: Transmit) -> None:
        sender.sent.append((self.now, transmit))
        if self.drop(sender, transmit):
            return
        owner = self._owner(transmit.destination)
        if owner is None:
            return
        peer, socket = owner
        source = sender.sockets[transmit.socket]
        seen = self.nat.get(source, source)
        data = transmit.data

        def deliver() -> None:
            peer.agent.handle_datagram(socket, seen, data, self.now)

        heapq.heappush(
            self._flights, _Flight(self.now + self.delay, next(self._seq), deliver)
        )

    def flush(self) -> None:
        for peer in self.peers:
            for transmit in peer.agent.datagrams_to_send():
                self.send(peer, transmit)
            while (event := peer.agent.next_event()) is not None:
                peer.events.append(event)

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run to ``until`` (or until ``stop()``); True if stopped early."""
        for _ in range(2_000_000):
            self.flush()
            if stop is not None and stop():
                return True
            times = [f.when for f in self._flights[:1]]
            times += [
                d for p in self.peers if (d := p.agent.next_deadline()) is not None
            ]
            step = min(times, default=None)
            if step is None or step > until:
                self.now = max(self.now, until)
                return False
            self.now = max(self.now, step)
            while self._flights and self._flights[0].when <= self.now:
                heapq.heappop(self._flights).deliver()
            for peer in self.peers:
                deadline = peer.agent.next_deadline()
                if deadline is not None and deadline <= self.now:
                    peer.agent.handle_timeout(self.now)
        raise AssertionError("the router did not settle")


def make_pair(
    *,
    a_controlling: bool = True,
    b_controlling: bool = False,
    config: IceConfig | None = None,
    a_tie: int | None = None,
    b_tie: int | None = None,
    exchange: bool = True,
) -> tuple[Router, Peer, Peer]:
    router = Router()
    a = router.add(
        "a", IceAgent(a_controlling, tie_breaker=a_tie, config=config, name="a")
    )
    b = router.add(
        "b", IceAgent(b_controlling, tie_breaker=b_tie, config=config, name="b")
    )
    a.add_host(A_HOST)
    b.add_host(B_HOST)
    if exchange:
        signal(a, b)
    return router, a, b


def signal(a: Peer, b: Peer, *, candidates: bool = True) -> None:
    """Exchange credentials (and candidates, then end-of-candidates)."""
    for one, other in ((a, b), (b, a)):
        creds = one.agent.local_credentials
        other.agent.set_remote_credentials(creds.ufrag, creds.pwd)
    if candidates:
        for one, other in ((a, b), (b, a)):
            for cand in one.agent.local_candidates:
                other.agent.add_remote_candidate(_remote_view(cand))
            other.agent.add_remote_candidate(None)
            one.agent.add_local_candidate(None)


def _remote_view(candidate: Candidate) -> Candidate:
    """What the peer gets by signalling: everything but the base."""
    return Candidate(
        candidate.type,
        candidate.address,
        candidate.priority,
        candidate.foundation,
        component=candidate.component,
        related=candidate.related,
    )


def both(state: IceState, *peers: Peer) -> Callable[[], bool]:
    return lambda: all(p.agent.state is state for p in peers)


# --- the basic handshake --------------------------------------------------------------


def test_host_to_host() -> None:
    router, a, b = make_pair()
    assert router.run(5.0, both(IceState.COMPLETED, a, b))
    for peer in (a, b):
        assert peer.states() == [
            IceState.CHECKING,
            IceState.CONNECTED,
            IceState.COMPLETED,
        ]
        selected = peer.agent.selected_pair
        assert selected is not None
        assert selected.local.type is selected.remote.type is CandidateType.HOST
    sel_a, sel_b = a.agent.selected_pair, b.agent.selected_pair
    assert sel_a is not None and sel_b is not None
    assert sel_a.local.address == sel_b.remote.address == A_HOST
    assert sel_b.local.address == sel_a.remote.address == B_HOST
    assert len(a.of(PairSelected)) == len(b.of(PairSelected)) == 1
    # nomination: the controlling agent sent USE-CANDIDATE, the controlled did not
    assert any(UseCandidate() in m.attributes for m in requests(a))
    assert not any(UseCandidate() in m.attributes for m in requests(b))

    # application data, both ways
    for transmit in a.agent.send(b"hello"):
        router.send(a, transmit)
    for transmit in b.agent.send(b"\x80 rtp-ish"):
        router.send(b, transmit)
    router.run(router.now + 0.1)
    assert b.data() == [b"hello"] and a.data() == [b"\x80 rtp-ish"]


def requests(peer: Peer) -> list[Message]:
    out = []
    for _, transmit in peer.sent:
        if transmit.data[0] < 4:
            msg = decode(transmit.data)
            if msg.cls is MessageClass.REQUEST:
                out.append(msg)
    return out


def test_check_contents_rfc8445_7_1() -> None:
    router, a, b = make_pair()
    router.run(5.0, both(IceState.COMPLETED, a, b))
    first = next(t for _, t in a.sent if decode(t.data).cls is MessageClass.REQUEST)
    msg = decode(first.data)
    a_creds, b_creds = a.agent.local_credentials, b.agent.local_credentials
    assert msg.get(Username) == Username(f"{b_creds.ufrag}:{a_creds.ufrag}")
    priority = msg.get(Priority)
    assert priority is not None and priority.value >> 24 == 110
    assert msg.get(IceControlling) == IceControlling(a.agent.tie_breaker)
    assert msg.get(IceControlled) is None
    assert msg.has_fingerprint
    assert verify(msg, short_term_key(b_creds.pwd))

    # the response: XOR-MAPPED-ADDRESS, signed with the answerer's password
    response = next(
        decode(t.data) for _, t in b.sent if decode(t.data).cls is MessageClass.SUCCESS
    )
    assert response.get(XorMappedAddress) == XorMappedAddress(A_HOST.ip, A_HOST.port)
    assert verify(response, short_term_key(b_creds.pwd))
    controlled = next(m for m in requests(b))
    assert controlled.get(IceControlled) == IceControlled(b.agent.tie_breaker)


def test_pacing_ta() -> None:
    config = IceConfig(nomination_delay=5.0)
    router, a, b = make_pair(config=config)
    extra = [Endpoint("192.0.2.2", port) for port in range(3000, 3006)]
    for address in extra:
        # remotes nobody answers: their checks stay unanswered
        a.agent.add_remote_candidate(
            Candidate(
                CandidateType.HOST,
                address,
                2130706431 - address.port,
                f"x{address.port}",
            )
        )
    router.run(1.0)
    new_checks: dict[bytes, float] = {}
    for when, transmit in a.sent:
        msg = decode(transmit.data)
        if msg.cls is MessageClass.REQUEST:
            new_checks.setdefault(msg.transaction_id, when)
    times = sorted(new_checks.values())
    assert len(times) >= 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= DEFAULT_TA - 1e-9


def test_retransmission_survives_loss() -> None:
    router, a, b = make_pair()
    lost = {"count": 0}

    def drop(peer: Peer, transmit: Transmit) -> bool:
        if peer is a and lost["count"] < 3:
            lost["count"] += 1
            return True
        return False

    router.drop = drop
    assert router.run(10.0, both(IceState.COMPLETED, a, b))
    assert lost["count"] == 3


# --- roles ----------------------------------------------------------------------------


@pytest.mark.parametrize("controlling", [True, False])
def test_role_conflict_rfc8445_7_3_1_1(controlling: bool) -> None:
    router, a, b = make_pair(
        a_controlling=controlling, b_controlling=controlling, a_tie=10, b_tie=20
    )
    assert router.run(10.0, both(IceState.COMPLETED, a, b))
    switched = a.of(RoleChanged) + b.of(RoleChanged)
    assert len(switched) == 1
    # the larger tie-breaker (b) ends up controlling
    assert b.agent.controlling and not a.agent.controlling
    sel_a, sel_b = a.agent.selected_pair, b.agent.selected_pair
    assert sel_a is not None and sel_b is not None
    assert sel_a.remote.address == sel_b.local.address


def test_487_answer_is_signed() -> None:
    router, a, b = make_pair(a_controlling=True, b_controlling=True, a_tie=1, b_tie=2)
    router.run(10.0, both(IceState.COMPLETED, a, b))
    errors = [
        decode(t.data)
        for peer in (a, b)
        for _, t in peer.sent
        if decode(t.data).cls is MessageClass.ERROR
    ]
    assert errors, "expected a 487"
    assert all(
        e.get(ErrorCodeAttr) == ErrorCodeAttr(487, "Role Conflict") for e in errors
    )


# --- peer-reflexive candidates --------------------------------------------------------


def test_peer_reflexive_learned_rfc8445_7_2_5_3_1() -> None:
    router, a, b = make_pair(exchange=False)
    public = Endpoint("203.0.113.9", 40000)
    router.nat[A_HOST] = public
    signal(a, b)
    assert router.run(10.0, both(IceState.COMPLETED, a, b))

    # B learned A's public address from A's check, A learned it from B's answer
    learned_b = b.of(CandidateLearned)
    assert [c.candidate.address for c in learned_b if not c.local] == [public]
    learned_a = a.of(CandidateLearned)
    assert [c.candidate.address for c in learned_a if c.local] == [public]
    sel_a, sel_b = a.agent.selected_pair, b.agent.selected_pair
    assert sel_a is not None and sel_b is not None
    assert sel_a.local.type is CandidateType.PEER_REFLEXIVE
    assert sel_a.local.address == public and sel_a.socket == str(A_HOST)
    assert sel_b.remote.type is CandidateType.PEER_REFLEXIVE
    assert sel_b.remote.address == public


def test_signalled_candidate_replaces_prflx() -> None:
    router, a, b = make_pair(exchange=False)
    public = Endpoint("203.0.113.9", 40000)
    router.nat[A_HOST] = public
    signal(a, b)
    router.run(10.0, both(IceState.COMPLETED, a, b))
    late = Candidate(CandidateType.SERVER_REFLEXIVE, public, 1694498815, "late")
    b.agent.end_of_candidates()
    b.agent.add_remote_candidate(late)
    assert any(c is late for c in b.agent.remote_candidates)


# --- trickle (RFC 8838) ---------------------------------------------------------------


def test_trickle_late_candidates() -> None:
    router, a, b = make_pair(exchange=False)
    signal(a, b, candidates=False)
    router.run(2.0)
    assert a.agent.state is IceState.NEW

    # a's candidate reaches b late; b's candidate reaches a later still
    b.agent.add_remote_candidate(_remote_view(a.agent.local_candidates[0]))
    # b's checks teach a b's address (peer-reflexive) and a's triggered
    # check completes ICE before a hears of b's candidate
    assert router.run(3.0, both(IceState.COMPLETED, a, b))
    learned = a.agent.remote_candidates
    assert [c.type for c in learned] == [CandidateType.PEER_REFLEXIVE]
    signalled = _remote_view(b.agent.local_candidates[0])
    assert a.agent.add_remote_candidate(signalled)
    assert a.agent.remote_candidates == [signalled]
    assert not a.agent.add_remote_candidate(signalled)


def test_trickle_pairs_join_running_checklist() -> None:
    router, a, b = make_pair(exchange=False)
    signal(a, b, candidates=False)
    nowhere = Candidate(CandidateType.HOST, Endpoint("192.0.2.99", 9), 2130706431, "n")
    a.agent.add_remote_candidate(nowhere)
    router.run(1.0)
    assert a.agent.state is IceState.CHECKING
    a.agent.add_remote_candidate(_remote_view(b.agent.local_candidates[0]))
    b.agent.add_remote_candidate(_remote_view(a.agent.local_candidates[0]))
    assert len(a.agent.checklist) == 2
    assert router.run(3.0, both(IceState.COMPLETED, a, b))


def test_local_candidate_trickles_in() -> None:
    router, a, b = make_pair(exchange=False)
    signal(a, b, candidates=False)
    unreachable = Candidate(CandidateType.HOST, Endpoint("192.0.2.77", 7), 5000, "u")
    a.agent.add_remote_candidate(unreachable)
    router.run(1.0)
    second = Endpoint("192.0.2.1", 1001)
    a.add_host(second)
    b.agent.add_remote_candidate(_remote_view(a.agent.local_candidates[-1]))
    assert router.run(5.0, both(IceState.COMPLETED, a, b))


def test_failure_waits_for_end_of_candidates_rfc8838_8() -> None:
    router, a, b = make_pair(exchange=False)
    signal(a, b, candidates=False)
    nowhere = Candidate(CandidateType.HOST, Endpoint("192.0.2.99", 9), 1000, "n")
    a.agent.add_remote_candidate(nowhere)
    a.agent.add_local_candidate(None)
    router.run(40.0)
    # every pair failed long ago, but more candidates may come
    assert all(p.state is PairState.FAILED for p in a.agent.checklist)
    assert a.agent.state is IceState.CHECKING
    a.agent.end_of_candidates()
    router.run(41.0)
    assert a.states()[-1] is IceState.FAILED


def test_no_candidates_fails_at_once() -> None:
    agent = IceAgent(True)
    agent.add_local_candidate(None)
    agent.add_remote_candidate(None)
    assert agent.state is IceState.FAILED


# --- candidates the agent refuses or prunes -------------------------------------------


def test_redundant_and_pruned_local_candidates() -> None:
    agent = IceAgent(True)
    public = Endpoint("203.0.113.50", 4000)
    host = Candidate.host(public)
    assert agent.add_local_candidate(host)
    same = Candidate.server_reflexive(public, base=host, server=TURN)
    assert not agent.add_local_candidate(same)  # RFC 8445 §5.1.3

    natted_host = Candidate.host(Endpoint("10.0.0.2", 5000))
    agent.add_local_candidate(natted_host)
    srflx = Candidate.server_reflexive(
        Endpoint("203.0.113.1", 6000), base=natted_host, server=TURN
    )
    assert agent.add_local_candidate(srflx)
    agent.add_remote_candidate(
        Candidate(CandidateType.HOST, Endpoint("192.0.2.5", 5), 2000, "r")
    )
    # the srflx candidate is replaced by its base: two pairs, not three
    assert len(agent.checklist) == 2
    assert {p.local.candidate.type for p in agent.checklist} == {CandidateType.HOST}


def test_local_candidate_misuse() -> None:
    agent = IceAgent(True)
    host = Candidate.host(Endpoint("10.0.0.2", 5000))
    srflx = Candidate.server_reflexive(
        Endpoint("203.0.113.1", 6000), base=host, server=TURN
    )
    with pytest.raises(UsageError, match="first"):
        agent.add_local_candidate(srflx)
    bare = Candidate(CandidateType.SERVER_REFLEXIVE, Endpoint("203.0.113.1", 1), 1, "f")
    with pytest.raises(UsageError, match="base"):
        agent.add_local_candidate(bare)
    agent.add_local_candidate(host, socket="s")
    with pytest.raises(UsageError, match="already"):
        agent.add_local_candidate(Candidate.host(Endpoint("10.0.0.3", 1)), socket="s")


def test_relay_pairs_ask_for_permissions() -> None:
    agent = IceAgent(True)
    relay = Candidate.relayed(Endpoint("198.51.100.30", 50000), server=TURN)
    agent.add_local_candidate(relay, socket="turn")
    for port in (1, 2):
        agent.add_remote_candidate(
            Candidate(CandidateType.HOST, Endpoint("192.0.2.5", port), 2000 + port, "r")
        )
    events = []
    while (event := agent.next_event()) is not None:
        events.append(event)
    assert events == [PermissionNeeded("turn", "192.0.2.5")]


def test_other_generation_and_tcp_ignored() -> None:
    agent = IceAgent(True)
    agent.set_remote_credentials("abcd", "p" * 22)
    other = Candidate(
        CandidateType.HOST,
        Endpoint("192.0.2.5", 5),
        1,
        "r",
        extensions=(),
        transport="tcp",
    )
    assert not agent.add_remote_candidate(other)
    from natkit.ice.sdp import parse_candidate

    stale = parse_candidate("candidate:1 1 udp 1 192.0.2.5 5 typ host ufrag zzzz")
    assert not agent.add_remote_candidate(stale)
    fresh = parse_candidate("candidate:1 1 udp 1 192.0.2.5 5 typ host ufrag abcd")
    assert agent.add_remote_candidate(fresh)
    with pytest.raises(UsageError, match="restart"):
        agent.set_remote_credentials("efgh", "p" * 22)


# --- the server side of checks (RFC 8445 §7.3) ----------------------------------------


def _request(
    username: str | None, key: bytes | None, *, priority: bool = True
) -> bytes:
    attrs: list[object] = []
    if username is not None:
        attrs.append(Username(username))
    if priority:
        attrs.append(Priority(12345))
    attrs.append(IceControlled(7))
    msg = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        new_transaction_id(),
        tuple(attrs),  # type: ignore[arg-type]
    )
    return encode(msg, key=key, fingerprint=True)


def _answer(agent: IceAgent, data: bytes) -> Message:
    agent.handle_datagram(str(A_HOST), B_HOST, data, 1.0)
    out = agent.datagrams_to_send()
    assert len(out) == 1 and out[0].destination == B_HOST
    return decode(out[0].data)


@pytest.mark.parametrize(
    ("case", "code"),
    [("no-username", 400), ("wrong-ufrag", 401), ("bad-mac", 401), ("no-mac", 400)],
)
def test_refused_checks(case: str, code: int) -> None:
    agent = IceAgent(True)
    agent.add_local_candidate(Candidate.host(A_HOST))
    creds = agent.local_credentials
    good = f"{creds.ufrag}:peer"
    key = short_term_key(creds.pwd)
    data = {
        "no-username": _request(None, key),
        "wrong-ufrag": _request("nope:peer", key),
        "bad-mac": _request(good, short_term_key("x" * 22)),
        "no-mac": _request(good, None),
    }[case]
    reply = _answer(agent, data)
    assert reply.cls is MessageClass.ERROR
    err = reply.get(ErrorCodeAttr)
    assert err is not None and err.code == code
    assert reply.integrity_offset is None  # unsigned: we do not know the sender
    assert not agent.remote_candidates


def test_missing_priority_signed_400() -> None:
    agent = IceAgent(True)
    agent.add_local_candidate(Candidate.host(A_HOST))
    creds = agent.local_credentials
    reply = _answer(
        agent,
        _request(f"{creds.ufrag}:peer", short_term_key(creds.pwd), priority=False),
    )
    err = reply.get(ErrorCodeAttr)
    assert err is not None and err.code == 400
    assert verify(reply, short_term_key(creds.pwd))


def test_early_check_before_signalling() -> None:
    """RFC 8445 §7.3: a check may arrive before the remote credentials."""
    agent = IceAgent(False)
    agent.add_local_candidate(Candidate.host(A_HOST))
    creds = agent.local_credentials
    reply = _answer(agent, _request(f"{creds.ufrag}:peer", short_term_key(creds.pwd)))
    assert reply.cls is MessageClass.SUCCESS
    assert reply.get(XorMappedAddress) == XorMappedAddress(B_HOST.ip, B_HOST.port)
    # the source became a peer-reflexive remote and a triggered check waits
    assert agent.remote_candidates[0].type is CandidateType.PEER_REFLEXIVE
    assert agent.remote_candidates[0].priority == 12345
    assert agent.next_deadline() is None  # no remote password yet
    agent.set_remote_credentials("peer", "q" * 22)
    assert agent.next_deadline() is not None


def test_unknown_data_dropped_and_close() -> None:
    router, a, b = make_pair()
    router.run(5.0, both(IceState.COMPLETED, a, b))
    a.agent.handle_datagram(
        str(A_HOST), Endpoint("192.0.2.66", 1), b"\x80x", router.now
    )
    router.flush()
    assert a.data() == []
    a.agent.close()
    router.flush()
    assert a.agent.state is IceState.CLOSED and a.states()[-1] is IceState.CLOSED
    assert a.agent.send(b"x") == [] and a.agent.next_deadline() is None
    with pytest.raises(UsageError):
        a.agent.add_remote_candidate(None)


def test_agent_arguments() -> None:
    with pytest.raises(UsageError):
        IceAgent(True, ta=0)
    with pytest.raises(UsageError):
        IceAgent(True, tie_breaker=1 << 64)
    creds = Credentials("abcd", "e" * 22)
    assert IceAgent(True, credentials=creds).local_credentials is creds
    with pytest.raises(UsageError):
        IceConfig(consent_interval=30.0)


# --- ICE restart (RFC 8445 §9) --------------------------------------------------------


def test_ice_restart_keeps_old_pair_until_new() -> None:
    router, a, b = make_pair()
    assert router.run(5.0, both(IceState.COMPLETED, a, b))
    old_a = a.agent.local_credentials
    old_pair = a.agent.selected_pair

    # a restarts and signals; b restarts in answer; checks run again
    new_a = a.agent.restart()
    new_b = b.agent.restart()
    assert new_a != old_a
    # data still flows on the old pair while the new checks run
    for transmit in a.agent.send(b"during"):
        router.send(a, transmit)
    b.agent.set_remote_credentials(new_a.ufrag, new_a.pwd)
    a.agent.set_remote_credentials(new_b.ufrag, new_b.pwd)
    b.agent.add_remote_candidate(_remote_view(a.agent.local_candidates[0]))
    a.agent.add_remote_candidate(_remote_view(b.agent.local_candidates[0]))
    router.run(
        router.now + 5.0,
        lambda: len(a.of(PairSelected)) == len(b.of(PairSelected)) == 2,
    )
    assert len(a.of(PairSelected)) == len(b.of(PairSelected)) == 2
    assert b.data()[0] == b"during"
    assert a.agent.selected_pair == old_pair  # same addresses: same pair again
    assert a.agent.state is b.agent.state is IceState.COMPLETED

    # the old credentials are no longer accepted
    stale = _request(f"{old_a.ufrag}:x", short_term_key(old_a.pwd))
    a.agent.handle_datagram(str(A_HOST), B_HOST, stale, router.now)
    reply = decode(a.agent.datagrams_to_send()[0].data)
    err = reply.get(ErrorCodeAttr)
    assert err is not None and err.code == 401

    # and consent keeps working under the new ones
    router.run(router.now + 40.0)
    assert a.agent.state is IceState.COMPLETED


def test_restart_after_failure() -> None:
    router, a, b = make_pair(exchange=False)
    signal(a, b, candidates=False)
    a.agent.add_local_candidate(None)
    a.agent.end_of_candidates()
    assert a.agent.state is IceState.FAILED
    new = a.agent.restart()
    router.flush()
    assert a.states()[-2:] == [IceState.FAILED, IceState.CHECKING]
    b.agent.restart()
    b_creds = b.agent.local_credentials
    a.agent.set_remote_credentials(b_creds.ufrag, b_creds.pwd)
    b.agent.set_remote_credentials(new.ufrag, new.pwd)
    a.agent.add_remote_candidate(_remote_view(b.agent.local_candidates[0]))
    b.agent.add_remote_candidate(_remote_view(a.agent.local_candidates[0]))
    assert router.run(router.now + 5.0, both(IceState.COMPLETED, a, b))


def test_unknown_required_attribute_gets_signed_420() -> None:
    agent = IceAgent(True)
    agent.add_local_candidate(Candidate.host(A_HOST))
    creds = agent.local_credentials
    msg = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        new_transaction_id(),
        (
            Username(f"{creds.ufrag}:peer"),
            Priority(1),
            UnknownAttribute(0x7FFE, b"\x00\x00\x00\x01"),
        ),
    )
    reply = _answer(agent, encode(msg, key=short_term_key(creds.pwd), fingerprint=True))
    err = reply.get(ErrorCodeAttr)
    assert err is not None and err.code == 420
    assert verify(reply, short_term_key(creds.pwd))


def _first_check() -> tuple[IceAgent, Credentials, Message]:
    agent = IceAgent(True)
    agent.add_local_candidate(Candidate.host(A_HOST))
    peer = Credentials.generate()
    agent.set_remote_credentials(peer.ufrag, peer.pwd)
    agent.add_remote_candidate(Candidate(CandidateType.HOST, B_HOST, 2000, "b"))
    agent.handle_timeout(0.0)
    sent = agent.datagrams_to_send()
    assert [t.destination for t in sent] == [B_HOST]
    return agent, peer, decode(sent[0].data)


def _success(request: Message, mapped: Endpoint, pwd: str | None) -> bytes:
    response = request.reply(
        MessageClass.SUCCESS, (XorMappedAddress(mapped.ip, mapped.port),)
    )
    key = short_term_key(pwd) if pwd is not None else None
    return encode(response, key=key, fingerprint=True)


def test_response_checks_rfc8445_7_2_5() -> None:
    agent, peer, request = _first_check()
    (pair,) = agent.checklist.pairs()

    # unsigned, or signed with the wrong password: ignored, still in progress
    for pwd in (None, "w" * 22):
        agent.handle_datagram(str(A_HOST), B_HOST, _success(request, A_HOST, pwd), 0.1)
        assert pair.state is PairState.IN_PROGRESS

    # from another address than the request went to: the pair fails
    elsewhere = Endpoint("192.0.2.3", 2000)
    data = _success(request, A_HOST, peer.pwd)
    agent.handle_datagram(str(A_HOST), elsewhere, data, 0.1)
    assert pair.state is PairState.FAILED


def test_response_makes_pair_valid() -> None:
    agent, peer, request = _first_check()
    (pair,) = agent.checklist.pairs()
    data = _success(request, A_HOST, peer.pwd)
    agent.handle_datagram(str(A_HOST), B_HOST, data, 0.1)
    assert pair.state is PairState.SUCCEEDED and pair.is_valid
    assert agent.state is IceState.CONNECTED
    # before nomination, data goes over the best valid pair
    assert agent.send(b"early") == [Transmit(str(A_HOST), B_HOST, b"early")]


def _sent_requests(agent: IceAgent, now: float) -> list[Message]:
    agent.handle_timeout(now)
    messages = [decode(t.data) for t in agent.datagrams_to_send()]
    return [m for m in messages if m.cls is MessageClass.REQUEST]


def test_check_on_in_progress_pair_cancels_and_triggers_rfc8445_7_3_1_4() -> None:
    agent, peer, first = _first_check()
    (pair,) = agent.checklist.pairs()
    creds = agent.local_credentials
    request = _request(f"{creds.ufrag}:{peer.ufrag}", short_term_key(creds.pwd))
    agent.handle_datagram(str(A_HOST), B_HOST, request, 0.05)
    (reply,) = agent.datagrams_to_send()
    assert decode(reply.data).cls is MessageClass.SUCCESS
    assert pair.state is PairState.WAITING  # in the triggered-check queue

    # the triggered check goes out at the next Ta; the first is not resent
    sent: list[Message] = []
    for step in range(1, 101):
        sent += _sent_requests(agent, step * 0.02)
    ids = [m.transaction_id for m in sent]
    assert first.transaction_id not in ids
    assert len(set(ids)) == 1
    # after 2 s the first check has timed out, silently: the pair is not failed
    assert agent.checklist.pairs()[0].state is PairState.IN_PROGRESS

    # a late answer to a cancelled check still counts (a new agent: the
    # first check's transaction is now gone)
    again, peer, first = _first_check()
    (pair,) = again.checklist.pairs()
    creds = again.local_credentials
    request = _request(f"{creds.ufrag}:{peer.ufrag}", short_term_key(creds.pwd))
    again.handle_datagram(str(A_HOST), B_HOST, request, 0.05)
    again.datagrams_to_send()
    again.handle_datagram(str(A_HOST), B_HOST, _success(first, A_HOST, peer.pwd), 0.1)
    assert pair.state is PairState.SUCCEEDED and pair.is_valid


@given(st.binary(max_size=120))
def test_any_datagram_is_safe(data: bytes) -> None:
    agent = IceAgent(False)
    agent.add_local_candidate(Candidate.host(A_HOST))
    agent.handle_datagram(str(A_HOST), B_HOST, data, 1.0)
    agent.handle_datagram("unknown", B_HOST, b"\x00\x01" + data, 1.0)
    agent.handle_timeout(2.0)


def test_wrong_remote_password_fails_pairs() -> None:
    """B answers 401 (unsigned, RFC 8489 §9.1.3); A's pair fails at once."""
    router, a, b = make_pair(exchange=False)
    b_creds = b.agent.local_credentials
    a.agent.set_remote_credentials(b_creds.ufrag, "W" * 22)
    a.agent.add_remote_candidate(_remote_view(b.agent.local_candidates[0]))
    a.agent.add_remote_candidate(None)
    a.agent.add_local_candidate(None)
    router.run(1.0)
    assert [p.state for p in a.agent.checklist] == [PairState.FAILED]
    assert a.states()[-1] is IceState.FAILED
