"""The sans-IO TURN server core (RFC 8656), driven in memory.

Every test runs against a fake relay-port allocator and an injected clock.
The ``harness`` fixture runs each test twice: with a fake authenticator
that accepts fixed users and keys, and with the real long-term credential
mechanism of :mod:`natkit.turn.auth` (RFC 8489 §9.2). Addresses are
documentation addresses used as strings only; nothing is sent anywhere.
"""

import struct
from typing import Literal

import pytest

from natkit.stun import integrity
from natkit.stun.attributes import (
    AdditionalAddressFamily,
    AddressErrorCode,
    Attribute,
    ChannelNumber,
    Data,
    DontFragment,
    ErrorCodeAttr,
    EvenPort,
    Lifetime,
    MessageIntegrity,
    MessageIntegritySha256,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithmEntry,
    PasswordAlgorithms,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    UnknownAttribute,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
)
from natkit.stun.constants import (
    AddressFamily,
    AttrType,
    ErrorCode,
    MessageClass,
    Method,
)
from natkit.stun.constants import PasswordAlgorithm as Algorithm
from natkit.stun.errors import UsageError
from natkit.stun.message import (
    Message,
    decode,
    encode,
    new_transaction_id,
    verify_integrity,
)
from natkit.turn.allocation import ClientAddress, RelayAddress, Transport
from natkit.turn.auth import (
    AuthResult,
    InMemoryKeyStore,
    LongTermAuthenticator,
    NonceManager,
    integrity_kind,
)
from natkit.turn.auth import ClientAddress as AuthClient
from natkit.turn.channeldata import decode_channel_data, encode_channel_data
from natkit.turn.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationExpired,
    AllocationRefreshed,
    AuthFailed,
    AuthSucceeded,
    ChannelBound,
    ChannelExpired,
    CollectingEventSink,
    EndReason,
    PeerDenied,
    PermissionCreated,
    PermissionExpired,
    QuotaRefused,
)
from natkit.turn.policy import PeerPolicy, PolicyDecision
from natkit.turn.quota import QuotaConfig, QuotaKind
from natkit.turn.server import (
    Action,
    CloseRelay,
    SendToClient,
    SendToPeer,
    TurnConfig,
    TurnServer,
    _data_indication,
    rest_quota_user,
)
from natkit.turn.throttle import AuthThrottle

REALM = "natkit.test"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}

SERVER_IP = "192.0.2.1"
RELAY_V4 = "192.0.2.1"
RELAY_V6 = "2001:db8::1"
CLIENT = ClientAddress(Transport.UDP, "192.0.2.50", 40000, SERVER_IP, 3478)
CLIENT2 = ClientAddress(Transport.UDP, "192.0.2.51", 40001, SERVER_IP, 3478)
TCP_CLIENT = ClientAddress(Transport.TCP, "192.0.2.52", 40002, SERVER_IP, 3478)
PEER = "198.51.100.7"
PEER2 = "198.51.100.8"
PEER_V6 = "2001:db8:1::7"
DENIED_PEER = "127.0.0.1"
START = 100_000.0

AuthMode = Literal["fake", "real"]


def md5_key(user: str) -> bytes:
    return integrity.long_term_key(user, REALM, PASSWORDS[user])


# --- fakes ---------------------------------------------------------------------


class FakeAuth:
    """Accepts ``alice`` and ``bob`` with their MD5 keys; nonce "stale" is 438."""

    def verify_request(
        self, msg: Message, client: AuthClient, now: float
    ) -> AuthResult:
        challenge = (Realm(REALM), Nonce("fake-nonce"))
        kind = integrity_kind(msg)
        if kind is None:
            return AuthResult(ok=False, error_code=401, attributes=challenge)
        username = msg.get(Username)
        nonce = msg.get(Nonce)
        if username is None or nonce is None or msg.get(Realm) is None:
            return AuthResult(ok=False, error_code=400)
        user = username.value
        if user not in PASSWORDS or not verify_integrity(msg, md5_key(user)):
            return AuthResult(
                ok=False,
                error_code=401,
                attributes=challenge,
                detail="bad credentials",
                credential_failure=True,
            )
        if nonce.value == "stale":
            return AuthResult(ok=False, error_code=438, attributes=challenge)
        return AuthResult(ok=True, username=user, key=md5_key(user), integrity=kind)


class FakeAllocator:
    """In-memory relay ports: ten per family, from 49152; families can fail."""

    def __init__(self) -> None:
        self.free: dict[AddressFamily, set[int]] = {
            AddressFamily.IPV4: set(range(49152, 49162)),
            AddressFamily.IPV6: set(range(49152, 49162)),
        }
        self.in_use: set[RelayAddress] = set()
        self.failing: set[AddressFamily] = set()
        self.released: list[RelayAddress] = []

    def reserve(
        self, family: AddressFamily, *, even: bool, reserve_next: bool
    ) -> RelayAddress | None:
        if family in self.failing:
            return None
        ip = RELAY_V4 if family is AddressFamily.IPV4 else RELAY_V6
        free = self.free[family]
        for port in sorted(free):
            if even and port % 2:
                continue
            if reserve_next and port + 1 not in free:
                continue
            free.discard(port)
            self.in_use.add(RelayAddress(ip, port))
            if reserve_next:
                free.discard(port + 1)
                self.in_use.add(RelayAddress(ip, port + 1))
            return RelayAddress(ip, port)
        return None

    def release(self, addr: RelayAddress) -> None:
        if addr not in self.in_use:
            raise AssertionError(f"released twice or never reserved: {addr}")
        self.in_use.remove(addr)
        self.free[addr.family].add(addr.port)
        self.released.append(addr)


class PortPolicy:
    """Allows everything but ``denied_port`` (to test Send-time policy)."""

    def __init__(self, denied_port: int) -> None:
        self.denied_port = denied_port

    def check(self, ip: str, port: int) -> PolicyDecision:
        if port == self.denied_port:
            return PolicyDecision(False, "port denied")
        return PolicyDecision(True, "ok")


# --- the harness ---------------------------------------------------------------


