"""The checklist: RFC 8445 §6.1.2 pairing, priorities, pruning, states, order."""

from __future__ import annotations

import pytest

from natkit.ice.candidate import Candidate, CandidateType, LocalCandidate
from natkit.ice.checklist import (
    CandidatePair,
    CheckList,
    ChecklistState,
    PairState,
    can_pair,
    pair_priority,
)
from natkit.ice.nomination import (
    LongShots,
    Nominator,
    best_nominated,
    public_addresses,
)
from natkit.nat.endpoint import Endpoint
from natkit.stun.errors import UsageError

TURN = Endpoint("198.51.100.30", 3478)
STUN = Endpoint("198.51.100.10", 3478)


def host(ip: str, port: int = 5000, *, interface: int = 0) -> Candidate:
    return Candidate.host(Endpoint(ip, port), interface_index=interface)


def local(candidate: Candidate, socket: str | None = None) -> LocalCandidate:
    return LocalCandidate(candidate, socket or str(candidate.sending_base))


def remote(kind: CandidateType, ip: str, port: int, foundation: str) -> Candidate:
    prio = {
        CandidateType.HOST: 2130706431,
        CandidateType.SERVER_REFLEXIVE: 1694498815,
        CandidateType.RELAYED: 16777215,
        CandidateType.PEER_REFLEXIVE: 1862270975,
    }[kind]
    return Candidate(kind, Endpoint(ip, port), prio, foundation)


# --- RFC 8445 §6.1.2.3 pair priority --------------------------------------------------


def test_pair_priority_formula() -> None:
    g, d = 2130706431, 1694498815
    assert pair_priority(g, d) == (1 << 32) * d + 2 * g + 1
    assert pair_priority(d, g) == (1 << 32) * d + 2 * g
    # the agents compute the same priority for one pair, whoever's candidate
    assert pair_priority(g, g) == (1 << 32) * g + 2 * g


def test_both_agents_agree_on_pair_priority() -> None:
    # agent A (controlling) with host a, agent B (controlled) with srflx b
    a = host("192.0.2.1")
    b_base = Endpoint("10.1.1.1", 6000)
    b = Candidate(
        CandidateType.SERVER_REFLEXIVE,
        Endpoint("192.0.2.2", 6000),
        1694498815,
        "b",
        base=b_base,
    )
    on_a = CheckList(controlling=True).add(
        local(a), Candidate(b.type, b.address, b.priority, b.foundation)
    )
    b_host = Candidate(CandidateType.HOST, b_base, b.priority, "bh", base=b_base)
    on_b = CheckList(controlling=False).add(
        LocalCandidate(b_host, "s"), Candidate(a.type, a.address, a.priority, "a")
    )
    assert on_a is not None and on_b is not None
    # G is always the controlling agent's candidate, whichever side computes
    assert on_a.priority == on_b.priority == pair_priority(a.priority, b.priority)


def test_role_switch_recomputes() -> None:
    checklist = CheckList(controlling=True)
    a = host("192.0.2.1")
    r = remote(CandidateType.SERVER_REFLEXIVE, "192.0.2.2", 6000, "x")
    pair = checklist.add(local(a), r)
    assert pair is not None
    before = pair.priority
    checklist.set_role(False)
    assert pair.priority == pair_priority(r.priority, a.priority) != before


# --- RFC 8445 §6.1.2.2 pairing --------------------------------------------------------


