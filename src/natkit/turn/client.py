"""The TURN client core, sans-IO (RFC 8656).

:class:`TurnClientCore` runs one allocation on one 5-tuple: it builds the
requests, keeps their retransmission timers (through
:class:`natkit.stun.transaction.ClientTransaction`), answers the long-term
credential challenge, refreshes what it holds before it expires and turns
what the server sends into events. It opens no socket and reads no clock.

The boundary with a driver
==========================

Input:

``allocate(now)``, ``refresh(now)``, ``create_permission(ips, now)``,
``bind_channel(peer, now)``, ``close(now)``
    Start a request; each returns an operation number that the events about
    it carry (``operation``).
``send(peer, data)``
    Queue application data for ``peer``: ChannelData when a channel to it is
    bound (RFC 8656 §12.4), a Send indication otherwise (RFC 8656 §10.1).
``handle_datagram(data, now)``
    One datagram from the server (UDP), or one frame of a TCP/TLS stream cut
    with :func:`natkit.turn.channeldata.next_frame`.
``next_deadline()`` and ``handle_timeout(now)``
    Call ``handle_timeout`` at (or after) the deadline: it retransmits,
    times requests out and starts the periodic refreshes.

Output:

``datagrams_to_send()``
    What to write to the server, in order (each item is one datagram, or one
    frame on a stream).
``next_event()``
    :class:`Allocated`, :class:`Refreshed`, :class:`PermissionCreated`,
    :class:`ChannelBound`, :class:`DataReceived`, :class:`RequestFailed`,
    :class:`Closed`; None when there is nothing more.

Authentication (RFC 8656 §5, RFC 8489 §9.2): the first Allocate goes without
credentials; the 401 answer brings REALM and NONCE, and every later request
carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY. When the nonce announces
the "password algorithms" security feature and PASSWORD-ALGORITHMS lists
SHA-256, the client takes it (PASSWORD-ALGORITHM, MESSAGE-INTEGRITY-SHA256);
otherwise MD5 with MESSAGE-INTEGRITY. A 438 (stale nonce) is retried with the
new nonce. One core serves many peers, as an ICE agent needs for its relayed
candidate: permissions and channels are kept per peer.
"""

import ipaddress
import itertools
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from natkit.stun import integrity
from natkit.stun.attributes import (
    Attribute,
    ChannelNumber,
    Data,
    ErrorCodeAttr,
    Lifetime,
    Nonce,
    PasswordAlgorithms,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    Software,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    nonce_security_features,
)
from natkit.stun.attributes import PasswordAlgorithm as PasswordAlgorithmAttr
from natkit.stun.constants import (
    AddressFamily,
    ErrorCode,
    MessageClass,
    Method,
    PasswordAlgorithm,
)
from natkit.stun.errors import DecodeError, UsageError
from natkit.stun.message import (
    Message,
    decode,
    encode,
    new_transaction_id,
    verify_integrity,
)
from natkit.stun.transaction import (
    ClientTransaction,
    RetransmitPolicy,
    TransactionState,
    TransactionTable,
    Transport,
    message_key,
)
from natkit.turn.channeldata import (
    CHANNEL_HEADER_LENGTH,
    MAX_CHANNEL,
    MIN_CHANNEL,
    encode_channel_data,
)

logger = logging.getLogger(__name__)

#: RFC 8656 §7.1, §19: REQUESTED-TRANSPORT 17 asks for a UDP relay
PROTOCOL_UDP = 17
#: RFC 8656 §7.2: what a server grants when the response has no LIFETIME
DEFAULT_LIFETIME = 600
#: RFC 8656 §7.1: refresh an allocation this long before it expires
REFRESH_MARGIN = 60.0
#: RFC 8656 §9: permissions last 300 s; refresh a minute early
PERMISSION_REFRESH = 240.0
#: RFC 8656 §12: channel bindings last 600 s; refresh a minute early
CHANNEL_REFRESH = 540.0
#: how often in a row one request is retried after 438 Stale Nonce
MAX_STALE_RETRIES = 3
#: at most this many XOR-PEER-ADDRESS in one CreatePermission (keeps it small)
MAX_PEERS_PER_REQUEST = 32
#: after a failed periodic refresh, try again this soon (if time is left)
REFRESH_RETRY = 30.0