class Harness:
    """A TURN server, a clock and a client that signs its requests."""

    def __init__(
        self,
        mode: AuthMode,
        *,
        config: TurnConfig | None = None,
        policy: PeerPolicy | PortPolicy | None = None,
        throttle: AuthThrottle | None = None,
    ) -> None:
        self.mode = mode
        self.now = START
        self.events = CollectingEventSink()
        self.allocator = FakeAllocator()
        self.nonces = NonceManager(b"n" * 32, lifetime_s=3600)
        if mode == "real":
            store = InMemoryKeyStore()
            for user, password in PASSWORDS.items():
                store.add_user(user, REALM, password)
            authenticator: LongTermAuthenticator | FakeAuth = LongTermAuthenticator(
                REALM, store, self.nonces
            )
        else:
            authenticator = FakeAuth()
        self.server = TurnServer(
            authenticator=authenticator,
            relays=self.allocator,
            policy=policy or PeerPolicy(allow=["198.51.100.0/24", "2001:db8:1::/48"]),
            config=config,
            events=self.events,
            throttle=throttle,
        )

    # the wire

    def nonce(self, client: ClientAddress, *, stale: bool = False) -> str:
        if self.mode == "fake":
            return "stale" if stale else "fake-nonce"
        issued = self.now - 7200 if stale else self.now
        auth_client = AuthClient(client.ip, client.port, client.transport)
        return self.nonces.issue(auth_client, issued)

    def build(
        self,
        method: int,
        *attributes: Attribute,
        client: ClientAddress = CLIENT,
        user: str | None = "alice",
        password: str | None = None,
        sha256: bool = False,
        stale: bool = False,
        fingerprint: bool = False,
        transaction_id: bytes | None = None,
    ) -> bytes:
        """A request, signed as ``user`` unless ``user`` is None."""
        tid = transaction_id or new_transaction_id()
        if user is None:
            msg = Message(method, MessageClass.REQUEST, tid, attributes)
            return encode(msg, fingerprint=fingerprint)
        creds: tuple[Attribute, ...] = (
            Username(user),
            Realm(REALM),
            Nonce(self.nonce(client, stale=stale)),
        )
        algorithm = Algorithm.MD5
        if sha256:
            algorithm = Algorithm.SHA256
            offered = PasswordAlgorithms(
                (
                    PasswordAlgorithmEntry(Algorithm.SHA256),
                    PasswordAlgorithmEntry(Algorithm.MD5),
                )
            )
            creds += (offered, PasswordAlgorithm(Algorithm.SHA256))
        secret = password or PASSWORDS.get(user, "nobody")
        key = integrity.long_term_key(user, REALM, secret, algorithm)
        msg = Message(method, MessageClass.REQUEST, tid, attributes + creds)
        return encode(msg, key=key, sha256=sha256, fingerprint=fingerprint)

    def feed(self, data: bytes, client: ClientAddress = CLIENT) -> list[Action]:
        return self.server.handle_client_datagram(data, client, self.now)

    def request(
        self,
        method: int,
        *attributes: Attribute,
        client: ClientAddress = CLIENT,
        user: str | None = "alice",
        password: str | None = None,
        sha256: bool = False,
        stale: bool = False,
        fingerprint: bool = False,
    ) -> Message:
        """Send a request and return the decoded response (the first action)."""
        data = self.build(
            method,
            *attributes,
            client=client,
            user=user,
            password=password,
            sha256=sha256,
            stale=stale,
            fingerprint=fingerprint,
        )
        self.actions = self.feed(data, client)
        first = self.actions[0]
        assert isinstance(first, SendToClient)
        assert first.client == client
        return decode(first.data)

    def allocate(
        self, *extra: Attribute, client: ClientAddress = CLIENT, user: str = "alice"
    ) -> Message:
        response = self.request(
            Method.ALLOCATE, RequestedTransport(17), *extra, client=client, user=user
        )
        assert response.cls is MessageClass.SUCCESS, error_of(response)
        return response

    def relay(self, response: Message) -> RelayAddress:
        relayed = response.get(XorRelayedAddress)
        assert relayed is not None
        return RelayAddress(relayed.ip, relayed.port)

    def permit(self, *peers: str, client: ClientAddress = CLIENT) -> Message:
        attrs = tuple(XorPeerAddress(p, 5000) for p in peers)
        return self.request(Method.CREATE_PERMISSION, *attrs, client=client)

    def bind(
        self, number: int, peer: str, port: int, client: ClientAddress = CLIENT
    ) -> Message:
        return self.request(
            Method.CHANNEL_BIND,
            ChannelNumber(number),
            XorPeerAddress(peer, port),
            client=client,
        )

    def send_indication(
        self, peer: str, port: int, payload: bytes, *extra: Attribute
    ) -> list[Action]:
        msg = Message(
            Method.SEND,
            MessageClass.INDICATION,
            new_transaction_id(),
            (XorPeerAddress(peer, port), Data(payload), *extra),
        )
        return self.feed(encode(msg))

    def from_peer(
        self, relay: RelayAddress, peer: str, port: int, payload: bytes
    ) -> list[Action]:
        return self.server.handle_peer_datagram(relay, peer, port, payload, self.now)

    def tick(self, seconds: float) -> list[Action]:
        self.now += seconds
        return self.server.handle_timeout(self.now)


def error_of(response: Message) -> int | None:
    error = response.get(ErrorCodeAttr)
    return None if error is None else error.code


@pytest.fixture(params=["fake", "real"])
def mode(request: pytest.FixtureRequest) -> AuthMode:
    value: AuthMode = request.param
    return value


@pytest.fixture
def h(mode: AuthMode) -> Harness:
    return Harness(mode)


def make(
    mode: AuthMode,
    *,
    config: TurnConfig | None = None,
    policy: PeerPolicy | PortPolicy | None = None,
    throttle: AuthThrottle | None = None,
) -> Harness:
    return Harness(mode, config=config, policy=policy, throttle=throttle)


# --- Allocate (RFC 8656 §7.2) ----------------------------------------------------


def test_allocate_success_attributes_and_signature(h: Harness) -> None:
    response = h.allocate()

    assert response.method == Method.ALLOCATE
    assert response.get(XorRelayedAddress) == XorRelayedAddress(RELAY_V4, 49152)
    assert response.get(XorMappedAddress) == XorMappedAddress(CLIENT.ip, CLIENT.port)
    assert response.get(Lifetime) == Lifetime(600)
    assert response.get(ReservationToken) is None
    assert response.get(MessageIntegrity) is not None
    assert verify_integrity(response, md5_key("alice"))
    created = h.events.of_type(AllocationCreated)
    assert len(created) == 1
    assert created[0].username == "alice"
    assert created[0].relays == ("192.0.2.1:49152",)
    assert h.events.of_type(AuthSucceeded)[0].method == "ALLOCATE"
    assert len(h.server) == 1
    assert h.server.is_relayed_address(RELAY_V4, 49152)
    allocation = h.server.allocation_at(RelayAddress(RELAY_V4, 49152))
    assert allocation is h.server.allocation_for(CLIENT)
    assert allocation is not None
    assert allocation.username == "alice"


