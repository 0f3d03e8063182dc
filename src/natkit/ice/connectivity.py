"""Connectivity checks, both sides (RFC 8445 §7): the engine under the agent.

:class:`ConnectivityChecks` holds the candidates, the checklist and the
check transactions, answers the peer's Binding requests (§7.3: integrity,
role conflicts, peer-reflexive remotes, triggered checks, USE-CANDIDATE)
and processes the responses to ours (§7.2.5: symmetric addresses,
peer-reflexive locals, the valid list, 487). :class:`natkit.ice.agent.IceAgent`
builds the public API, nomination, consent and restart on top; the few
decisions that belong there are the hooks at the end of this class.

Checks are :class:`~natkit.stun.transaction.ClientTransaction` objects
keyed in one :class:`~natkit.stun.transaction.TransactionTable`; a
:class:`Check` record says which pair (or consent session) each serves.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass

from natkit.ice.candidate import (
    Candidate,
    CandidateType,
    LocalCandidate,
    SocketId,
    local_preference_of,
    priority_for,
)
from natkit.ice.checklist import (
    CandidatePair,
    CheckList,
    ChecklistState,
    PairKey,
    PairState,
)
from natkit.ice.checks import (
    RoleDecision,
    SignedError,
    authenticate,
    build_error,
    build_request,
    build_success,
    request_attributes,
    resolve_role,
)
from natkit.ice.config import IceConfig
from natkit.ice.consent import ConsentSession
from natkit.ice.credentials import Credentials
from natkit.ice.events import (
    CandidateLearned,
    IceEvent,
    IceState,
    PermissionNeeded,
    RoleChanged,
    Transmit,
)
from natkit.ice.nomination import Nominator, StateMachine
from natkit.nat.endpoint import Endpoint
from natkit.stun.attributes import Attribute, ErrorCodeAttr, XorMappedAddress
from natkit.stun.constants import ErrorCode, MessageClass, Method
from natkit.stun.errors import StunProtocolError, UsageError
from natkit.stun.integrity import short_term_key
from natkit.stun.message import Message, verify_integrity
from natkit.stun.transaction import (
    ClientTransaction,
    RetransmitPolicy,
    TransactionState,
    TransactionTable,
    Transport,
    message_key,
)

logger = logging.getLogger(__name__)

#: error responses that cannot carry MESSAGE-INTEGRITY (RFC 8489 §9.1.3)
_UNSIGNED_ERRORS = frozenset((ErrorCode.BAD_REQUEST, ErrorCode.UNAUTHENTICATED))


@dataclass(frozen=True, slots=True)
class Check:
    """What one Binding transaction is for: a pair's check, or consent.

    ``key`` is the short-term key (the peer's password) that its responses
    must be signed with; ``controlling`` the role it was sent in (RFC 8445
    §7.2.5.1 compares it on a 487); ``priority`` its PRIORITY, which a
    peer-reflexive local candidate learned from it gets (§7.2.5.3.1).
    """

    pair: CandidatePair | None
    session: ConsentSession | None
    socket: SocketId
    destination: Endpoint
    key: bytes
    controlling: bool
    use_candidate: bool
    priority: int
    generation: int


def prflx_priority(base: Candidate) -> int:
    """RFC 8445 §7.1.1: PRIORITY is the priority of a peer-reflexive candidate
    with the local preference and component of the base."""
    return priority_for(
        CandidateType.PEER_REFLEXIVE,
        local_preference=local_preference_of(base.priority),
        component=base.component,
    )


class ConnectivityChecks:
    """Candidates, checklist and check transactions of one agent (RFC 8445 §7)."""

    def __init__(
        self,
        *,
        controlling: bool,
        tie_breaker: int,
        ta: float,
        config: IceConfig,
        credentials: Credentials,
        name: str,
    ) -> None:
        self.name = name
        self.config = config
        self.ta = ta
        self.tie_breaker = tie_breaker
        self.controlling = controlling
        self.local_credentials = credentials
        self.remote_credentials: Credentials | None = None
        self.checklist = CheckList(controlling=controlling, max_pairs=config.max_pairs)
        self._events: deque[IceEvent] = deque()
        self._machine = StateMachine(name, self._events.append)
        self._locals: list[LocalCandidate] = []
        self._bases: dict[SocketId, LocalCandidate] = {}
        self._remotes: list[Candidate] = []
        self._table = TransactionTable()
        self._checks: dict[bytes, Check] = {}
        self._outbox: list[Transmit] = []
        self._now = 0.0
        self._last_check_at: float | None = None
        self._nominator = Nominator(
            config.nomination_delay, config.relay_nomination_delay
        )
        self._session: ConsentSession | None = None
        self._previous_local: Credentials | None = None
        self._generation = 0
        self._permissions: dict[SocketId, set[str]] = {}
        self._prflx_ids = itertools.count(1)

    @property
    def state(self) -> IceState:
        return self._machine.state

    # --- pairs -----------------------------------------------------------------

    def _pair(self, locals_: list[LocalCandidate], remotes: list[Candidate]) -> None:
        for pair in self.checklist.add_all(locals_, remotes):
            self._announce_permission(pair)

    def _announce_permission(self, pair: CandidatePair) -> None:
        """A relayed local candidate needs a TURN permission for the peer's IP."""
        if pair.local.candidate.type is not CandidateType.RELAYED:
            return
        ips = self._permissions.setdefault(pair.local.socket, set())
        ip = pair.remote.address.ip
        if ip not in ips:
            ips.add(ip)
            self._events.append(PermissionNeeded(pair.local.socket, ip))

    # --- server side: the peer's checks (RFC 8445 §7.3) ---------------------------

    def _on_request(
        self, socket: SocketId, source: Endpoint, msg: Message, now: float
    ) -> None:
        base = self._bases.get(socket)
        if base is None:
            logger.debug("%s: request on unknown socket %s", self.name, socket)
            return
        if msg.method != Method.BINDING:
            error = StunProtocolError(ErrorCode.BAD_REQUEST, "Unsupported Method")
            self._reply(socket, source, build_error(msg, error, None))
            return

        # step 1: authentication (RFC 8489 §9.1.3), the previous generation too
        accepted = [self.local_credentials]
        if self._previous_local is not None:
            accepted.append(self._previous_local)
        try:
            request = authenticate(msg, accepted)
        except SignedError as exc:
            self._reply(socket, source, build_error(msg, exc, exc.credentials))
            return
        except StunProtocolError as exc:
            logger.debug("%s: check from %s refused: %s", self.name, source, exc)
            self._reply(socket, source, build_error(msg, exc, None))
            return
        current = request.credentials == self.local_credentials

        # step 2: role conflict (RFC 8445 §7.3.1.1)
        if current:
            decision = resolve_role(
                controlling=self.controlling,
                tie_breaker=self.tie_breaker,
                request=request,
            )
            if decision is RoleDecision.CONFLICT:
                error = StunProtocolError(ErrorCode.ROLE_CONFLICT)
                self._reply(
                    socket, source, build_error(msg, error, request.credentials)
                )
                return
            if decision is RoleDecision.SWITCH:
                self._switch_role(now)

        # step 3: the success response (RFC 8445 §7.3.1.2); an old-generation
        # request (consent on the pre-restart pair) gets nothing more
        self._reply(socket, source, build_success(msg, source, request.credentials))
        if not current:
            return

        # step 4: the remote candidate, maybe peer-reflexive (§7.3.1.3)
        remote = self._remote_for(socket, source, base.component, request.priority)
        pair = self.checklist.get(PairKey(socket, source, base.component))
        if pair is None:
            pair = self.checklist.add(base, remote)
            if pair is None:
                return
            self._announce_permission(pair)

        # step 5: USE-CANDIDATE (§7.3.1.5), then the triggered check (§7.3.1.4)
        if request.use_candidate and not self.controlling:
            self._remote_nominates(pair, now)
        if pair.state is PairState.SUCCEEDED:
            return
        if self.checklist.state is ChecklistState.RUNNING:
            if pair.state is PairState.IN_PROGRESS:
                self._cancel_in_progress(pair, now)
            self.checklist.trigger(pair)

    def _cancel_in_progress(self, pair: CandidatePair, now: float) -> None:
        """RFC 8445 §7.3.1.4: a check arrived on an In-Progress pair. Its own
        check stops retransmitting (its first request may have been dropped
        by a NAT that the peer's check has just opened) and a triggered check
        goes out instead; a late response to the old one still counts."""
        for tx in self._table:
            check = self._checks.get(tx.key)
            if check is not None and check.pair is pair and not tx.done:
                tx.stop_retransmitting(now)
                if check.use_candidate:
                    # the nomination goes on in the triggered check
                    pair.nominate_next = True

    def _reply(self, socket: SocketId, destination: Endpoint, data: bytes) -> None:
        self._outbox.append(Transmit(socket, destination, data))

    def _remote_for(
        self, socket: SocketId, source: Endpoint, component: int, priority: int
    ) -> Candidate:
        """RFC 8445 §7.3.1.3: the remote candidate a request came from."""
        for known in self._remotes:
            if known.address == source and known.component == component:
                return known
        remote = Candidate(
            type=CandidateType.PEER_REFLEXIVE,
            address=source,
            priority=priority,
            foundation=f"rprflx{next(self._prflx_ids)}",
            component=component,
        )
        self._remotes.append(remote)
        logger.debug("%s: learned remote %s", self.name, remote)
        self._events.append(CandidateLearned(remote, local=False, socket=socket))
        return remote

    def _remote_nominates(self, pair: CandidatePair, now: float) -> None:
        """RFC 8445 §7.3.1.5: USE-CANDIDATE arrived on ``pair``."""
        if pair.state is PairState.SUCCEEDED and pair.is_valid:
            pair.nominated = True
            self._select(now)
        else:
            pair.remote_nominated = True

    def _switch_role(self, now: float) -> None:
        """RFC 8445 §7.2.5.1 / §7.3.1.1: swap roles, recompute priorities."""
        self.controlling = not self.controlling
        role = "controlling" if self.controlling else "controlled"
        logger.debug("%s: role -> %s", self.name, role)
        self.checklist.set_role(self.controlling)
        self._nominator.reset()
        for pair in self.checklist:
            pair.nominate_next = False
        if self.controlling and self.checklist.valid_pairs():
            self._nominator.saw_valid(now)
        self._events.append(RoleChanged(self.controlling))

    # --- client side: sending our checks (RFC 8445 §7.2.4) --------------------------

    def _can_check(self) -> bool:
        return (
            self.remote_credentials is not None
            and self.state is not IceState.CLOSED
            and self.checklist.has_work()
        )

    def _pacing_deadline(self) -> float | None:
        """RFC 8445 §6.1.4.2: one new check every Ta."""
        if not self._can_check():
            return None
        if self._last_check_at is None:
            return self._now
        return self._last_check_at + self.ta

    def _start_check(self, pair: CandidatePair, now: float) -> None:
        remote = self.remote_credentials
        if remote is None:
            raise UsageError("no remote credentials")
        base = pair.local
        use_candidate = self.controlling and pair.nominate_next
        pair.nominate_next = False
        priority = prflx_priority(base.candidate)
        attributes = request_attributes(
            local=self.local_credentials,
            remote=remote,
            priority=priority,
            controlling=self.controlling,
            tie_breaker=self.tie_breaker,
            use_candidate=use_candidate,
            software=self.config.software,
        )
        check = Check(
            pair=pair,
            session=None,
            socket=base.socket,
            destination=pair.remote.address,
            key=short_term_key(remote.pwd),
            controlling=self.controlling,
            use_candidate=use_candidate,
            priority=priority,
            generation=self._generation,
        )
        self._launch(attributes, remote, self.config.check_policy, now, check)
        if pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.IN_PROGRESS
        self._last_check_at = now
        if self.state is IceState.NEW or (
            self.state is IceState.FAILED and self._session is None
        ):
            self._machine.set(IceState.CHECKING)

    def _launch(
        self,
        attributes: tuple[Attribute, ...],
        remote: Credentials,
        policy: RetransmitPolicy,
        now: float,
        check: Check,
    ) -> None:
        data, _ = build_request(attributes, remote)
        tx = ClientTransaction(data, transport=Transport.UDP, now=now, policy=policy)
        self._table.add(tx)
        self._checks[tx.key] = check
        self._transmit(tx, check, now)

    def _transmit(self, tx: ClientTransaction, check: Check, now: float) -> None:
        for datagram in tx.handle_timeout(now):
            self._outbox.append(Transmit(check.socket, check.destination, datagram))
            session = self._session
            if session is not None and session.selected.socket == check.socket:
                if session.selected.remote.address == check.destination:
                    session.sent(now)

    def _run_transactions(self, now: float) -> None:
        """Retransmit what is due; settle the checks that timed out."""
        for tx in self._table:
            check = self._checks.get(tx.key)
            if check is None:
                tx.cancel(now, "no longer wanted")
            elif not tx.done:
                self._transmit(tx, check, now)
        for tx in self._table.pop_done():
            check = self._checks.pop(tx.key, None)
            if check is None or tx.state is not TransactionState.TIMED_OUT:
                continue
            if tx.silenced:
                continue  # cancelled by §7.3.1.4: its silence is no failure
            if check.pair is not None and check.generation == self._generation:
                logger.debug("%s: check timed out on %r", self.name, check.pair)
                self._pair_failed(check.pair, now)

    def _cancel_checks(self, now: float, reason: str, *, consent: bool) -> None:
        """Stop pair checks (and with ``consent``, consent checks too)."""
        for tx in self._table:
            check = self._checks.get(tx.key)
            if check is not None and (consent or check.session is None):
                tx.cancel(now, reason)
                self._checks.pop(tx.key, None)
        self._table.pop_done()

    # --- client side: responses (RFC 8445 §7.2.5) ------------------------------------

    def _on_response(
        self, socket: SocketId, source: Endpoint, msg: Message, now: float
    ) -> None:
        key = message_key(msg)
        check = self._checks.get(key)
        tx = self._table.get(key)
        if check is None or tx is None or tx.done:
            return

        # RFC 8445 §7.2.5: responses are signed with the peer's password; only
        # a 400 or 401 may come unsigned (RFC 8489 §9.1.3)
        if not verify_integrity(msg, check.key):
            err = msg.get(ErrorCodeAttr)
            unsigned_ok = (
                msg.cls is MessageClass.ERROR
                and msg.integrity_offset is None
                and err is not None
                and err.code in _UNSIGNED_ERRORS
            )
            if not unsigned_ok:
                logger.debug("%s: unauthenticated response from %s", self.name, source)
                return
        if not tx.handle_response(msg, now):
            return
        del self._checks[key]
        if check.session is not None:
            # RFC 7675 §5.1: a success response from the pair's remote renews
            symmetric = source == check.destination and socket == check.socket
            if tx.state is TransactionState.SUCCEEDED and symmetric:
                self._consent_response(check.session, now)
            return
        if check.pair is not None and check.generation == self._generation:
            self._check_response(check, check.pair, socket, source, tx, now)

    def _check_response(
        self,
        check: Check,
        pair: CandidatePair,
        socket: SocketId,
        source: Endpoint,
        tx: ClientTransaction,
        now: float,
    ) -> None:
        msg = tx.response
        if msg is None:
            return

        # step 1: errors (and a success with unknown comprehension-required
        # attributes, RFC 8489 §6.3.1); a 487 switches role and retries
        # (RFC 8445 §7.2.5.1)
        if tx.state is not TransactionState.SUCCEEDED:
            err = tx.error
            if err is not None and err.code == ErrorCode.ROLE_CONFLICT:
                if check.controlling == self.controlling:
                    self._switch_role(now)
                if self.checklist.get(pair.key) is pair:
                    self.checklist.trigger(pair)
                return
            logger.debug("%s: %r failed: %s", self.name, pair, tx.failure_reason)
            self._pair_failed(pair, now)
            return

        # step 2: the addresses must be symmetric (§7.2.5.2.1)
        mapped = msg.get(XorMappedAddress)
        if source != check.destination or socket != check.socket or mapped is None:
            logger.debug("%s: asymmetric or unmapped response on %r", self.name, pair)
            self._pair_failed(pair, now)
            return

        # step 3: the valid pair, maybe with a peer-reflexive local (§7.2.5.3)
        local = self._local_for(Endpoint(mapped.ip, mapped.port), pair.local, check)
        first_valid = not self.checklist.valid_pairs()
        pair.state = PairState.SUCCEEDED
        pair.make_valid(local)
        self.checklist.unfreeze(pair.foundation)
        if check.use_candidate and self.controlling:
            pair.nominated = True
        elif not self.controlling and pair.remote_nominated:
            pair.nominated = True
        logger.debug("%s: valid %r (local %s)", self.name, pair, local)
        if first_valid:
            self._nominator.saw_valid(now)
            if self.state in (IceState.NEW, IceState.CHECKING):
                self._machine.set(IceState.CONNECTED)
        if pair.nominated:
            self._select(now)
        else:
            self._maybe_nominate(now)

    def _local_for(
        self, mapped: Endpoint, base: LocalCandidate, check: Check
    ) -> LocalCandidate:
        """RFC 8445 §7.2.5.3.1: the local candidate equal to the mapped address."""
        for local in self._locals:
            if local.socket == base.socket and local.candidate.address == mapped:
                return local
        candidate = Candidate.peer_reflexive(
            mapped, base=base.candidate, priority=check.priority
        )
        learned = LocalCandidate(candidate, base.socket)
        self._locals.append(learned)
        logger.debug("%s: learned local %s", self.name, learned)
        self._events.append(CandidateLearned(candidate, local=True, socket=base.socket))
        return learned

    def _pair_failed(self, pair: CandidatePair, now: float) -> None:
        pair.state = PairState.FAILED
        if pair.is_valid:
            pair.invalidate()
        self._nominator.failed(pair)
        self._maybe_nominate(now)
        self._check_failure()

    # --- hooks for the agent -----------------------------------------------------

    def _select(self, now: float) -> None:
        """A pair was nominated: select it (RFC 8445 §8.1.1)."""
        raise NotImplementedError

    def _maybe_nominate(self, now: float) -> None:
        """The valid list changed: the controlling agent may nominate."""
        raise NotImplementedError

    def _check_failure(self) -> None:
        """A pair failed: maybe the whole checklist has (RFC 8838 §8)."""
        raise NotImplementedError

    def _consent_response(self, session: ConsentSession, now: float) -> None:
        """An authenticated success response to a consent check (RFC 7675)."""
        raise NotImplementedError