def test_pairing_rules() -> None:
    v4 = host("192.0.2.1")
    v6 = host("2001:db8::1")
    ll6 = host("fe80::1")
    assert can_pair(v4, remote(CandidateType.HOST, "192.0.2.9", 1, "a"))
    assert not can_pair(v4, remote(CandidateType.HOST, "2001:db8::9", 1, "a"))
    assert can_pair(v6, remote(CandidateType.HOST, "2001:db8::9", 1, "a"))
    # link-local only with link-local
    assert not can_pair(ll6, remote(CandidateType.HOST, "2001:db8::9", 1, "a"))
    assert not can_pair(v6, remote(CandidateType.HOST, "fe80::9", 1, "a"))
    assert can_pair(ll6, remote(CandidateType.HOST, "fe80::9", 1, "a"))
    # same component only
    other = Candidate(CandidateType.HOST, Endpoint("192.0.2.9", 1), 1, "a", component=2)
    assert not can_pair(v4, other)
    tcp = Candidate(
        CandidateType.HOST, Endpoint("192.0.2.9", 1), 1, "a", transport="tcp"
    )
    assert not can_pair(v4, tcp)


def test_only_base_candidates_pair() -> None:
    base = host("10.0.0.2")
    srflx = Candidate.server_reflexive(
        Endpoint("203.0.113.1", 7000), base=base, server=STUN
    )
    with pytest.raises(UsageError, match="base"):
        CheckList(controlling=True).add(
            local(srflx, "s"), remote(CandidateType.HOST, "192.0.2.9", 1, "a")
        )


def test_redundant_pairs_pruned_rfc8445_6_1_2_4() -> None:
    checklist = CheckList(controlling=True)
    base = local(host("192.0.2.1"))
    address = Endpoint("192.0.2.9", 9)
    low = Candidate(CandidateType.SERVER_REFLEXIVE, address, 100, "lo")
    high = Candidate(CandidateType.HOST, address, 2000, "hi")
    assert checklist.add(base, low) is not None
    # the same base and remote address, better priority: it replaces the pair
    replaced = checklist.add(base, high)
    assert replaced is not None and len(checklist) == 1
    # and a worse one is pruned
    assert checklist.add(base, low) is None
    assert checklist.pairs()[0].remote is high


def test_checklist_limit_rfc8445_6_1_2_5() -> None:
    checklist = CheckList(controlling=True, max_pairs=3)
    base = local(host("192.0.2.1"))
    remotes = [
        Candidate(CandidateType.HOST, Endpoint("192.0.2.9", port), 1000 * port, "f")
        for port in range(1, 6)
    ]
    checklist.add_all([base], remotes)
    assert len(checklist) == 3
    ports = sorted(p.remote.address.port for p in checklist)
    assert ports == [3, 4, 5]
    with pytest.raises(UsageError):
        CheckList(controlling=True, max_pairs=0)


# --- RFC 8445 §6.1.2.6 states and §6.1.4.2 order --------------------------------------


def build() -> tuple[CheckList, list[Candidate]]:
    checklist = CheckList(controlling=True)
    locals_ = [local(host("192.0.2.1")), local(host("192.0.2.1", 5001), "second")]
    remotes = [
        remote(CandidateType.HOST, "192.0.2.9", 1, "rh"),
        remote(CandidateType.SERVER_REFLEXIVE, "192.0.2.10", 2, "rs"),
    ]
    checklist.add_all(locals_, remotes)
    return checklist, remotes


def test_initial_states_one_waiting_per_foundation() -> None:
    checklist, _ = build()
    # both locals share a foundation (same type and base IP), so two
    # foundations exist: each gets its best pair Waiting, the rest Frozen
    states = [(p.remote.foundation, p.state) for p in checklist]
    assert len(checklist) == 4
    waiting = [f for f, s in states if s is PairState.WAITING]
    assert sorted(waiting) == ["rh", "rs"]
    assert sum(1 for _, s in states if s is PairState.FROZEN) == 2