def test_allocate_without_credentials_gets_unsigned_401(h: Harness) -> None:
    response = h.request(Method.ALLOCATE, RequestedTransport(17), user=None)

    assert response.cls is MessageClass.ERROR
    assert error_of(response) == ErrorCode.UNAUTHENTICATED
    assert response.get(Realm) == Realm(REALM)
    assert response.get(Nonce) is not None
    assert response.get(MessageIntegrity) is None
    # the normal first step is no failure
    assert h.events.of_type(AuthFailed) == []
    assert len(h.server) == 0


def test_allocate_wrong_password_gets_401_and_event(h: Harness) -> None:
    response = h.request(Method.ALLOCATE, RequestedTransport(17), password="guess")

    assert error_of(response) == ErrorCode.UNAUTHENTICATED
    assert response.get(MessageIntegrity) is None
    failed = h.events.of_type(AuthFailed)
    assert len(failed) == 1
    assert failed[0].code == 401
    assert failed[0].client == str(CLIENT)


def test_allocate_stale_nonce_gets_438(h: Harness) -> None:
    response = h.request(Method.ALLOCATE, RequestedTransport(17), stale=True)

    assert error_of(response) == ErrorCode.STALE_NONCE
    assert response.get(Nonce) is not None
    assert len(h.server) == 0


def test_allocate_sha256_integrity_is_answered_in_kind() -> None:
    h = Harness("real")
    response = h.request(Method.ALLOCATE, RequestedTransport(17), sha256=True)

    assert response.cls is MessageClass.SUCCESS
    assert response.get(MessageIntegritySha256) is not None
    key = integrity.long_term_key("alice", REALM, PASSWORDS["alice"], Algorithm.SHA256)
    assert verify_integrity(response, key)


def test_fingerprint_in_request_gives_fingerprint_in_response(h: Harness) -> None:
    response = h.request(Method.ALLOCATE, RequestedTransport(17), fingerprint=True)
    assert response.has_fingerprint


def test_allocate_without_requested_transport_is_400(h: Harness) -> None:
    response = h.request(Method.ALLOCATE)

    assert error_of(response) == ErrorCode.BAD_REQUEST
    # an error after authentication is signed with the request's key
    assert verify_integrity(response, md5_key("alice"))


def test_allocate_tcp_relay_is_442(h: Harness) -> None:
    response = h.request(Method.ALLOCATE, RequestedTransport(6))
    assert error_of(response) == ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL


def test_second_allocate_on_same_5_tuple_is_437(h: Harness) -> None:
    h.allocate()
    response = h.request(Method.ALLOCATE, RequestedTransport(17))

    assert error_of(response) == ErrorCode.ALLOCATION_MISMATCH
    assert len(h.server) == 1


def test_retransmitted_allocate_is_answered_from_cache(h: Harness) -> None:
    tid = new_transaction_id()
    request = h.build(Method.ALLOCATE, RequestedTransport(17), transaction_id=tid)
    first = h.feed(request)
    h.now += 1.5
    again = h.feed(request)

    assert again == first
    assert len(h.server) == 1
    assert h.server.stats().retransmits == 1
    assert len(h.events.of_type(AllocationCreated)) == 1

    # RFC 8489 §6.3.1: after 40 s the transaction is forgotten
    h.now += 60
    late = h.feed(request)
    assert isinstance(late[0], SendToClient)
    assert error_of(decode(late[0].data)) == ErrorCode.ALLOCATION_MISMATCH


def test_dont_fragment_is_accepted_and_applies_to_channel_data(h: Harness) -> None:
    h.allocate(DontFragment())
    h.bind(0x4000, PEER, 6000)
    actions = h.feed(encode_channel_data(0x4000, b"hello"))

    assert actions == [
        SendToPeer(RelayAddress(RELAY_V4, 49152), PEER, 6000, b"hello", True)
    ]


def test_dont_fragment_refused_as_unknown_when_unsupported(mode: AuthMode) -> None:
    h = make(mode, config=TurnConfig(dont_fragment=False))
    response = h.request(Method.ALLOCATE, RequestedTransport(17), DontFragment())

    assert error_of(response) == ErrorCode.UNKNOWN_ATTRIBUTE
    assert response.get(UnknownAttributes) == UnknownAttributes(
        (AttrType.DONT_FRAGMENT,)
    )


def test_unknown_required_attribute_is_420_signed(h: Harness) -> None:
    response = h.request(
        Method.ALLOCATE, RequestedTransport(17), UnknownAttribute(0x0031, b"\x00" * 4)
    )

    assert error_of(response) == ErrorCode.UNKNOWN_ATTRIBUTE
    assert response.get(UnknownAttributes) == UnknownAttributes((0x0031,))
    assert verify_integrity(response, md5_key("alice"))


def test_unknown_method_is_400(h: Harness) -> None:
    response = h.request(0x0FF, user=None)
    assert error_of(response) == ErrorCode.BAD_REQUEST


def test_requested_address_family_ipv6(h: Harness) -> None:
    response = h.allocate(RequestedAddressFamily(AddressFamily.IPV6))
    assert h.relay(response) == RelayAddress(RELAY_V6, 49152)


@pytest.mark.parametrize("family", [0x00, 0x03])
def test_requested_address_family_invalid_is_440(h: Harness, family: int) -> None:
    response = h.request(
        Method.ALLOCATE, RequestedTransport(17), RequestedAddressFamily(family)
    )
    assert error_of(response) == ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED


def test_requested_family_not_offered_is_440(mode: AuthMode) -> None:
    h = make(mode, config=TurnConfig(families=frozenset({AddressFamily.IPV4})))
    response = h.request(
        Method.ALLOCATE,
        RequestedTransport(17),
        RequestedAddressFamily(AddressFamily.IPV6),
    )
    assert error_of(response) == ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED


def test_no_family_requested_and_no_ipv4_is_440(mode: AuthMode) -> None:
    h = make(mode, config=TurnConfig(families=frozenset({AddressFamily.IPV6})))
    response = h.request(Method.ALLOCATE, RequestedTransport(17))
    assert error_of(response) == ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED


@pytest.mark.parametrize(
    "attributes",
    [
        # RFC 8656 §7.2 step 6
        (RequestedAddressFamily(1), AdditionalAddressFamily(2)),
        # step 8
        (EvenPort(True), AdditionalAddressFamily(2)),
        # step 9
        (AdditionalAddressFamily(1),),
        # step 5
        (ReservationToken(b"12345678"), EvenPort(False)),
        (ReservationToken(b"12345678"), RequestedAddressFamily(1)),
        (ReservationToken(b"12345678"), AdditionalAddressFamily(2)),
    ],
    ids=[
        "both-families",
        "even-r-dual",
        "additional-ipv4",
        "token-even",
        "token-raf",
        "token-aaf",
    ],
)
def test_conflicting_allocate_attributes_are_400(
    h: Harness, attributes: tuple[Attribute, ...]
) -> None:
    response = h.request(Method.ALLOCATE, RequestedTransport(17), *attributes)
    assert error_of(response) == ErrorCode.BAD_REQUEST
    assert h.allocator.in_use == set()


def test_dual_allocation_gives_two_relayed_addresses(h: Harness) -> None:
    response = h.allocate(AdditionalAddressFamily(AddressFamily.IPV6))

    relayed = list(response.get_all(XorRelayedAddress))
    assert relayed == [
        XorRelayedAddress(RELAY_V4, 49152),
        XorRelayedAddress(RELAY_V6, 49152),
    ]
    assert response.get(AddressErrorCode) is None

    # each family's peers go out of that family's relay
    h.permit(PEER, PEER_V6)
    assert h.send_indication(PEER_V6, 7000, b"six") == [
        SendToPeer(RelayAddress(RELAY_V6, 49152), PEER_V6, 7000, b"six")
    ]
    assert h.send_indication(PEER, 7000, b"four") == [
        SendToPeer(RelayAddress(RELAY_V4, 49152), PEER, 7000, b"four")
    ]


def test_dual_allocation_partial_when_ipv6_fails(h: Harness) -> None:
    h.allocator.failing.add(AddressFamily.IPV6)
    response = h.allocate(AdditionalAddressFamily(AddressFamily.IPV6))

    assert list(response.get_all(XorRelayedAddress)) == [
        XorRelayedAddress(RELAY_V4, 49152)
    ]
    assert response.get(AddressErrorCode) == AddressErrorCode(
        AddressFamily.IPV6, 508, "Insufficient Capacity"
    )


def test_dual_allocation_partial_when_ipv6_not_offered(mode: AuthMode) -> None:
    h = make(mode, config=TurnConfig(families=frozenset({AddressFamily.IPV4})))
    response = h.allocate(AdditionalAddressFamily(AddressFamily.IPV6))

    error = response.get(AddressErrorCode)
    assert error is not None
    assert (error.family, error.code) == (AddressFamily.IPV6, 440)


def test_dual_allocation_partial_when_ipv4_fails(h: Harness) -> None:
    h.allocator.failing.add(AddressFamily.IPV4)
    response = h.allocate(AdditionalAddressFamily(AddressFamily.IPV6))

    assert h.relay(response).family is AddressFamily.IPV6
    error = response.get(AddressErrorCode)
    assert error is not None
    assert (error.family, error.code) == (AddressFamily.IPV4, 508)


def test_dual_allocation_with_no_capacity_is_508(h: Harness) -> None:
    h.allocator.failing.update((AddressFamily.IPV4, AddressFamily.IPV6))
    response = h.request(
        Method.ALLOCATE, RequestedTransport(17), AdditionalAddressFamily(2)
    )
    assert error_of(response) == ErrorCode.INSUFFICIENT_CAPACITY


def test_no_relay_port_is_508(h: Harness) -> None:
    h.allocator.failing.add(AddressFamily.IPV4)
    response = h.request(Method.ALLOCATE, RequestedTransport(17))

    assert error_of(response) == ErrorCode.INSUFFICIENT_CAPACITY
    assert len(h.server) == 0


def test_even_port_without_reservation(h: Harness) -> None:
    h.allocator.free[AddressFamily.IPV4].discard(49152)
    response = h.allocate(EvenPort(False))

    assert h.relay(response).port == 49154
    assert response.get(ReservationToken) is None


def test_even_port_reservation_token_gives_next_port(h: Harness) -> None:
    response = h.allocate(EvenPort(True))
    token = response.get(ReservationToken)

    assert h.relay(response) == RelayAddress(RELAY_V4, 49152)
    assert token is not None
    assert h.server.stats().reservations == 1

    other = h.allocate(token, client=CLIENT2)
    assert h.relay(other) == RelayAddress(RELAY_V4, 49153)
    assert h.server.stats().reservations == 0

    # a token is good for one allocation only
    client3 = ClientAddress(Transport.UDP, "192.0.2.53", 1, SERVER_IP, 3478)
    third = h.request(Method.ALLOCATE, RequestedTransport(17), token, client=client3)
    assert error_of(third) == ErrorCode.INSUFFICIENT_CAPACITY

    # the reserved port now belongs to that allocation: released with it
    h.request(Method.REFRESH, Lifetime(0), client=CLIENT2)
    assert RelayAddress(RELAY_V4, 49153) in h.allocator.released


def test_unknown_reservation_token_is_508(h: Harness) -> None:
    response = h.request(
        Method.ALLOCATE, RequestedTransport(17), ReservationToken(b"\x01" * 8)
    )
    assert error_of(response) == ErrorCode.INSUFFICIENT_CAPACITY


def test_unused_reservation_expires_and_is_released(h: Harness) -> None:
    response = h.allocate(EvenPort(True))
    token = response.get(ReservationToken)
    assert token is not None

    actions = h.tick(30)
    next_port = RelayAddress(RELAY_V4, 49153)
    assert CloseRelay(next_port) in actions
    assert next_port in h.allocator.released
    late = h.request(Method.ALLOCATE, RequestedTransport(17), token, client=CLIENT2)
    assert error_of(late) == ErrorCode.INSUFFICIENT_CAPACITY


@pytest.mark.parametrize(
    ("requested", "granted"),
    [(None, 600), (0, 600), (100, 600), (1200, 1200), (3600, 3600), (7200, 3600)],
)
def test_allocate_lifetime(h: Harness, requested: int | None, granted: int) -> None:
    extra = () if requested is None else (Lifetime(requested),)
    response = h.allocate(*extra)
    assert response.get(Lifetime) == Lifetime(granted)


def test_configured_max_lifetime(mode: AuthMode) -> None:
    h = make(mode, config=TurnConfig(default_lifetime=300, max_lifetime=900))
    assert h.allocate(Lifetime(5000)).get(Lifetime) == Lifetime(900)
    assert h.allocate(client=CLIENT2).get(Lifetime) == Lifetime(300)


