"""The ICE agent, sans-IO (RFC 8445 full ICE, RFC 7675 consent, RFC 8838 trickle).

:class:`IceAgent` runs ICE for one data stream: it pairs candidates, paces
and retransmits connectivity checks, answers the peer's checks, nominates,
keeps consent on the selected pair and carries application data. It never
opens a socket or reads a clock: a driver (``natkit.net.ice_driver``) owns
sockets, TURN allocations and time.

The boundary with a driver
==========================

Sockets are opaque ids (:data:`~natkit.ice.candidate.SocketId`, a string)
that the driver chooses: one per UDP socket it gathered a host candidate
on, one per TURN allocation. Addresses are
:class:`~natkit.nat.endpoint.Endpoint` (canonical IP, port). ``now`` is
float seconds of one monotonic clock. Network input never raises; API
misuse raises :class:`~natkit.stun.errors.UsageError`.

Input:

``IceAgent(controlling, *, tie_breaker=None, ta=0.02, config=None,``
``credentials=None, rng=None, name=None)``
    ``agent.local_credentials`` (:class:`Credentials`: ufrag, pwd) go to
    the peer by signalling; ``config`` is an :class:`IceConfig`.
``set_remote_credentials(ufrag, pwd)``
    The peer's ice-ufrag/ice-pwd. Checks start once they are known (the
    peer's early checks are answered before that).
``add_local_candidate(candidate, *, socket=None) -> bool``
    A host candidate (``Candidate.host(Endpoint)``), then the
    server-reflexive candidates found from it
    (``Candidate.server_reflexive(mapped, base=host, server=stun)``, same
    socket), or a relayed one (``Candidate.relayed(relayed, server=turn,
    mapped=...)`` on the TURN allocation's socket). ``socket`` defaults to
    ``str(candidate.base)``. Returns False for a redundant candidate (RFC
    8445 §5.1.3: do not signal it). Trickling in while checks run is fine.
    ``add_local_candidate(None)`` says local gathering is over.
``add_remote_candidate(candidate | None) -> bool``
    A signalled or trickled remote candidate
    (:func:`natkit.ice.sdp.parse_candidate`); non-UDP ones and ones whose
    ``ufrag`` extension names another generation are ignored (False).
    ``None`` (or :meth:`end_of_candidates`) is the peer's end-of-candidates.
    Failure is declared only after both ends of candidates (RFC 8838 §8).
``handle_datagram(socket, source, data, now)``
    A datagram received on ``socket`` from ``source``. For a TURN socket:
    what the TURN client core unwrapped (``DataReceived``), with the peer
    address as ``source``. STUN checks and responses are handled (other STUN
    traffic on a shared socket, e.g. the driver's own Binding responses, is
    ignored); anything else from a known remote address becomes a
    :class:`~natkit.ice.events.DataReceived` event.
``handle_timeout(now)``
    Call at (or after) :meth:`next_deadline`; early calls are harmless.
``send(data, *, now=None) -> list[Transmit]``
    Application data, returned (not queued): on the selected pair, or
    before nomination on the best valid pair; empty when no pair has
    consent (RFC 7675 §5.1).
``restart() -> Credentials``
    ICE restart (RFC 8445 §9): new local credentials to signal, with the
    local candidates again; the peer's credentials and candidates must be
    given again. The selected pair keeps carrying data (and consent runs
    on it under the old credentials) until a new pair is selected.
``close()``
    Stops everything; later input is ignored, output is empty.

Output:

``datagrams_to_send() -> list[Transmit]``
    ``Transmit(socket, destination, data)``: send ``data`` from ``socket``
    to ``destination``; for a TURN socket, ``turn_client.send(peer, data)``
    (a Send indication, or ChannelData once the driver bound a channel).
``next_event() -> IceEvent | None``
    :class:`StateChanged` (``old -> new`` of :class:`IceState`),
    :class:`PairSelected`, :class:`DataReceived`, :class:`ConsentLost`,
    :class:`RoleChanged`, :class:`CandidateLearned` (peer-reflexive) and
    :class:`PermissionNeeded` (``socket``, ``ip``: install a TURN
    permission for that IP on that allocation; checks through it are lost,
    and retransmitted, until then).
``next_deadline() -> float | None``
    When to call ``handle_timeout``; a past time means at once.

After every input call: send ``datagrams_to_send()``, drain
``next_event()``, re-arm the timer at ``next_deadline()``.
:attr:`IceAgent.selected_pair` (local, remote, socket) and
:attr:`IceAgent.state` can be read at any time.

Timers: one new check every Ta (default 20 ms, RFC 8445 §14.2); a check is
retransmitted with :attr:`IceConfig.check_policy` (default RTO 200 ms, 7
sends, given up 14.2 s after the first, see :mod:`natkit.ice.config`).
Consent checks every 5 s ± 20 % (RFC 7675) double as the RFC 8445 §11
keepalives (see :mod:`natkit.ice.consent`).

The agent's pieces: :mod:`~natkit.ice.candidate` and :mod:`~natkit.ice.sdp`
(candidates and their text form), :mod:`~natkit.ice.checklist` (pairs and
scheduling), :mod:`~natkit.ice.checks` (the check messages),
:mod:`~natkit.ice.connectivity` (both sides of the checks),
:mod:`~natkit.ice.nomination` and :mod:`~natkit.ice.consent`.
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets

from natkit.ice.candidate import (
    Candidate,
    CandidateType,
    LocalCandidate,
    SocketId,
    is_redundant,
)
from natkit.ice.checklist import CheckList, ChecklistState
from natkit.ice.checks import build_keepalive, request_attributes
from natkit.ice.config import DEFAULT_TA, IceConfig
from natkit.ice.connectivity import Check, ConnectivityChecks, prflx_priority
from natkit.ice.consent import ConsentSession
from natkit.ice.credentials import Credentials
from natkit.ice.events import (
    ConsentLost,
    DataReceived,
    IceEvent,
    IceState,
    PairSelected,
    SelectedPair,
    Transmit,
)
from natkit.ice.nomination import LongShots, best_nominated
from natkit.nat.endpoint import Endpoint
from natkit.stun.constants import MessageClass
from natkit.stun.errors import DecodeError, UsageError
from natkit.stun.integrity import short_term_key
from natkit.stun.message import decode

__all__ = ["IceAgent", "IceConfig"]

logger = logging.getLogger(__name__)


class IceAgent(ConnectivityChecks):
    """One full ICE agent (RFC 8445) for one data stream; see the module doc."""

    _ids = itertools.count(1)

    def __init__(
        self,
        controlling: bool,
        *,
        tie_breaker: int | None = None,
        ta: float = DEFAULT_TA,
        config: IceConfig | None = None,
        credentials: Credentials | None = None,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        if ta <= 0:
            raise UsageError(f"Ta must be positive, not {ta}")
        if tie_breaker is None:
            tie_breaker = secrets.randbits(64)
        if not 0 <= tie_breaker < 1 << 64:
            raise UsageError("the tie-breaker is a 64-bit unsigned integer")
        super().__init__(
            controlling=controlling,
            tie_breaker=tie_breaker,
            ta=ta,
            config=config or IceConfig(),
            credentials=credentials or Credentials.generate(),
            name=name or f"ice-{next(self._ids)}",
        )
        self._rng = rng or random.Random(secrets.randbits(64))
        self._local_done = False
        self._remote_done = False

    def __repr__(self) -> str:
        role = "controlling" if self.controlling else "controlled"
        return f"<IceAgent {self.name} {role} {self.state.value}>"

    # --- inspection -------------------------------------------------------------------

    @property
    def selected_pair(self) -> SelectedPair | None:
        """The pair data goes over once one is selected (RFC 8445 §8.1.1)."""
        return self._session.selected if self._session is not None else None

    @property
    def local_candidates(self) -> list[Candidate]:
        """Ours, peer-reflexive ones learned from checks included."""
        return [local.candidate for local in self._locals]

    @property
    def remote_candidates(self) -> list[Candidate]:
        """The peer's, peer-reflexive ones learned from its checks included."""
        return list(self._remotes)

    # --- output -----------------------------------------------------------------------

    def datagrams_to_send(self) -> list[Transmit]:
        """What to send, in order; the queue is emptied."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> IceEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` is next needed (a past time means now)."""
        if self.state is IceState.CLOSED:
            return None
        times = [self._table.next_deadline(), self._pacing_deadline()]
        if self.controlling and not self._settled() and self._checking():
            times.append(
                self._nominator.deadline(self.checklist, gathered=self._gathered())
            )
        if self._session is not None:
            times.append(self._session.next_deadline())
        return min((t for t in times if t is not None), default=None)

    # --- credentials and candidates ---------------------------------------------------

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """The peer's ice-ufrag and ice-pwd (RFC 8445 §5.3); checks can start."""
        credentials = Credentials(ufrag, pwd)
        if self.remote_credentials not in (None, credentials):
            raise UsageError("remote credentials changed: call restart() first")
        self.remote_credentials = credentials

    def add_local_candidate(
        self, candidate: Candidate | None, *, socket: SocketId | None = None
    ) -> bool:
        """One of our candidates (module docstring); None: gathering is done."""
        self._require_open()
        if candidate is None:
            self._local_done = True
            self._check_failure()
            return True
        local = self._local_record(candidate, socket)
        if not local.candidate.is_udp:
            logger.debug("%s: ignoring non-UDP local %s", self.name, local)
            return False
        if is_redundant(local.candidate, self.local_candidates):
            logger.debug("%s: %s is redundant (RFC 8445 §5.1.3)", self.name, local)
            return False
        self._locals.append(local)
        self._nominator.saw_candidate(self._now)
        if local.is_base:
            self._bases[local.socket] = local
            self._pair([local], self._remotes)
        return True

    def _local_record(
        self, candidate: Candidate, socket: SocketId | None
    ) -> LocalCandidate:
        kind = candidate.type
        if kind in (CandidateType.HOST, CandidateType.RELAYED):
            if candidate.base not in (None, candidate.address):
                raise UsageError(f"a {kind.value} candidate is its own base")
        elif candidate.base is None:
            raise UsageError(f"a {kind.value} candidate needs its base")
        base = candidate.sending_base
        if candidate.base is None:
            candidate = _with_base(candidate, base)
        local = LocalCandidate(candidate, socket if socket is not None else str(base))
        owner = self._bases.get(local.socket)
        if local.is_base and owner is not None and owner.candidate.address != base:
            raise UsageError(f"socket {local.socket} already has {owner.candidate}")
        if not local.is_base and (owner is None or owner.candidate.address != base):
            raise UsageError(f"add the host candidate {base} of {local.socket} first")
        return local

    def add_remote_candidate(self, candidate: Candidate | None) -> bool:
        """A remote candidate, or None for end-of-candidates (RFC 8838 §8)."""
        self._require_open()
        if candidate is None:
            self._remote_done = True
            self._check_failure()
            return True
        if not candidate.is_udp:
            logger.debug("%s: ignoring non-UDP remote %s", self.name, candidate)
            return False
        ufrag, remote = candidate.ufrag, self.remote_credentials
        if ufrag is not None and remote is not None and ufrag != remote.ufrag:
            logger.debug("%s: %s is of another generation", self.name, candidate)
            return False
        if candidate.base is not None:
            candidate = _with_base(candidate, None)
        for index, known in enumerate(self._remotes):
            if known.address != candidate.address:
                continue
            if known.component != candidate.component:
                continue
            if known.type is not CandidateType.PEER_REFLEXIVE:
                return False
            # a signalled candidate replaces the peer-reflexive one we learned
            self._remotes[index] = candidate
            for pair in self.checklist:
                if pair.remote is known:
                    pair.remote = candidate
                    pair.set_role(self.controlling)
            return True
        self._remotes.append(candidate)
        self._nominator.saw_candidate(self._now)
        self._pair(list(self._bases.values()), [candidate])
        return True

    def end_of_candidates(self) -> None:
        """The peer has sent all its candidates (RFC 8838 §8.2)."""
        self.add_remote_candidate(None)

    # --- datagrams --------------------------------------------------------------------

    def handle_datagram(
        self, socket: SocketId, source: Endpoint, data: bytes, now: float
    ) -> None:
        """A datagram that arrived on ``socket`` from ``source``."""
        self._now = max(self._now, now)
        if self.state is IceState.CLOSED or not data:
            return

        # RFC 7983 §7: a first byte of 0-3 is STUN, anything else is data
        if data[0] > 3:
            if self._knows(socket, source):
                self._events.append(DataReceived(socket, source, bytes(data)))
            else:
                logger.debug("%s: data from unknown %s dropped", self.name, source)
            return
        try:
            msg = decode(data)
        except DecodeError as exc:
            logger.debug("%s: bad STUN from %s: %s", self.name, source, exc)
            return
        if msg.cls is MessageClass.REQUEST:
            self._on_request(socket, source, msg, now)
        elif msg.cls in (MessageClass.SUCCESS, MessageClass.ERROR):
            self._on_response(socket, source, msg, now)

    def _knows(self, socket: SocketId, source: Endpoint) -> bool:
        """Data is taken from the selected pair or any pair of the checklist."""
        selected = self.selected_pair
        if selected is not None and selected.socket == socket:
            if selected.remote.address == source:
                return True
        return self.checklist.find(socket, source) is not None

    def send(self, data: bytes, *, now: float | None = None) -> list[Transmit]:
        """Data on the selected pair (before nomination: the best valid pair).

        RFC 7675 §5.1: nothing is sent once consent is lost (empty list).
        """
        if self.state in (IceState.CLOSED, IceState.FAILED):
            return []
        if self._session is not None:
            self._session.sent(now if now is not None else self._now)
            pair = self._session.selected
            return [Transmit(pair.socket, pair.remote.address, bytes(data))]
        valid = self.checklist.valid_pairs()
        if not valid:
            return []
        best = valid[0]
        return [Transmit(best.local.socket, best.remote.address, bytes(data))]

    # --- timers -----------------------------------------------------------------------

    def handle_timeout(self, now: float) -> None:
        """Retransmit, time out, pace new checks, nominate, run consent."""
        self._now = max(self._now, now)
        if self.state is IceState.CLOSED:
            return

        # step 1: retransmissions and timeouts of running checks
        self._run_transactions(now)

        # step 2: one new check per Ta (RFC 8445 §6.1.4.2)
        due = self._pacing_deadline()
        if due is not None and now >= due:
            pair = self.checklist.next_pair()
            if pair is not None:
                self._start_check(pair, now)

        # step 3: nomination, consent, overall failure
        self._maybe_nominate(now)
        self._run_consent(now)
        self._check_failure()

    # --- nomination and selection (RFC 8445 §8) ---------------------------------------

    def _checking(self) -> bool:
        return self.checklist.state is ChecklistState.RUNNING

    def _settled(self) -> bool:
        """A pair is selected in the current generation (no restart pending)."""
        return self._session is not None and self._previous_local is None

    def _gathered(self) -> bool:
        """Both sides have signalled end-of-candidates (RFC 8838 §8)."""
        return self._local_done and self._remote_done

    def _maybe_nominate(self, now: float) -> None:
        if not self.controlling or self._settled():
            return
        if not self._checking():
            return
        long_shots = LongShots((c.candidate for c in self._locals), self._remotes)
        pair = self._nominator.choose(
            self.checklist, now, gathered=self._gathered(), ignore=long_shots
        )
        if pair is not None:
            logger.debug("%s: nominating %r", self.name, pair)
            pair.nominate_next = True
            self.checklist.trigger(pair)

    def _select(self, now: float) -> None:
        """RFC 8445 §8.1.1: the best nominated pair becomes the selected pair."""
        pair = best_nominated(self.checklist)
        remote = self.remote_credentials
        if pair is None or pair.valid_local is None or remote is None:
            return
        selected = SelectedPair(
            pair.valid_local.candidate, pair.remote, pair.local.socket
        )
        if self._settled() and self._session and self._session.selected == selected:
            return
        cfg = self.config
        self._session = ConsentSession(
            selected,
            local=self.local_credentials,
            remote=remote,
            priority=prflx_priority(pair.local.candidate),
            now=now,
            rng=self._rng,
            interval=cfg.consent_interval,
            timeout=cfg.consent_timeout,
            disconnect_after=cfg.disconnect_after,
            keepalive=cfg.keepalive_interval,
        )
        self._previous_local = None
        self.checklist.complete()
        logger.debug("%s: selected %s", self.name, selected)
        self._events.append(PairSelected(selected))
        self._machine.set(IceState.COMPLETED)

    # --- consent (RFC 7675) and keepalives (RFC 8445 §11) -----------------------------

    def _run_consent(self, now: float) -> None:
        session = self._session
        if session is None:
            return
        if session.expired(now):
            self._consent_lost(session, now)
            return
        if session.check_due(now):
            self._consent_check(session, now)
        if session.keepalive_due(now):
            pair = session.selected
            keepalive = Transmit(pair.socket, pair.remote.address, build_keepalive())
            self._outbox.append(keepalive)
            session.sent(now)
        if session.went_stale(now) and self.state is IceState.COMPLETED:
            self._machine.set(IceState.DISCONNECTED)

    def _consent_check(self, session: ConsentSession, now: float) -> None:
        """RFC 7675 §5.1: a Binding request on the selected pair, new id each."""
        attributes = request_attributes(
            local=session.local,
            remote=session.remote,
            priority=session.priority,
            controlling=self.controlling,
            tie_breaker=self.tie_breaker,
            software=self.config.software,
        )
        pair = session.selected
        check = Check(
            pair=None,
            session=session,
            socket=pair.socket,
            destination=pair.remote.address,
            key=short_term_key(session.remote.pwd),
            controlling=self.controlling,
            use_candidate=False,
            priority=session.priority,
            generation=self._generation,
        )
        self._launch(attributes, session.remote, self.config.consent_policy, now, check)

    def _consent_response(self, session: ConsentSession, now: float) -> None:
        if session is not self._session:
            return
        if session.responded(now) and self.state is IceState.DISCONNECTED:
            self._machine.set(IceState.COMPLETED)

    def _consent_lost(self, session: ConsentSession, now: float) -> None:
        silent = session.silent_for(now)
        logger.debug("%s: consent lost after %.1f s on %s", self.name, silent, session)
        self._session = None
        self._previous_local = None
        self._cancel_checks(now, "consent lost", consent=True)
        self._events.append(ConsentLost(session.selected, silent))
        self._machine.set(IceState.FAILED)

    # --- failure, restart, close ------------------------------------------------------

    def _check_failure(self) -> None:
        """RFC 8838 §8: fail only after both ends of candidates and every pair."""
        if self._session is not None or self.state in (
            IceState.CLOSED,
            IceState.FAILED,
        ):
            return
        if not self._gathered():
            return
        if self.checklist.valid_pairs() or not self.checklist.concluded():
            return
        logger.debug("%s: every candidate pair failed", self.name)
        self.checklist.fail()
        self._machine.set(IceState.FAILED)

    def restart(self) -> Credentials:
        """RFC 8445 §9: new credentials and checklist; the old pair carries on.

        Returns the new local credentials, to signal with the new candidates.
        The remote credentials and candidates must be given again; local
        candidates (but the peer-reflexive ones) are kept, and so is the
        local end-of-candidates.
        """
        self._require_open()
        session = self._session
        self._previous_local = session.local if session is not None else None
        self.local_credentials = Credentials.generate()
        self.remote_credentials = None
        self._remotes = []
        self._remote_done = False
        self._locals = [
            local
            for local in self._locals
            if local.candidate.type is not CandidateType.PEER_REFLEXIVE
        ]
        self._generation += 1
        self._cancel_checks(self._now, "ICE restart", consent=False)
        self.checklist = CheckList(
            controlling=self.controlling, max_pairs=self.config.max_pairs
        )
        self._nominator.reset()
        self._last_check_at = None
        if self._session is None and self.state is not IceState.NEW:
            self._machine.set(IceState.CHECKING)
        logger.debug("%s: ICE restart, generation %d", self.name, self._generation)
        return self.local_credentials

    def close(self) -> None:
        """Stop everything: no more output; inputs are ignored."""
        if self.state is IceState.CLOSED:
            return
        self._cancel_checks(self._now, "closed", consent=True)
        self._outbox.clear()
        self._session = None
        self._machine.set(IceState.CLOSED)

    def _require_open(self) -> None:
        if self.state is IceState.CLOSED:
            raise UsageError(f"{self.name} is closed")


def _with_base(candidate: Candidate, base: Endpoint | None) -> Candidate:
    return Candidate(
        type=candidate.type,
        address=candidate.address,
        priority=candidate.priority,
        foundation=candidate.foundation,
        component=candidate.component,
        transport=candidate.transport,
        related=candidate.related,
        base=base,
        extensions=candidate.extensions,
    )