def test_order_triggered_then_waiting_then_unfreeze() -> None:
    checklist, _ = build()
    ordered = checklist.pairs()
    frozen = [p for p in ordered if p.state is PairState.FROZEN]

    # a triggered check jumps the queue
    checklist.trigger(frozen[-1])
    assert checklist.next_pair() is frozen[-1]

    # then Waiting pairs by priority
    first = checklist.next_pair()
    assert first is not None and first.state is PairState.WAITING
    first.state = PairState.IN_PROGRESS
    second = checklist.next_pair()
    assert second is not None and second is not first
    second.state = PairState.IN_PROGRESS
    frozen[-1].state = PairState.IN_PROGRESS

    # nothing Waiting: the Frozen pair's foundation is busy, so nothing
    assert checklist.next_pair() is None
    first.state = PairState.FAILED
    second.state = PairState.FAILED
    frozen[-1].state = PairState.FAILED
    unfrozen = checklist.next_pair()
    assert unfrozen is frozen[0] and unfrozen.state is PairState.WAITING


def test_success_unfreezes_foundation_rfc8445_7_2_5_3_3() -> None:
    checklist, _ = build()
    frozen = [p for p in checklist if p.state is PairState.FROZEN]
    target = frozen[0]
    sibling = next(
        p for p in checklist if p.foundation == target.foundation and p is not target
    )
    sibling.state = PairState.SUCCEEDED
    checklist.unfreeze(sibling.foundation)
    assert target.state is PairState.WAITING


def test_valid_list_and_completion() -> None:
    checklist, _ = build()
    pairs = checklist.pairs()
    for pair in pairs[:2]:
        pair.state = PairState.SUCCEEDED
        pair.make_valid(pair.local)
    assert checklist.valid_pairs() == pairs[:2]
    pairs[1].nominated = True
    assert best_nominated(checklist) is pairs[1]
    checklist.complete()
    assert checklist.state is ChecklistState.COMPLETED
    assert checklist.next_pair() is None and not checklist.has_work()
    assert checklist.concluded()


def test_nominator_waits_for_better_pairs() -> None:
    checklist, _ = build()
    nominator = Nominator(delay=1.0)
    pairs = checklist.pairs()
    low = pairs[-1]
    low.state = PairState.SUCCEEDED
    low.make_valid(low.local)
    # better pairs are still unchecked: wait, up to the delay
    assert nominator.choose(checklist, 10.0) is None
    assert nominator.deadline(checklist) == 11.0
    assert nominator.choose(checklist, 11.0) is low
    assert nominator.choose(checklist, 11.5) is None  # one at a time
    nominator.failed(low)
    # the best pair is valid: nominate at once
    best = pairs[0]
    best.state = PairState.SUCCEEDED
    best.make_valid(best.local)
    fresh = Nominator(delay=5.0)
    assert fresh.choose(checklist, 20.0) is best


# --- long shots: host pairs between two private networks ----------------------------


def _pair_of(mine: Candidate, theirs: Candidate) -> CandidatePair:
    return CandidatePair(local(mine), theirs, controlling=True)


def _natted(ip: str, public: str) -> list[Candidate]:
    base = host(ip)
    srflx = Candidate.server_reflexive(Endpoint(public, 6000), base=base, server=STUN)
    return [base, srflx]


def test_public_addresses_are_srflx_and_non_private_hosts() -> None:
    assert public_addresses(_natted("10.1.0.2", "203.0.113.1")) == {"203.0.113.1"}
    assert public_addresses([host("203.0.113.11")]) == {"203.0.113.11"}
    assert public_addresses([host("2001:db8::5")]) == {"2001:db8::5"}
    for private in ("10.0.0.1", "172.16.5.5", "192.168.1.2", "100.64.0.9"):
        assert public_addresses([host(private)]) == frozenset()
    assert public_addresses([host("fd00::1"), host("127.0.0.1")]) == frozenset()