def test_allocation_quota_per_user_is_486(mode: AuthMode) -> None:
    quota = QuotaConfig(max_allocations_per_user=1)
    h = make(mode, config=TurnConfig(quota=quota))
    h.allocate()
    response = h.request(Method.ALLOCATE, RequestedTransport(17), client=CLIENT2)

    assert error_of(response) == ErrorCode.ALLOCATION_QUOTA_REACHED
    refused = h.events.of_type(QuotaRefused)
    assert [(e.quota, e.limit) for e in refused] == [
        (QuotaKind.ALLOCATIONS_PER_USER, 1)
    ]
    # another user is not affected
    h.allocate(client=CLIENT2, user="bob")

    # the quota frees up when the allocation goes
    h.request(Method.REFRESH, Lifetime(0))
    h.allocate(client=TCP_CLIENT)


def test_allocation_quota_total_is_486(mode: AuthMode) -> None:
    h = make(mode, config=TurnConfig(quota=QuotaConfig(max_allocations=1)))
    h.allocate()
    response = h.request(
        Method.ALLOCATE, RequestedTransport(17), client=CLIENT2, user="bob"
    )
    assert error_of(response) == ErrorCode.ALLOCATION_QUOTA_REACHED
    assert h.events.of_type(QuotaRefused)[0].quota == QuotaKind.ALLOCATIONS_TOTAL


def test_rest_quota_user_counts_the_user_part() -> None:
    assert rest_quota_user("1700000000:alice") == "alice"
    assert rest_quota_user("1700000000") == "1700000000"
    assert rest_quota_user("alice") == "alice"


# --- Refresh (RFC 8656 §7.3) ------------------------------------------------------


def test_refresh_sets_new_lifetime(h: Harness) -> None:
    h.allocate()
    h.now += 500
    response = h.request(Method.REFRESH, Lifetime(1800))

    assert response.cls is MessageClass.SUCCESS
    assert response.get(Lifetime) == Lifetime(1800)
    assert verify_integrity(response, md5_key("alice"))
    assert h.events.of_type(AllocationRefreshed)[0].lifetime == 1800

    # still alive long after the first 600 s
    assert h.tick(1000) == []
    assert len(h.server) == 1
    actions = h.tick(900)
    assert CloseRelay(RelayAddress(RELAY_V4, 49152)) in actions
    assert len(h.server) == 0


def test_refresh_without_lifetime_uses_default(h: Harness) -> None:
    h.allocate(Lifetime(3600))
    response = h.request(Method.REFRESH)
    assert response.get(Lifetime) == Lifetime(600)


def test_refresh_lifetime_zero_deletes(h: Harness) -> None:
    relay = h.relay(h.allocate())
    response = h.request(Method.REFRESH, Lifetime(0))

    assert response.cls is MessageClass.SUCCESS
    assert response.get(Lifetime) == Lifetime(0)
    assert CloseRelay(relay) in h.actions
    assert h.allocator.released == [relay]
    assert h.allocator.in_use == set()
    deleted = h.events.of_type(AllocationDeleted)
    assert [e.reason for e in deleted] == [EndReason.REFRESH]
    assert len(h.server) == 0
    assert not h.server.is_relayed_address(relay.ip, relay.port)

    # RFC 8656 §7.3: a retransmission of it finds no allocation: 437
    again = h.request(Method.REFRESH, Lifetime(0))
    assert error_of(again) == ErrorCode.ALLOCATION_MISMATCH


def test_refresh_without_allocation_is_437(h: Harness) -> None:
    response = h.request(Method.REFRESH)
    assert error_of(response) == ErrorCode.ALLOCATION_MISMATCH


def test_refresh_by_another_user_is_441(h: Harness) -> None:
    h.allocate()
    response = h.request(Method.REFRESH, user="bob")

    assert error_of(response) == ErrorCode.WRONG_CREDENTIALS
    assert verify_integrity(response, md5_key("bob"))


def test_refresh_family_mismatch_is_443(h: Harness) -> None:
    h.allocate()
    response = h.request(Method.REFRESH, RequestedAddressFamily(AddressFamily.IPV6))
    assert error_of(response) == ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH


# --- CreatePermission (RFC 8656 §9) --------------------------------------------


def test_create_permission(h: Harness) -> None:
    h.allocate()
    response = h.permit(PEER, PEER2)

    assert response.cls is MessageClass.SUCCESS
    assert verify_integrity(response, md5_key("alice"))
    assert [e.peer_ip for e in h.events.of_type(PermissionCreated)] == [PEER, PEER2]
    assert h.server.stats().permissions == 2


def test_create_permission_without_peer_is_400(h: Harness) -> None:
    h.allocate()
    response = h.request(Method.CREATE_PERMISSION)
    assert error_of(response) == ErrorCode.BAD_REQUEST


def test_create_permission_without_allocation_is_437(h: Harness) -> None:
    assert error_of(h.permit(PEER)) == ErrorCode.ALLOCATION_MISMATCH


def test_create_permission_by_another_user_is_441(h: Harness) -> None:
    h.allocate()
    response = h.request(Method.CREATE_PERMISSION, XorPeerAddress(PEER, 1), user="bob")
    assert error_of(response) == ErrorCode.WRONG_CREDENTIALS


def test_create_permission_family_mismatch_is_443(h: Harness) -> None:
    h.allocate()
    assert error_of(h.permit(PEER_V6)) == ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH


def test_create_permission_denied_peer_is_403_all_or_nothing(h: Harness) -> None:
    h.allocate()
    response = h.permit(PEER, DENIED_PEER)

    assert error_of(response) == ErrorCode.FORBIDDEN
    denied = h.events.of_type(PeerDenied)
    assert [e.peer_ip for e in denied] == [DENIED_PEER]
    assert "loopback" in denied[0].reason
    # neither address got a permission
    assert h.server.stats().permissions == 0


def test_create_permission_quota_is_508(mode: AuthMode) -> None:
    quota = QuotaConfig(max_permissions_per_allocation=2)
    h = make(mode, config=TurnConfig(quota=quota))
    h.allocate()
    h.permit(PEER, PEER2)

    # refreshing existing ones is fine
    assert h.permit(PEER).cls is MessageClass.SUCCESS
    response = h.permit("198.51.100.9")
    assert error_of(response) == ErrorCode.INSUFFICIENT_CAPACITY
    assert h.events.of_type(QuotaRefused)[0].quota == QuotaKind.PERMISSIONS


