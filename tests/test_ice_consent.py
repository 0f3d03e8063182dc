"""Consent freshness (RFC 7675) and keepalives (RFC 8445 §11)."""

from __future__ import annotations

import itertools
import random

import pytest

from natkit.ice.candidate import Candidate
from natkit.ice.config import IceConfig
from natkit.ice.consent import ConsentSession
from natkit.ice.credentials import Credentials
from natkit.ice.events import ConsentLost, IceState, SelectedPair, Transmit
from natkit.nat.endpoint import Endpoint
from natkit.stun.constants import MessageClass
from natkit.stun.errors import UsageError
from natkit.stun.message import decode
from test_ice_agent import Peer, Router, both, make_pair


def session(**kwargs: float | None) -> ConsentSession:
    host = Candidate.host(Endpoint("192.0.2.1", 1))
    pair = SelectedPair(host, host, "s")
    return ConsentSession(
        pair,
        local=Credentials.generate(),
        remote=Credentials.generate(),
        priority=1,
        now=100.0,
        rng=random.Random(3),
        **kwargs,  # type: ignore[arg-type]
    )


# --- the timers alone -----------------------------------------------------------------


def test_consent_spacing_is_randomised_rfc7675_5_1() -> None:
    s = session()
    gaps = []
    now = 100.0
    for _ in range(200):
        assert s.next_check_at is not None
        now = s.next_check_at
        assert s.check_due(now)
        assert s.next_check_at is not None
        gaps.append(s.next_check_at - now)
    assert min(gaps) >= 4.0 and max(gaps) <= 6.0
    assert max(gaps) - min(gaps) > 1.0  # really random, not fixed


def test_consent_expiry_and_staleness() -> None:
    s = session()
    assert not s.expired(129.9) and s.expired(130.0)
    assert not s.went_stale(114.0)
    assert s.went_stale(115.0) and not s.went_stale(116.0)  # reported once
    assert s.responded(116.0)  # it was stale
    assert s.expires_at == 146.0
    assert s.silent_for(120.0) == 4.0


def test_keepalive_timer_rfc8445_11() -> None:
    s = session(interval=None)
    assert s.expires_at is None and not s.expired(1e9)
    assert s.next_deadline() == 115.0
    assert not s.keepalive_due(114.9) and s.keepalive_due(115.0)
    s.sent(115.0)
    assert s.next_deadline() == 130.0


def test_consent_settings() -> None:
    with pytest.raises(UsageError):
        IceConfig(consent_interval=0)
    with pytest.raises(UsageError):
        IceConfig(disconnect_after=40.0)
    with pytest.raises(UsageError):
        IceConfig(keepalive_interval=0)


# --- two agents -----------------------------------------------------------------------


def connected() -> tuple[Router, Peer, Peer]:
    router, a, b = make_pair()
    assert router.run(5.0, both(IceState.COMPLETED, a, b))
    return router, a, b


def consent_requests(peer: Peer, since: float) -> list[float]:
    """First-transmission times of the peer's Binding requests after ``since``."""
    first: dict[bytes, float] = {}
    for when, transmit in peer.sent:
        msg = decode(transmit.data) if transmit.data[0] < 4 else None
        if msg is not None and msg.cls is MessageClass.REQUEST and when > since:
            first.setdefault(msg.transaction_id, when)
    return sorted(first.values())


def test_consent_checks_keep_the_pair() -> None:
    router, a, b = connected()
    selected_at = router.now
    router.run(selected_at + 120.0)
    assert a.agent.state is b.agent.state is IceState.COMPLETED
    assert not a.of(ConsentLost) and not b.of(ConsentLost)
    times = consent_requests(a, selected_at)
    gaps = [y - x for x, y in itertools.pairwise(times)]
    assert len(times) >= 18
    assert all(3.99 <= g <= 6.01 for g in gaps)

    # RFC 8445 §11: never 15 s without a packet on the selected pair
    sent = [when for when, _ in a.sent if when > selected_at]
    silences = [y - x for x, y in itertools.pairwise([selected_at, *sent])]
    assert max(silences) < 15.0


def test_consent_lost_when_peer_vanishes_rfc7675() -> None:
    router, a, b = connected()
    gone_at = router.now
    b.agent.close()
    router.drop = lambda peer, transmit: True
    router.run(gone_at + 60.0)

    lost = a.of(ConsentLost)
    assert len(lost) == 1
    assert 30.0 <= lost[0].silent_for < 31.0
    assert a.states()[-2:] == [IceState.DISCONNECTED, IceState.FAILED]
    assert a.agent.selected_pair is None
    assert a.agent.send(b"anyone?") == []
    # no more consent checks once consent is gone
    last_sent = max(when for when, _ in a.sent)
    assert last_sent < gone_at + 31.0


def test_requests_alone_do_not_renew_consent() -> None:
    """RFC 7675 §5.1: only responses to our checks count."""
    router, a, b = connected()

    def drop_answers(peer: Peer, transmit: Transmit) -> bool:
        return peer is b and decode(transmit.data).cls is MessageClass.SUCCESS

    router.drop = drop_answers
    router.run(router.now + 40.0)
    assert len(a.of(ConsentLost)) == 1
    # a still answers b's checks, so b keeps its consent
    assert b.agent.state is IceState.COMPLETED and not b.of(ConsentLost)


def test_disconnected_then_back() -> None:
    router, a, b = connected()
    start = router.now
    router.drop = lambda peer, transmit: True
    router.run(start + 20.0)
    assert a.agent.state is IceState.DISCONNECTED
    router.drop = lambda peer, transmit: False
    router.run(start + 30.0)
    assert a.states()[-2:] == [IceState.DISCONNECTED, IceState.COMPLETED]
    assert not a.of(ConsentLost)


def test_keepalives_without_consent() -> None:
    config = IceConfig(consent_interval=None)
    router, a, b = make_pair(config=config)
    assert router.run(5.0, both(IceState.COMPLETED, a, b))
    start = router.now
    router.run(start + 100.0)
    indications = [
        when
        for when, t in a.sent
        if when > start and decode(t.data).cls is MessageClass.INDICATION
    ]
    assert len(indications) == 6
    assert all(abs((y - x) - 15.0) < 1e-6 for x, y in itertools.pairwise(indications))
    # sending data postpones the keepalive
    router.run(router.now + 10.0)
    before = len(a.sent)
    for transmit in a.agent.send(b"data", now=router.now):
        router.send(a, transmit)
    router.run(router.now + 10.0)
    assert all(
        decode(t.data).cls is not MessageClass.INDICATION
        for _, t in a.sent[before + 1 :]
        if t.data[0] < 4
    )