class ClientState(Enum):
    """Where the allocation of a :class:`TurnClientCore` stands."""

    IDLE = "idle"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Address:
    """An IP address (canonical text) and a port; IPv6 prints in brackets."""

    ip: str
    port: int

    def __str__(self) -> str:
        return (
            f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"
        )

    @classmethod
    def from_sockname(cls, sockaddr: tuple[object, ...]) -> "Address":
        """From what a socket reports (IPv6 adds flow info and scope id)."""
        return cls(str(sockaddr[0]), int(str(sockaddr[1])))


def canonical_ip(text: str) -> str:
    """``text`` in :mod:`ipaddress` canonical form; UsageError if not an IP."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"{text!r} is not an IP address") from None


def peer_address(ip: str, port: int) -> Address:
    """A checked peer :class:`Address` (canonical IP, port 1-65535)."""
    if not 0 < port <= 0xFFFF:
        raise UsageError(f"peer port must be 1-65535, not {port}")
    return Address(canonical_ip(ip), port)


# --- events --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allocated:
    """RFC 8656 §7.3: the server created the allocation.

    ``relayed`` is the (first) XOR-RELAYED-ADDRESS, ``mapped`` the
    server-reflexive address of the client (XOR-MAPPED-ADDRESS), ``lifetime``
    the seconds granted.
    """

    operation: int
    relayed: Address
    mapped: Address | None
    lifetime: int
    relayed_all: tuple[Address, ...] = ()


@dataclass(frozen=True, slots=True)
class Refreshed:
    """RFC 8656 §8.3: a Refresh succeeded; the allocation now lasts ``lifetime``."""

    operation: int
    lifetime: int


@dataclass(frozen=True, slots=True)
class PermissionCreated:
    """RFC 8656 §9.3: permissions for ``peers`` (IPs) are installed or refreshed."""

    operation: int
    peers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChannelBound:
    """RFC 8656 §12.3: ``channel`` stands for ``peer`` (bound or refreshed)."""

    operation: int
    channel: int
    peer: Address


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Data from ``peer`` via the relay: a Data indication (RFC 8656 §10.4,
    ``channel`` None) or ChannelData (RFC 8656 §12.6, ``channel`` set)."""

    peer: Address
    data: bytes
    channel: int | None = None


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A request failed: an error response (``code`` set) or a timeout (None).

    ``method`` is the STUN method; ``reason`` is one line for a user (the
    server's "code phrase", or what went wrong). A 401 after the client sent
    credentials means they were refused: wrong user, password or realm.
    """

    operation: int
    method: Method
    code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The allocation is gone (deleted, expired, refused or lost); final."""

    reason: str


TurnClientEvent = (
    Allocated
    | Refreshed
    | PermissionCreated
    | ChannelBound
    | DataReceived
    | RequestFailed
    | Closed
)


# --- internal state ------------------------------------------------------------


class _Kind(Enum):
    """What a request is for (the method alone does not say: Refresh 0)."""

    ALLOCATE = "allocate"
    REFRESH = "refresh"
    PERMISSION = "permission"
    CHANNEL = "channel"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class _Auth:
    """The long-term credential state after a challenge (RFC 8489 §9.2.3)."""

    realm: str
    nonce: str
    algorithm: PasswordAlgorithm
    key: bytes
    offered: PasswordAlgorithms | None


class _Operation:
    """One request as the user sees it; survives 401/438 retries."""

    __slots__ = (
        "number",
        "kind",
        "method",
        "attributes",
        "peers",
        "channel",
        "peer",
        "lifetime",
        "challenged",
        "stale_retries",
        "authenticated",
    )

    def __init__(
        self,
        number: int,
        kind: _Kind,
        method: Method,
        attributes: tuple[Attribute, ...],
    ) -> None:
        self.number = number
        self.kind = kind
        self.method = method
        self.attributes = attributes
        self.peers: tuple[str, ...] = ()
        self.channel = 0
        self.peer: Address | None = None
        self.lifetime: int | None = None
        self.challenged = False
        self.stale_retries = 0
        self.authenticated = False


class _Permission:
    """RFC 8656 §9: a permission the client holds (or is asking for)."""

    __slots__ = ("ip", "refresh_at", "installed", "pending")

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.refresh_at: float | None = None
        self.installed = False
        self.pending = False


class _Channel:
    """RFC 8656 §12: a channel number and its peer."""

    __slots__ = ("number", "peer", "refresh_at", "bound", "pending")

    def __init__(self, number: int, peer: Address) -> None:
        self.number = number
        self.peer = peer
        self.refresh_at: float | None = None
        self.bound = False
        self.pending = False


def refresh_delay(lifetime: float) -> float:
    """Seconds after a grant to refresh: a minute early, or halfway if short."""
    if lifetime > 2 * REFRESH_MARGIN:
        return lifetime - REFRESH_MARGIN
    return lifetime / 2


# --- the client --------------------------------------------------------------------


class TurnClientCore:
    """One TURN allocation, as the client runs it (RFC 8656 §7-§12).

    ``transport`` is how the client reaches the server: over UDP requests are
    retransmitted on the RFC 8489 §6.2.1 schedule; over TCP/TLS each is sent
    once and times out after Ti (39.5 s), and ChannelData is padded to a
    multiple of four (RFC 8656 §12.5). ``realm``, when given, is the realm
    the client expects: a challenge from another realm fails the Allocate.
    ``lifetime`` is the allocation lifetime to ask for (the server decides).
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        *,
        username: str,
        password: str,
        transport: Transport = Transport.UDP,
        realm: str | None = None,
        software: str | None = None,
        lifetime: int | None = None,
        family: AddressFamily | None = None,
        fingerprint: bool = False,
        policy: RetransmitPolicy | None = None,
    ) -> None:
        if lifetime is not None and not 0 < lifetime <= 0xFFFFFFFF:
            raise UsageError(f"lifetime must be positive, not {lifetime}")
        _check_credentials(username, password)
        transport = Transport(transport)
        self.username = username
        self.transport = transport
        self.expected_realm = realm
        self.requested_lifetime = lifetime
        self.family = family
        self.fingerprint = fingerprint
        self.policy = policy or RetransmitPolicy()
        self.name = f"turn-client-{next(self._ids)}"
        self.state = ClientState.IDLE
        self.relayed: Address | None = None
        self.relayed_all: tuple[Address, ...] = ()
        self.mapped: Address | None = None
        self.lifetime: int | None = None
        self.expires_at: float | None = None
        self._password = password
        self._software: tuple[Attribute, ...] = (
            (Software(software),) if software else ()
        )
        self._stream = transport.is_stream
        self._auth: _Auth | None = None
        self._table = TransactionTable()
        self._pending: dict[bytes, _Operation] = {}
        self._numbers = itertools.count(1)
        self._outbox: list[bytes] = []
        self._events: deque[TurnClientEvent] = deque()
        self._refresh_at: float | None = None
        self._refresh_pending = False
        self._permissions: dict[str, _Permission] = {}
        self._channels: dict[int, _Channel] = {}
        self._channel_by_peer: dict[Address, _Channel] = {}
        self._next_channel = MIN_CHANNEL

    def __repr__(self) -> str:
        return f"<TurnClientCore {self.name} {self.transport} {self.state.value}>"

    # --- inspection --------------------------------------------------------

    @property
    def algorithm(self) -> PasswordAlgorithm | None:
        """The password algorithm in use, once the server has challenged."""
        return None if self._auth is None else self._auth.algorithm

    @property
    def realm(self) -> str | None:
        """The realm the server named in its challenge."""
        return None if self._auth is None else self._auth.realm

    def channel_for(self, peer: Address) -> int | None:
        """The channel bound to ``peer`` (usable for ChannelData), if any."""
        channel = self._channel_by_peer.get(peer)
        if channel is None or not channel.bound:
            return None
        return channel.number

    def has_permission(self, ip: str) -> bool:
        """Whether a permission for ``ip`` is installed (as far as we know)."""
        perm = self._permissions.get(ip)
        return perm is not None and perm.installed

    # --- output ------------------------------------------------------------

    def datagrams_to_send(self) -> list[bytes]:
        """What to write to the server, in order; the queue is emptied."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> TurnClientEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    # --- requests ----------------------------------------------------------

    def allocate(self, now: float) -> int:
        """RFC 8656 §7.1: send the Allocate request (first without credentials)."""
        if self.state is not ClientState.IDLE:
            raise UsageError(f"allocate() in state {self.state.value}")
        attributes: list[Attribute] = [RequestedTransport(PROTOCOL_UDP)]
        if self.requested_lifetime is not None:
            attributes.append(Lifetime(self.requested_lifetime))
        if self.family is not None:
            attributes.append(RequestedAddressFamily(self.family))
        op = self._operation(_Kind.ALLOCATE, Method.ALLOCATE, tuple(attributes))
        self._set_state(ClientState.ALLOCATING)
        self._start(op, now)
        return op.number

    def refresh(self, now: float, lifetime: int | None = None) -> int:
        """RFC 8656 §8.1: refresh the allocation now (also done on a timer)."""
        self._require_allocated("refresh()")
        if lifetime == 0:
            return self.close(now)
        return self._start_refresh(now, lifetime)

    def create_permission(self, ips: Iterable[str], now: float) -> int:
        """RFC 8656 §9.1: install permissions for ``ips`` (any port).

        They are refreshed every :data:`PERMISSION_REFRESH` seconds until
        :meth:`close`.
        """
        self._require_allocated("create_permission()")
        peers = tuple(dict.fromkeys(canonical_ip(ip) for ip in ips))
        if not peers:
            raise UsageError("create_permission() needs at least one IP")
        if len(peers) > MAX_PEERS_PER_REQUEST:
            raise UsageError(f"at most {MAX_PEERS_PER_REQUEST} peers per request")
        for ip in peers:
            self._permissions.setdefault(ip, _Permission(ip))
        return self._start_permission(peers, now)

    def bind_channel(
        self, peer: Address, now: float, *, channel: int | None = None
    ) -> int:
        """RFC 8656 §12.1: bind a channel to ``peer`` (or refresh its binding).

        The number is chosen from 0x4000 upwards unless ``channel`` is given;
        a peer keeps its number for the life of the allocation. The binding
        also installs a permission for the peer's IP (RFC 8656 §12.2).
        """
        self._require_allocated("bind_channel()")
        peer = peer_address(peer.ip, peer.port)
        existing = self._channel_by_peer.get(peer)
        if existing is not None:
            if channel is not None and channel != existing.number:
                raise UsageError(
                    f"{peer} is already on channel 0x{existing.number:04x}"
                )
            return self._start_channel(existing, now)
        number = self._pick_channel(channel)
        binding = _Channel(number, peer)
        self._channels[number] = binding
        self._channel_by_peer[peer] = binding
        self._permissions.setdefault(peer.ip, _Permission(peer.ip))
        return self._start_channel(binding, now)

    def close(self, now: float) -> int:
        """RFC 8656 §8.1: delete the allocation (Refresh with LIFETIME 0).

        A client that never got its allocation closes at once; either way a
        :class:`Closed` event ends the story.
        """
        if self.state in (ClientState.ALLOCATED, ClientState.CLOSING):
            op = self._operation(_Kind.DELETE, Method.REFRESH, (Lifetime(0),))
            self._set_state(ClientState.CLOSING)
            self._start(op, now)
            return op.number
        number = next(self._numbers)
        self._finish("closed before allocation")
        return number

    # --- data --------------------------------------------------------------

    def send(self, peer: Address, data: bytes) -> None:
        """Relay ``data`` to ``peer``: ChannelData if bound, else Send indication.

        RFC 8656 §10.1, §12.4. The server drops it unless a permission for the
        peer's IP is installed (RFC 8656 §9); sending does not check.
        """
        if self.state is not ClientState.ALLOCATED:
            raise UsageError(f"send() in state {self.state.value}")
        channel = self._channel_by_peer.get(peer)
        if channel is not None and channel.bound:
            self._outbox.append(
                encode_channel_data(channel.number, data, pad=self._stream)
            )
            return
        indication = Message(
            Method.SEND,
            MessageClass.INDICATION,
            new_transaction_id(),
            (XorPeerAddress(peer.ip, peer.port), Data(data)),
        )
        self._outbox.append(encode(indication, fingerprint=self.fingerprint))

    # --- input -------------------------------------------------------------

    def handle_datagram(self, data: bytes, now: float) -> bool:
        """A datagram (or stream frame) from the server; False if not TURN's.

        RFC 7983 §7: a first byte of 0x40-0x4F is ChannelData, 0x00-0x3F
        STUN. Responses to our requests, Data indications and ChannelData are
        taken; anything else is left for the caller (False).
        """
        if len(data) >= CHANNEL_HEADER_LENGTH and 0x40 <= data[0] <= 0x4F:
            return self._channel_data(data)
        if len(data) < 20 or data[0] >= 0x40:
            return False
        try:
            msg = decode(data)
        except DecodeError as exc:
            logger.debug("%s: dropping undecodable message: %s", self.name, exc)
            return False
        if msg.cls is MessageClass.INDICATION and msg.method == Method.DATA:
            return self._data_indication(msg)
        if msg.cls in (MessageClass.SUCCESS, MessageClass.ERROR):
            return self._response(msg, now)
        return False

    # --- timers ------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` must next be called (None: never)."""
        times = [self._table.next_deadline()]
        if self.state is ClientState.ALLOCATED:
            times.append(self.expires_at)
            if not self._refresh_pending:
                times.append(self._refresh_at)
            times.extend(
                p.refresh_at for p in self._permissions.values() if not p.pending
            )
            times.extend(c.refresh_at for c in self._channels.values() if not c.pending)
        return min((t for t in times if t is not None), default=None)

    def handle_timeout(self, now: float) -> None:
        """Retransmit, time out, refresh and expire what is due at ``now``."""

        # step 1: transactions: retransmissions and timeouts
        self._outbox.extend(self._table.handle_timeout(now))
        for tx in self._table.pop_done():
            op = self._pending.pop(tx.key, None)
            if op is not None and tx.state is TransactionState.TIMED_OUT:
                sends = tx.transmissions
                reason = f"no response after {sends} send{'s' if sends > 1 else ''}"
                self._fail(op, None, f"timeout: {reason}", now)
        if self.state is not ClientState.ALLOCATED:
            return

        # step 2: the allocation itself (RFC 8656 §8: expired means gone)
        if self.expires_at is not None and now >= self.expires_at:
            self._finish("allocation expired")
            return
        due = self._refresh_at
        if not self._refresh_pending and due is not None and now >= due:
            self._start_refresh(now, self.requested_lifetime)

        # step 3: permissions, batched, and channel bindings (RFC 8656 §9, §12)
        stale = [
            p.ip
            for p in self._permissions.values()
            if not p.pending and p.refresh_at is not None and now >= p.refresh_at
        ]
        for start in range(0, len(stale), MAX_PEERS_PER_REQUEST):
            self._start_permission(
                tuple(stale[start : start + MAX_PEERS_PER_REQUEST]), now
            )
        for channel in list(self._channels.values()):
            due = channel.refresh_at
            if not channel.pending and due is not None and now >= due:
                self._start_channel(channel, now)

    # --- building and sending requests -------------------------------------

    def _operation(
        self, kind: _Kind, method: Method, attributes: tuple[Attribute, ...]
    ) -> _Operation:
        return _Operation(next(self._numbers), kind, method, attributes)

    def _start(self, op: _Operation, now: float) -> None:
        """Encode ``op`` (signed once challenged) and send its first copy."""
        msg = Message(
            op.method,
            MessageClass.REQUEST,
            new_transaction_id(),
            op.attributes + self._software + self._credentials(),
        )
        auth = self._auth
        if auth is None:
            data = encode(msg, fingerprint=self.fingerprint)
        else:
            data = encode(
                msg,
                key=auth.key,
                sha256=auth.algorithm is PasswordAlgorithm.SHA256,
                fingerprint=self.fingerprint,
            )
        op.authenticated = auth is not None
        tx = ClientTransaction(
            data, transport=self.transport, now=now, policy=self.policy
        )
        self._table.add(tx)
        self._pending[tx.key] = op
        self._outbox.extend(tx.handle_timeout(now))
        logger.debug("%s: %s request %s", self.name, op.kind.value, tx.key.hex())

    def _credentials(self) -> tuple[Attribute, ...]:
        """RFC 8489 §9.2.3: USERNAME, REALM, NONCE and, with the feature,
        PASSWORD-ALGORITHMS as received and PASSWORD-ALGORITHM chosen."""
        auth = self._auth
        if auth is None:
            return ()
        attrs: tuple[Attribute, ...] = (
            Username(self.username),
            Realm(auth.realm),
            Nonce(auth.nonce),
        )
        if auth.offered is not None:
            attrs += (auth.offered, PasswordAlgorithmAttr(auth.algorithm))
        return attrs

    def _start_refresh(self, now: float, lifetime: int | None) -> int:
        attrs = () if lifetime is None else (Lifetime(lifetime),)
        op = self._operation(_Kind.REFRESH, Method.REFRESH, attrs)
        op.lifetime = lifetime
        self._refresh_pending = True
        self._start(op, now)
        return op.number

    def _start_permission(self, peers: tuple[str, ...], now: float) -> int:
        attrs = tuple(XorPeerAddress(ip, 0) for ip in peers)
        op = self._operation(_Kind.PERMISSION, Method.CREATE_PERMISSION, attrs)
        op.peers = peers
        for ip in peers:
            self._permissions[ip].pending = True
        self._start(op, now)
        return op.number

    def _start_channel(self, channel: _Channel, now: float) -> int:
        attrs = (
            ChannelNumber(channel.number),
            XorPeerAddress(channel.peer.ip, channel.peer.port),
        )
        op = self._operation(_Kind.CHANNEL, Method.CHANNEL_BIND, attrs)
        op.channel = channel.number
        op.peer = channel.peer
        channel.pending = True
        self._start(op, now)
        return op.number

    def _pick_channel(self, wanted: int | None) -> int:
        if wanted is not None:
            if not MIN_CHANNEL <= wanted <= MAX_CHANNEL:
                raise UsageError(f"channel 0x{wanted:04x} outside 0x4000-0x4FFF")
            if wanted in self._channels:
                raise UsageError(f"channel 0x{wanted:04x} is already in use")
            return wanted
        while self._next_channel in self._channels:
            self._next_channel += 1
        if self._next_channel > MAX_CHANNEL:
            raise UsageError("all 4096 channel numbers are in use")
        number = self._next_channel
        self._next_channel += 1
        return number

    def _require_allocated(self, what: str) -> None:
        if self.state is not ClientState.ALLOCATED:
            raise UsageError(f"{what} needs an allocation (state {self.state.value})")

    # --- responses ---------------------------------------------------------

    def _response(self, msg: Message, now: float) -> bool:
        """RFC 8489 §6.3 and §9.2.5: match, authenticate, then act on it."""
        key = message_key(msg)
        tx = self._table.get(key)
        op = self._pending.get(key)
        if tx is None or op is None or not tx.matches(msg):
            logger.debug("%s: ignoring response %s", self.name, msg)
            return False

        # RFC 8489 §9.2.5: a response to a signed request must be signed with
        # our key, except 401/438; over UDP a bad one is discarded unseen
        if op.authenticated and self._auth is not None and not _is_challenge(msg):
            if not verify_integrity(msg, self._auth.key):
                if not self._stream:
                    logger.debug("%s: discarding unsigned response", self.name)
                    return True
                tx.cancel(now, "response integrity check failed")
                self._settle(tx)
                self._fail(op, None, "response failed its integrity check", now)
                return True

        tx.handle_response(msg, now)
        self._settle(tx)
        if tx.state is TransactionState.SUCCEEDED:
            self._success(op, msg, now)
        elif msg.cls is MessageClass.ERROR and not msg.unknown_required:
            self._error(op, msg, now)
        else:
            self._fail(op, None, tx.failure_reason or "unusable response", now)
        return True

    def _settle(self, tx: ClientTransaction) -> None:
        self._table.pop_done()
        self._pending.pop(tx.key, None)

    def _error(self, op: _Operation, msg: Message, now: float) -> None:
        """RFC 8489 §9.2.5 (401, 438) and the error codes of RFC 8656."""
        err = msg.get(ErrorCodeAttr)
        code = err.code if err is not None else None
        reason = err.reason if err is not None else ""

        # 401 to the first, unsigned request: the challenge
        if code == ErrorCode.UNAUTHENTICATED and not op.authenticated:
            if op.challenged:
                self._fail(op, code, _described(code, reason), now)
                return
            problem = self._take_challenge(msg)
            if problem is not None:
                self._fail(op, code, problem, now)
                return
            op.challenged = True
            self._start(op, now)
            return

        # 438: the nonce expired; retry with the new one
        if code == ErrorCode.STALE_NONCE and op.stale_retries < MAX_STALE_RETRIES:
            problem = self._take_challenge(msg, stale=True)
            if problem is None:
                op.stale_retries += 1
                self._start(op, now)
                return
            reason = problem

        self._fail(op, code, _described(code, reason), now)

    def _take_challenge(self, msg: Message, *, stale: bool = False) -> str | None:
        """Adopt REALM, NONCE and the password algorithm of a 401/438.

        Returns a reason when the challenge cannot be answered.
        """
        realm_attr = msg.get(Realm)
        nonce_attr = msg.get(Nonce)
        if nonce_attr is None or (realm_attr is None and self._auth is None):
            return "challenge without REALM or NONCE"
        realm = realm_attr.value if realm_attr is not None else self._auth_realm()
        if self.expected_realm is not None and realm != self.expected_realm:
            return f"server realm {realm!r} is not {self.expected_realm!r}"
        offered = msg.get(PasswordAlgorithms)
        if stale and offered is None and self._auth is not None:
            offered = self._auth.offered

        # RFC 8489 §9.2.5: the feature bit in the nonce says whether the
        # algorithms list counts; without it the key is MD5 (RFC 5389)
        features = nonce_security_features(nonce_attr.value)
        has_feature = features is not None and bool(features & 1)
        algorithm = PasswordAlgorithm.MD5
        if has_feature and offered is not None:
            codes = {entry.algorithm for entry in offered.algorithms}
            if PasswordAlgorithm.SHA256 in codes:
                algorithm = PasswordAlgorithm.SHA256
            elif PasswordAlgorithm.MD5 not in codes:
                return "server offers no password algorithm natkit supports"
        else:
            offered = None
        previous = self._auth
        if (
            previous is not None
            and previous.realm == realm
            and (previous.algorithm is algorithm)
        ):
            key = previous.key
        else:
            key = integrity.long_term_key(
                self.username, realm, self._password, algorithm
            )
        if previous is None or previous.algorithm is not algorithm:
            logger.debug("%s: realm %r, algorithm %s", self.name, realm, algorithm.name)
        self._auth = _Auth(realm, nonce_attr.value, algorithm, key, offered)
        return None

    def _auth_realm(self) -> str:
        return "" if self._auth is None else self._auth.realm

    def _success(self, op: _Operation, msg: Message, now: float) -> None:
        if op.kind is _Kind.ALLOCATE:
            self._allocated(op, msg, now)
        elif op.kind is _Kind.REFRESH:
            self._refreshed(op, msg, now)
        elif op.kind is _Kind.PERMISSION:
            for ip in op.peers:
                self._permission_installed(ip, now)
            self._events.append(PermissionCreated(op.number, op.peers))
        elif op.kind is _Kind.CHANNEL:
            self._channel_bound(op, now)
        else:
            self._finish("allocation deleted")

    def _allocated(self, op: _Operation, msg: Message, now: float) -> None:
        """RFC 8656 §7.3: take the relayed and mapped addresses and lifetime."""
        relayed = tuple(Address(a.ip, a.port) for a in msg.get_all(XorRelayedAddress))
        if not relayed:
            self._fail(op, None, "Allocate success without XOR-RELAYED-ADDRESS", now)
            return
        mapped_attr = msg.get(XorMappedAddress)
        lifetime_attr = msg.get(Lifetime)
        lifetime = (
            lifetime_attr.value if lifetime_attr is not None else DEFAULT_LIFETIME
        )
        self.relayed = relayed[0]
        self.relayed_all = relayed
        self.mapped = Address(mapped_attr.ip, mapped_attr.port) if mapped_attr else None
        self._grant(lifetime, now)
        self._set_state(ClientState.ALLOCATED)
        self._events.append(
            Allocated(op.number, relayed[0], self.mapped, lifetime, relayed)
        )

    def _refreshed(self, op: _Operation, msg: Message, now: float) -> None:
        """RFC 8656 §8.3: the new lifetime (LIFETIME, else what we asked)."""
        self._refresh_pending = False
        lifetime_attr = msg.get(Lifetime)
        if lifetime_attr is not None:
            lifetime = lifetime_attr.value
        else:
            lifetime = op.lifetime if op.lifetime is not None else DEFAULT_LIFETIME
        if lifetime == 0:
            self._finish("allocation deleted")
            return
        self._grant(lifetime, now)
        self._events.append(Refreshed(op.number, lifetime))

    def _grant(self, lifetime: int, now: float) -> None:
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        self._refresh_at = now + refresh_delay(lifetime)

    def _permission_installed(self, ip: str, now: float) -> None:
        perm = self._permissions.get(ip)
        if perm is None:
            return
        perm.pending = False
        perm.installed = True
        perm.refresh_at = now + PERMISSION_REFRESH

    def _channel_bound(self, op: _Operation, now: float) -> None:
        channel = self._channels.get(op.channel)
        if channel is None or op.peer is None:
            return
        channel.pending = False
        channel.bound = True
        channel.refresh_at = now + CHANNEL_REFRESH

        # RFC 8656 §12.2: the binding installs or refreshes the permission too
        perm = self._permissions.get(channel.peer.ip)
        if perm is not None and not perm.pending:
            perm.installed = True
            perm.refresh_at = max(perm.refresh_at or 0.0, now + PERMISSION_REFRESH)
        self._events.append(ChannelBound(op.number, channel.number, channel.peer))

    # --- failures ----------------------------------------------------------

    def _fail(self, op: _Operation, code: int | None, reason: str, now: float) -> None:
        """Report ``op`` as failed and undo what it stood for."""
        logger.debug("%s: %s failed: %s", self.name, op.kind.value, reason)
        self._events.append(RequestFailed(op.number, op.method, code, reason))
        if op.kind is _Kind.ALLOCATE:
            self._finish(f"allocation refused: {reason}")
        elif op.kind is _Kind.DELETE:
            self._finish("allocation deleted (no answer to the delete)")
        elif op.kind is _Kind.REFRESH:
            self._refresh_failed(code, now)
        elif op.kind is _Kind.PERMISSION:
            for ip in op.peers:
                perm = self._permissions.get(ip)
                if perm is not None:
                    perm.pending = False
                    perm.refresh_at = None
                    perm.installed = False
        elif op.kind is _Kind.CHANNEL:
            channel = self._channels.get(op.channel)
            if channel is not None:
                channel.pending = False
                channel.refresh_at = None
                channel.bound = False

    def _refresh_failed(self, code: int | None, now: float) -> None:
        """RFC 8656 §8.3: 437 means the allocation is gone; else try again."""
        self._refresh_pending = False
        if self.state is not ClientState.ALLOCATED:
            return
        expires = self.expires_at
        if code == ErrorCode.ALLOCATION_MISMATCH or expires is None or now >= expires:
            self._finish("allocation lost: refresh failed")
            return
        self._refresh_at = now + min(REFRESH_RETRY, (expires - now) / 2)

    def _finish(self, reason: str) -> None:
        """End the allocation: no more timers, one :class:`Closed` event."""
        if self.state is ClientState.CLOSED:
            return
        self._set_state(ClientState.CLOSED)
        for tx in self._table:
            tx.cancel(0.0, "client closed")
        self._table.pop_done()
        self._pending.clear()
        self._refresh_at = None
        self._permissions.clear()
        for channel in self._channels.values():
            channel.bound = False
        self._events.append(Closed(reason))

    def _set_state(self, state: ClientState) -> None:
        logger.debug("%s: %s -> %s", self.name, self.state.value, state.value)
        self.state = state

    # --- data from the server -----------------------------------------------

    def _channel_data(self, data: bytes) -> bool:
        """RFC 8656 §12.6: ChannelData; the channel number names the peer."""
        number = data[0] << 8 | data[1]
        length = data[2] << 8 | data[3]
        if len(data) < CHANNEL_HEADER_LENGTH + length:
            logger.debug("%s: dropping truncated ChannelData", self.name)
            return True
        channel = self._channels.get(number)
        if channel is None:
            logger.debug("%s: ChannelData on unknown channel 0x%04x", self.name, number)
            return True
        payload = data[CHANNEL_HEADER_LENGTH : CHANNEL_HEADER_LENGTH + length]
        self._events.append(DataReceived(channel.peer, payload, number))
        return True

    def _data_indication(self, msg: Message) -> bool:
        """RFC 8656 §10.4: a Data indication needs XOR-PEER-ADDRESS and DATA."""
        peer = msg.get(XorPeerAddress)
        data = msg.get(Data)
        if peer is None or data is None or msg.unknown_required:
            logger.debug("%s: dropping malformed Data indication", self.name)
            return True
        self._events.append(DataReceived(Address(peer.ip, peer.port), data.value))
        return True


def _is_challenge(msg: Message) -> bool:
    """401 and 438 error responses may come unsigned (RFC 8489 §9.2.5)."""
    if msg.cls is not MessageClass.ERROR:
        return False
    err = msg.get(ErrorCodeAttr)
    return err is not None and err.code in (
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.STALE_NONCE,
    )


def _described(code: int | None, reason: str) -> str:
    """``code reason`` as one printable line (servers pad reasons oddly)."""
    text = "".join(ch for ch in reason if ch.isprintable()).strip()
    if code is None:
        return text
    return f"{code} {text}".rstrip()


def _check_credentials(username: str, password: str) -> None:
    """Refuse credentials no key can be derived from, before any traffic."""
    if not username:
        raise UsageError("the username must not be empty")
    for algorithm in (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256):
        integrity.long_term_key(username, "realm", password, algorithm)


__all__ = [
    "Address",
    "Allocated",
    "ChannelBound",
    "ClientState",
    "Closed",
    "DataReceived",
    "PermissionCreated",
    "Refreshed",
    "RequestFailed",
    "TurnClientCore",
    "TurnClientEvent",
    "canonical_ip",
    "peer_address",
    "refresh_delay",
]