def test_permission_expires_after_300_s_and_refreshes(h: Harness) -> None:
    relay = h.relay(h.allocate())
    h.permit(PEER)
    h.now += 200
    h.permit(PEER, PEER2)  # refreshes PEER to t+500

    assert h.tick(150) == []  # t = 350: the first 300 s have passed
    assert h.from_peer(relay, PEER, 1, b"x") != []
    assert h.events.of_type(PermissionExpired) == []

    h.tick(150)  # t = 500
    assert sorted(e.peer_ip for e in h.events.of_type(PermissionExpired)) == [
        PEER,
        PEER2,
    ]
    assert h.from_peer(relay, PEER, 1, b"x") == []
    assert h.server.stats().permissions == 0


# --- ChannelBind (RFC 8656 §11) --------------------------------------------------


def test_channel_bind_installs_permission(h: Harness) -> None:
    relay = h.relay(h.allocate())
    response = h.bind(0x4000, PEER, 6000)

    assert response.cls is MessageClass.SUCCESS
    assert verify_integrity(response, md5_key("alice"))
    bound = h.events.of_type(ChannelBound)
    assert [(e.channel, e.peer_ip, e.peer_port) for e in bound] == [
        (0x4000, PEER, 6000)
    ]
    assert h.events.of_type(PermissionCreated)[0].peer_ip == PEER
    # a peer datagram now arrives as ChannelData
    actions = h.from_peer(relay, PEER, 6000, b"data")
    assert isinstance(actions[0], SendToClient)
    assert decode_channel_data(actions[0].data).channel == 0x4000


@pytest.mark.parametrize("number", [0x0000, 0x3FFF, 0x8000, 0xFFFF])
def test_channel_number_out_of_range_is_400(h: Harness, number: int) -> None:
    h.allocate()
    assert error_of(h.bind(number, PEER, 6000)) == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("number", [0x4000, 0x4FFF, 0x5000, 0x7FFF])
def test_channel_number_range_edges_are_valid(h: Harness, number: int) -> None:
    h.allocate()
    assert h.bind(number, PEER, 6000).cls is MessageClass.SUCCESS


def test_channel_bind_missing_attributes_is_400(h: Harness) -> None:
    h.allocate()
    missing_peer = h.request(Method.CHANNEL_BIND, ChannelNumber(0x4000))
    missing_number = h.request(Method.CHANNEL_BIND, XorPeerAddress(PEER, 1))
    assert error_of(missing_peer) == ErrorCode.BAD_REQUEST
    assert error_of(missing_number) == ErrorCode.BAD_REQUEST


def test_channel_rebinding_rules(h: Harness) -> None:
    h.allocate()
    assert h.bind(0x4000, PEER, 6000).cls is MessageClass.SUCCESS

    # the same pair again is a refresh
    assert h.bind(0x4000, PEER, 6000).cls is MessageClass.SUCCESS
    assert len(h.events.of_type(ChannelBound)) == 1

    # number bound to another peer address (other port counts): 400
    assert error_of(h.bind(0x4000, PEER, 6001)) == ErrorCode.BAD_REQUEST
    assert error_of(h.bind(0x4000, PEER2, 6000)) == ErrorCode.BAD_REQUEST
    # peer address bound to another number: 400
    assert error_of(h.bind(0x4001, PEER, 6000)) == ErrorCode.BAD_REQUEST
    # the same IP on another port is another peer address
    assert h.bind(0x4001, PEER, 6001).cls is MessageClass.SUCCESS


def test_channel_bind_denied_peer_is_403(h: Harness) -> None:
    h.allocate()
    assert error_of(h.bind(0x4000, DENIED_PEER, 6000)) == ErrorCode.FORBIDDEN
    assert h.events.of_type(PeerDenied)[0].peer_port == 6000
    assert h.server.stats().channels == 0


def test_channel_bind_family_mismatch_is_443(h: Harness) -> None:
    h.allocate()
    response = h.bind(0x4000, PEER_V6, 6000)
    assert error_of(response) == ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH


def test_channel_bind_without_allocation_is_437(h: Harness) -> None:
    assert error_of(h.bind(0x4000, PEER, 6000)) == ErrorCode.ALLOCATION_MISMATCH


def test_channel_quota_is_508(mode: AuthMode) -> None:
    quota = QuotaConfig(max_channels_per_allocation=1)
    h = make(mode, config=TurnConfig(quota=quota))
    h.allocate()
    h.bind(0x4000, PEER, 6000)

    assert h.bind(0x4000, PEER, 6000).cls is MessageClass.SUCCESS
    assert error_of(h.bind(0x4001, PEER, 6001)) == ErrorCode.INSUFFICIENT_CAPACITY
    assert h.events.of_type(QuotaRefused)[0].quota == QuotaKind.CHANNELS


def test_channel_bind_respects_permission_quota(mode: AuthMode) -> None:
    quota = QuotaConfig(max_permissions_per_allocation=1)
    h = make(mode, config=TurnConfig(quota=quota))
    h.allocate()
    h.bind(0x4000, PEER, 6000)
    assert error_of(h.bind(0x4001, PEER2, 6000)) == ErrorCode.INSUFFICIENT_CAPACITY


def test_channel_expires_after_600_s(h: Harness) -> None:
    relay = h.relay(h.allocate(Lifetime(3600)))
    h.bind(0x4000, PEER, 6000)
    # the permission is refreshed to outlive the channel
    h.now += 290
    h.permit(PEER)
    h.tick(210)  # t = 500
    h.permit(PEER)

    h.tick(99)  # t = 599
    assert h.events.of_type(ChannelExpired) == []
    h.tick(1)  # t = 600
    expired = h.events.of_type(ChannelExpired)
    assert [(e.channel, e.peer_ip) for e in expired] == [(0x4000, PEER)]
    assert h.server.stats().channels == 0

    # data from the peer falls back to Data indications, ChannelData is dropped
    actions = h.from_peer(relay, PEER, 6000, b"d")
    assert isinstance(actions[0], SendToClient)
    assert decode(actions[0].data).method == Method.DATA
    assert h.feed(encode_channel_data(0x4000, b"x")) == []
    assert h.server.stats().unknown_channel == 1

    # the number can be bound to another peer now
    assert h.bind(0x4000, PEER2, 6000).cls is MessageClass.SUCCESS


# --- Send and Data indications (RFC 8656 §10) ------------------------------------


def test_send_indication_goes_to_peer(h: Harness) -> None:
    relay = h.relay(h.allocate())
    h.permit(PEER)
    actions = h.send_indication(PEER, 7000, b"payload")

    assert actions == [SendToPeer(relay, PEER, 7000, b"payload", False)]
    allocation = h.server.allocation_for(CLIENT)
    assert allocation is not None
    assert (allocation.packets_to_peer, allocation.bytes_to_peer) == (1, 7)