def test_host_pair_across_two_nats_is_a_long_shot() -> None:
    left = _natted("10.1.0.2", "203.0.113.1")
    right = _natted("10.2.0.2", "203.0.113.2")
    long_shots = LongShots(left, right)
    assert long_shots(_pair_of(left[0], right[0]))
    # toward the peer's server-reflexive address: worth waiting for
    assert not long_shots(_pair_of(left[0], right[1]))
    # toward an open peer's public host address: the NAT maps it, it works
    open_peer = [host("203.0.113.11")]
    assert not LongShots(left, open_peer)(_pair_of(left[0], open_peer[0]))
    # from the open peer toward the NATed peer's private address: no route
    assert LongShots(open_peer, left)(_pair_of(open_peer[0], left[0]))


def test_host_pair_behind_one_nat_is_not_a_long_shot() -> None:
    left = _natted("10.1.0.2", "203.0.113.1")
    right = _natted("10.1.0.3", "203.0.113.1")
    pair = _pair_of(left[0], right[0])
    assert not LongShots(left, right)(pair)
    # nothing known about the peer's public side: no guess
    assert not LongShots(left, right[:1])(pair)


def test_srflx_of_a_symmetric_nat_is_a_long_shot() -> None:
    left = _natted("10.1.0.2", "203.0.113.1")
    right = _natted("10.2.0.2", "203.0.113.2")
    toward_srflx = _pair_of(left[0], right[1])
    assert not LongShots(left, right)(toward_srflx)
    # the peer's checks came from another port of its NAT's address
    moved = Candidate(
        CandidateType.PEER_REFLEXIVE, Endpoint("203.0.113.2", 6123), 1862270975, "p"
    )
    assert LongShots(left, [*right, moved])(toward_srflx)
    # from the port the srflx names (endpoint-independent mapping): no
    same = Candidate(
        CandidateType.PEER_REFLEXIVE, Endpoint("203.0.113.2", 6000), 1862270975, "p"
    )
    assert not LongShots(left, [*right, same])(toward_srflx)


def test_nominator_does_not_wait_for_ignored_pairs() -> None:
    checklist, _ = build()
    pairs = checklist.pairs()
    low = pairs[-1]
    low.state = PairState.SUCCEEDED
    low.make_valid(low.local)
    waiting = Nominator(delay=1.0)
    assert waiting.choose(checklist, 10.0) is None
    hasty = Nominator(delay=1.0)
    assert hasty.choose(checklist, 10.0, ignore=lambda p: p is not low) is low


def _relayed_checklist() -> tuple[CheckList, CandidatePair]:
    """A valid relayed pair and a better direct pair still being checked."""
    checklist = CheckList(controlling=True)
    relay = Candidate.relayed(Endpoint("198.51.100.30", 49152), server=TURN)
    checklist.add_all(
        [local(host("10.1.0.2")), local(relay, "relay")],
        [remote(CandidateType.SERVER_REFLEXIVE, "203.0.113.2", 7000, "rs")],
    )
    relayed = next(p for p in checklist if p.is_relayed)
    relayed.state = PairState.SUCCEEDED
    relayed.make_valid(relayed.local)
    return checklist, relayed


def test_relayed_pair_waits_longer_before_end_of_candidates() -> None:
    checklist, relayed = _relayed_checklist()
    nominator = Nominator(delay=0.2, relay_delay=1.0)
    assert nominator.choose(checklist, 10.0, gathered=False) is None
    assert nominator.deadline(checklist, gathered=False) == 10.0 + 3.0
    assert nominator.choose(checklist, 12.9, gathered=False) is None
    assert nominator.choose(checklist, 13.0, gathered=False) is relayed


def test_relayed_pair_waits_after_the_latest_candidate() -> None:
    checklist, relayed = _relayed_checklist()
    nominator = Nominator(delay=0.2, relay_delay=1.0)
    assert nominator.choose(checklist, 10.0) is None
    assert nominator.deadline(checklist) == 11.0
    nominator.saw_candidate(10.8)  # a late candidate: its checks get 0.5 s
    assert nominator.deadline(checklist) == pytest.approx(11.3)
    assert nominator.choose(checklist, 11.0) is None
    assert nominator.choose(checklist, 11.3) is relayed