def test_send_indication_dont_fragment(h: Harness) -> None:
    h.allocate()
    h.permit(PEER)
    actions = h.send_indication(PEER, 7000, b"", DontFragment())

    assert len(actions) == 1
    assert isinstance(actions[0], SendToPeer)
    assert actions[0].dont_fragment
    assert actions[0].data == b""


def test_send_indication_drops_are_silent_and_counted(h: Harness) -> None:
    # no allocation
    assert h.send_indication(PEER, 7000, b"x") == []
    assert h.server.stats().no_allocation == 1

    # no permission
    h.allocate()
    assert h.send_indication(PEER, 7000, b"x") == []
    assert h.server.stats().no_permission == 1

    # missing DATA
    msg = Message(
        Method.SEND,
        MessageClass.INDICATION,
        new_transaction_id(),
        (XorPeerAddress(PEER, 7000),),
    )
    assert h.feed(encode(msg)) == []
    assert h.server.stats().malformed == 1
    allocation = h.server.allocation_for(CLIENT)
    assert allocation is not None
    assert allocation.dropped == 2


def test_send_indication_to_denied_port_is_counted_separately(mode: AuthMode) -> None:
    h = make(mode, policy=PortPolicy(denied_port=9999))
    h.allocate()
    h.permit(PEER)

    assert h.send_indication(PEER, 9999, b"x") == []
    stats = h.server.stats()
    assert (stats.policy_denied, stats.no_permission) == (1, 0)
    assert h.send_indication(PEER, 9998, b"x") != []


def test_peer_datagram_without_permission_is_dropped(h: Harness) -> None:
    relay = h.relay(h.allocate())
    h.permit(PEER)

    assert h.from_peer(relay, PEER2, 5000, b"x") == []
    assert h.server.stats().no_permission == 1
    assert h.from_peer(RelayAddress(RELAY_V4, 60000), PEER, 5000, b"x") == []
    assert h.server.stats().unknown_relay == 1


@pytest.mark.parametrize("peer", [PEER, PEER_V6])
def test_peer_datagram_becomes_data_indication(h: Harness, peer: str) -> None:
    family = AddressFamily.IPV6 if ":" in peer else AddressFamily.IPV4
    relay = h.relay(h.allocate(RequestedAddressFamily(family)))
    h.permit(peer)
    actions = h.from_peer(relay, peer, 5555, b"from the peer")

    assert len(actions) == 1
    action = actions[0]
    assert isinstance(action, SendToClient)
    assert action.client == CLIENT
    data = decode(action.data)
    assert (data.method, data.cls) == (Method.DATA, MessageClass.INDICATION)
    assert data.get(XorPeerAddress) == XorPeerAddress(peer, 5555)
    assert data.get(Data) == Data(b"from the peer")
    allocation = h.server.allocation_for(CLIENT)
    assert allocation is not None
    assert (allocation.packets_to_client, allocation.bytes_to_client) == (1, 13)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 100])
@pytest.mark.parametrize("peer", ["198.51.100.7", "2001:db8:1::7"])
def test_fast_data_indication_matches_the_codec(size: int, peer: str) -> None:
    from natkit.turn.allocation import Allocation, Permission

    alloc = Allocation(
        allocation_id="t",
        username="u",
        quota_user="u",
        client=CLIENT,
        relays=(RelayAddress(RELAY_V4, 1),),
        now=0.0,
        lifetime=600,
    )
    payload = bytes(range(size))
    perm = Permission(alloc, peer, RelayAddress(RELAY_V4, 1), 1.0)
    raw = _data_indication(perm, 4242, payload)
    msg = decode(raw)
    expected = Message(
        Method.DATA,
        MessageClass.INDICATION,
        msg.transaction_id,
        (XorPeerAddress(peer, 4242), Data(payload)),
    )
    assert raw == encode(expected)


def test_peer_datagram_with_channel_is_channel_data(h: Harness) -> None:
    relay = h.relay(h.allocate())
    h.bind(0x4ABC, PEER, 6000)

    actions = h.from_peer(relay, PEER, 6000, b"abcde")
    assert actions == [SendToClient(CLIENT, encode_channel_data(0x4ABC, b"abcde"))]
    # same IP, other port: no channel for it, so a Data indication
    other = h.from_peer(relay, PEER, 6001, b"abcde")
    assert isinstance(other[0], SendToClient)
    assert decode(other[0].data).method == Method.DATA


def test_channel_data_to_tcp_client_is_padded(h: Harness) -> None:
    relay = h.relay(h.allocate(client=TCP_CLIENT))
    h.bind(0x4000, PEER, 6000, client=TCP_CLIENT)
    actions = h.from_peer(relay, PEER, 6000, b"abcde")

    frame = encode_channel_data(0x4000, b"abcde", pad=True)
    assert len(frame) == 12
    assert actions == [SendToClient(TCP_CLIENT, frame)]


def test_client_channel_data_goes_to_peer(h: Harness) -> None:
    relay = h.relay(h.allocate())
    h.bind(0x4000, PEER, 6000)

    assert h.feed(encode_channel_data(0x4000, b"hello")) == [
        SendToPeer(relay, PEER, 6000, b"hello", False)
    ]
    # padding after the data (TCP style) is accepted over UDP too
    padded = encode_channel_data(0x4000, b"hello", pad=True)
    assert h.feed(padded) == [SendToPeer(relay, PEER, 6000, b"hello", False)]
    allocation = h.server.allocation_for(CLIENT)
    assert allocation is not None
    assert (allocation.packets_to_peer, allocation.bytes_to_peer) == (2, 10)


def test_client_channel_data_drops(h: Harness) -> None:
    assert h.feed(encode_channel_data(0x4000, b"x")) == []
    assert h.server.stats().no_allocation == 1

    h.allocate()
    assert h.feed(encode_channel_data(0x4000, b"x")) == []
    assert h.server.stats().unknown_channel == 1

    h.bind(0x4000, PEER, 6000)
    truncated = struct.pack("!HH", 0x4000, 10) + b"short"
    assert h.feed(truncated) == []
    assert h.feed(b"\x40\x00\x00") == []
    assert h.server.stats().malformed == 2


def test_channel_data_needs_the_permission_too(h: Harness) -> None:
    relay = h.relay(h.allocate())
    h.bind(0x4000, PEER, 6000)

    # RFC 8656 §11: the binding lasts 600 s, the permission it made only 300 s
    h.tick(300)
    assert h.server.stats().channels == 1
    assert h.feed(encode_channel_data(0x4000, b"x")) == []
    assert h.from_peer(relay, PEER, 6000, b"x") == []
    assert h.server.stats().no_permission == 2

    # refreshing the binding refreshes the permission
    h.bind(0x4000, PEER, 6000)
    assert h.feed(encode_channel_data(0x4000, b"x")) != []


def test_send_indication_with_dont_fragment_unsupported_is_dropped(
    mode: AuthMode,
) -> None:
    h = make(mode, config=TurnConfig(dont_fragment=False))
    h.allocate()
    h.permit(PEER)

    assert h.send_indication(PEER, 7000, b"x", DontFragment()) == []
    assert h.server.stats().malformed == 1
    assert h.send_indication(PEER, 7000, b"x") != []


def test_peer_datagram_too_big_for_a_data_indication_is_dropped(h: Harness) -> None:
    relay = h.relay(h.allocate())
    h.permit(PEER)

    assert h.from_peer(relay, PEER, 1, b"x" * 65505) == []
    assert h.server.stats().malformed == 1
    assert h.from_peer(relay, PEER, 1, b"x" * 65504) != []


def test_bandwidth_limit_drops_and_counts(mode: AuthMode) -> None:
    quota = QuotaConfig(max_bytes_per_second=1000, burst_seconds=1.0)
    h = make(mode, config=TurnConfig(quota=quota))
    relay = h.relay(h.allocate())
    h.bind(0x4000, PEER, 6000)

    assert h.feed(encode_channel_data(0x4000, b"x" * 800)) != []
    assert h.feed(encode_channel_data(0x4000, b"x" * 800)) == []
    assert h.from_peer(relay, PEER, 6000, b"y" * 300) == []
    assert h.send_indication(PEER, 6000, b"z" * 300) == []
    assert h.server.stats().rate_limited == 3
    h.now += 1.0
    assert h.from_peer(relay, PEER, 6000, b"y" * 300) != []
    assert h.send_indication(PEER, 6000, b"z" * 300) != []


# --- timers and the end of allocations -----------------------------------------


def test_allocation_expires_and_releases_everything(h: Harness) -> None:
    relay = h.relay(h.allocate())
    h.bind(0x4000, PEER, 6000)
    h.feed(encode_channel_data(0x4000, b"abc"))

    assert h.server.next_deadline() is not None
    actions = h.tick(600)

    assert CloseRelay(relay) in actions
    assert h.allocator.in_use == set()
    assert len(h.server) == 0
    expired = h.events.of_type(AllocationExpired)
    assert len(expired) == 1
    assert expired[0].duration == 600
    assert (expired[0].stats.packets_to_peer, expired[0].stats.bytes_to_peer) == (1, 3)
    assert h.server.next_deadline() is None
    # nothing left that data could reach
    assert h.from_peer(relay, PEER, 6000, b"x") == []
    assert h.feed(encode_channel_data(0x4000, b"x")) == []


def test_next_deadline_tracks_the_earliest_timer(h: Harness) -> None:
    assert h.server.next_deadline() is None
    h.allocate()
    assert h.server.next_deadline() == START + 600
    h.permit(PEER)
    assert h.server.next_deadline() == START + 300
    assert h.tick(299.9) == []


def test_tcp_connection_closed_deletes_allocation(h: Harness) -> None:
    relay = h.relay(h.allocate(client=TCP_CLIENT))
    actions = h.server.handle_client_closed(TCP_CLIENT, h.now)

    assert actions == [CloseRelay(relay)]
    assert h.events.of_type(AllocationDeleted)[0].reason is EndReason.CONNECTION_CLOSED
    assert h.server.handle_client_closed(TCP_CLIENT, h.now) == []


def test_close_releases_allocations_and_reservations(h: Harness) -> None:
    h.allocate(EvenPort(True))
    h.allocate(client=CLIENT2, user="bob")
    actions = h.server.close(h.now)

    assert len([a for a in actions if isinstance(a, CloseRelay)]) == 3
    assert h.allocator.in_use == set()
    assert h.server.stats().reservations == 0
    assert h.server.next_deadline() is None


# --- STUN on the TURN port, and odds and ends -----------------------------------


def test_binding_request_is_answered_without_credentials(h: Harness) -> None:
    response = h.request(Method.BINDING, user=None)

    assert response.cls is MessageClass.SUCCESS
    assert response.get(XorMappedAddress) == XorMappedAddress(CLIENT.ip, CLIENT.port)


def test_software_in_responses(mode: AuthMode) -> None:
    h = make(mode, config=TurnConfig(software="natkit test"))
    assert h.allocate().get(Software) == Software("natkit test")
    assert h.request(Method.BINDING, user=None).get(Software) == Software("natkit test")


def test_garbage_and_responses_are_dropped(h: Harness) -> None:
    assert h.feed(b"\x00\x01\x00") == []
    assert h.feed(b"\xff" * 24) == []
    response = Message(Method.ALLOCATE, MessageClass.SUCCESS, new_transaction_id())
    assert h.feed(encode(response)) == []
    stats = h.server.stats()
    assert (stats.malformed, stats.ignored) == (2, 1)


def test_throttled_source_is_dropped(mode: AuthMode) -> None:
    h = make(mode, throttle=AuthThrottle(max_failures=2, window_s=60, block_s=60))
    for _ in range(2):
        h.request(Method.ALLOCATE, RequestedTransport(17), password="guess")

    data = h.build(Method.ALLOCATE, RequestedTransport(17))
    assert h.feed(data) == []
    assert h.server.stats().throttled == 1
    h.now += 61
    assert h.feed(data) != []


def test_policy_can_allow_relayed_addresses_of_this_server(mode: AuthMode) -> None:
    server: list[TurnServer] = []
    policy = PeerPolicy(
        relay_addresses_allowed=lambda ip, port: server[0].is_relayed_address(ip, port)
    )
    h = make(mode, policy=policy)
    server.append(h.server)
    h.allocate()
    other = h.relay(h.allocate(client=CLIENT2, user="bob"))

    # 192.0.2.0/24 is a denied documentation range, but this is a relay here
    assert h.bind(0x4000, other.ip, other.port).cls is MessageClass.SUCCESS
    assert error_of(h.bind(0x4001, other.ip, 1)) == ErrorCode.FORBIDDEN


def test_config_validation() -> None:
    with pytest.raises(UsageError):
        TurnConfig(default_lifetime=0)
    with pytest.raises(UsageError):
        TurnConfig(default_lifetime=600, max_lifetime=300)
    with pytest.raises(UsageError):
        TurnConfig(reservation_lifetime=10)
    with pytest.raises(UsageError):
        TurnConfig(families=frozenset())
    with pytest.raises(UsageError):
        TurnConfig(permission_lifetime=0)
