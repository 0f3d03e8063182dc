"""The RFC 5780 §6 responder: which address answers, and with what."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natkit.nat.endpoint import Endpoint
from natkit.nat.server import Rfc5780Responder, ServerReply
from natkit.stun.attributes import (
    Attribute,
    ChangeRequest,
    ErrorCodeAttr,
    MappedAddress,
    OtherAddress,
    Padding,
    ResponseOrigin,
    ResponsePort,
    Software,
    UnknownAttribute,
    UnknownAttributes,
    XorMappedAddress,
)
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.errors import UsageError
from natkit.stun.message import Message, decode, encode, new_transaction_id

A1P1 = Endpoint("198.51.100.10", 3478)
A2P2 = Endpoint("198.51.100.11", 3479)
A1P2 = Endpoint("198.51.100.10", 3479)
A2P1 = Endpoint("198.51.100.11", 3478)
CLIENT = Endpoint("203.0.113.1", 40000)


def responder(
    *, software: str | None = None, padding_margin: int = 0
) -> Rfc5780Responder:
    return Rfc5780Responder(
        A1P1, A2P2, software=software, padding_margin=padding_margin
    )


def request(*attributes: Attribute, method: int = Method.BINDING) -> Message:
    return Message(method, MessageClass.REQUEST, new_transaction_id(), attributes)


def ask(
    server: Rfc5780Responder,
    msg: Message,
    *,
    local: Endpoint = A1P1,
    fingerprint: bool = False,
) -> tuple[ServerReply, Message]:
    reply = server.handle(
        encode(msg, fingerprint=fingerprint), local=local, source=CLIENT
    )
    assert reply is not None
    return reply, decode(reply.data)


def test_listens_on_four_addresses() -> None:
    assert set(responder().addresses) == {A1P1, A1P2, A2P1, A2P2}


def test_plain_request_answered_from_where_it_arrived() -> None:
    """RFC 5780 §6.1: RESPONSE-ORIGIN and OTHER-ADDRESS even without flags."""
    msg = request()
    reply, response = ask(responder(), msg)

    assert reply.source == A1P1
    assert reply.destination == CLIENT
    assert response.cls is MessageClass.SUCCESS
    assert response.transaction_id == msg.transaction_id
    assert response.get(XorMappedAddress) == XorMappedAddress(CLIENT.ip, CLIENT.port)
    assert response.get(MappedAddress) == MappedAddress(CLIENT.ip, CLIENT.port)
    assert response.get(ResponseOrigin) == ResponseOrigin(A1P1.ip, A1P1.port)
    assert response.get(OtherAddress) == OtherAddress(A2P2.ip, A2P2.port)


@pytest.mark.parametrize(
    ("local", "change_ip", "change_port", "source"),
    [
        # RFC 5780 §6.1 Table 1, for each of the four receiving addresses
        (A1P1, False, False, A1P1),
        (A1P1, True, False, A2P1),
        (A1P1, False, True, A1P2),
        (A1P1, True, True, A2P2),
        (A2P2, True, True, A1P1),
        (A2P1, False, True, A2P2),
        (A1P2, True, False, A2P2),
        (A2P1, True, True, A1P2),
    ],
)
def test_change_request_table_1(
    local: Endpoint, change_ip: bool, change_port: bool, source: Endpoint
) -> None:
    server = responder()
    change = ChangeRequest(change_ip=change_ip, change_port=change_port)
    reply, response = ask(server, request(change), local=local)

    assert reply.source == source
    assert reply.destination == CLIENT
    assert response.get(ResponseOrigin) == ResponseOrigin(source.ip, source.port)
    # OTHER-ADDRESS is Ca:Cp of the receiving address, whatever the flags
    other = server.other_address(local)
    assert other.ip != local.ip and other.port != local.port
    assert response.get(OtherAddress) == OtherAddress(other.ip, other.port)


def test_response_port_redirects_to_source_ip() -> None:
    """RFC 5780 §7.5: to the request's source IP, the port asked for."""
    reply, response = ask(responder(), request(ResponsePort(50000)))
    assert reply.destination == Endpoint(CLIENT.ip, 50000)
    assert reply.source == A1P1
    # the mapped address is still that of the request's source
    assert response.get(XorMappedAddress) == XorMappedAddress(CLIENT.ip, CLIENT.port)


def test_response_port_with_change_request() -> None:
    change = ChangeRequest(change_ip=True, change_port=True)
    reply, _ = ask(responder(), request(change, ResponsePort(50000)))
    assert (reply.source, reply.destination) == (A2P2, Endpoint(CLIENT.ip, 50000))


def test_response_port_zero_is_bad_request() -> None:
    reply, response = ask(responder(), request(ResponsePort(0)))
    err = response.get(ErrorCodeAttr)
    assert response.cls is MessageClass.ERROR and err is not None
    assert err.code == 400
    assert reply.destination == CLIENT


def test_padding_with_response_port_is_400() -> None:
    """RFC 5780 §6.1: PADDING and RESPONSE-PORT together get a 400."""
    msg = request(Padding(bytes(100)), ResponsePort(50000))
    reply, response = ask(responder(), msg)
    err = response.get(ErrorCodeAttr)
    assert err is not None and err.code == 400
    # the error goes back to the source, from where the request arrived
    assert (reply.source, reply.destination) == (A1P1, CLIENT)


def test_error_ignores_change_request() -> None:
    msg = request(ChangeRequest(change_ip=True, change_port=True), ResponsePort(0))
    reply, _ = ask(responder(), msg)
    assert reply.source == A1P1


def test_padded_response_sized_like_the_request() -> None:
    """RFC 5780 §7.6: PADDING is echoed, the response no larger than the request."""
    msg = request(Padding(bytes(1200)))
    data = encode(msg)
    reply = responder().handle(data, local=A1P1, source=CLIENT)
    assert reply is not None
    response = decode(reply.data)
    padding = response.get(Padding)
    assert padding is not None
    assert len(reply.data) <= len(data)
    assert len(data) - len(reply.data) < 4


def test_padding_margin() -> None:
    msg = request(Padding(bytes(400)))
    data = encode(msg)
    reply = responder(padding_margin=64).handle(data, local=A1P1, source=CLIENT)
    assert reply is not None
    assert len(data) < len(reply.data) <= len(data) + 64


def test_small_padded_request_gets_empty_padding() -> None:
    """No amplification: a tiny padded request gets an empty PADDING."""
    reply, response = ask(responder(software="natkit"), request(Padding(b"")))
    assert response.get(Padding) == Padding(b"")
    unpadded = ask(responder(software="natkit"), request())[0]
    assert len(reply.data) == len(unpadded.data) + 4


@given(pad=st.integers(min_value=0, max_value=3000), fingerprint=st.booleans())
def test_padding_never_amplifies(pad: int, fingerprint: bool) -> None:
    server = responder(software="natkit test")
    data = encode(request(Padding(bytes(pad))), fingerprint=fingerprint)
    reply = server.handle(data, local=A2P1, source=CLIENT)
    assert reply is not None
    unpadded = server.handle(
        encode(request(), fingerprint=fingerprint), local=A2P1, source=CLIENT
    )
    assert unpadded is not None
    assert len(reply.data) <= max(len(data), len(unpadded.data) + 4)
    response = decode(reply.data)
    assert response.get(Padding) is not None
    assert response.has_fingerprint is fingerprint


@pytest.mark.parametrize(
    "attribute",
    [ChangeRequest(change_ip=True, change_port=False), ResponsePort(50000)],
)
def test_changed_address_and_response_port_refused_over_tcp(
    attribute: Attribute,
) -> None:
    """RFC 5780 §3: a stream reply can only go back on its connection."""
    data = encode(request(attribute))
    reply = responder().handle(data, local=A1P1, source=CLIENT, stream=True)
    assert reply is not None
    assert (reply.source, reply.destination) == (A1P1, CLIENT)
    err = decode(reply.data).get(ErrorCodeAttr)
    assert err is not None and err.code == 400


def test_plain_request_over_tcp() -> None:
    data = encode(request(ChangeRequest()))
    reply = responder().handle(data, local=A1P1, source=CLIENT, stream=True)
    assert reply is not None
    response = decode(reply.data)
    assert response.cls is MessageClass.SUCCESS
    assert response.get(OtherAddress) == OtherAddress(A2P2.ip, A2P2.port)


def test_fingerprint_and_software_echoed() -> None:
    _, response = ask(responder(software="natkit"), request(), fingerprint=True)
    assert response.has_fingerprint
    assert response.get(Software) == Software("natkit")


def test_unknown_required_attribute_is_420() -> None:
    msg = request(UnknownAttribute(0x7F00, b"\x00\x00\x00\x00"))
    reply, response = ask(responder(), msg)
    err = response.get(ErrorCodeAttr)
    assert err is not None and err.code == 420
    assert response.get(UnknownAttributes) == UnknownAttributes((0x7F00,))
    assert reply.destination == CLIENT


def test_other_methods_are_400() -> None:
    _, response = ask(responder(), request(method=Method.ALLOCATE))
    err = response.get(ErrorCodeAttr)
    assert err is not None and err.code == 400


def test_classic_rfc3489_request_gets_mapped_address_only() -> None:
    msg = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        new_transaction_id(),
        (ChangeRequest(change_ip=True, change_port=False),),
        cookie=0x01020304,
    )
    reply, response = ask(responder(), msg)
    assert response.get(XorMappedAddress) is None
    assert response.get(MappedAddress) == MappedAddress(CLIENT.ip, CLIENT.port)
    assert reply.source == A2P1


def test_drops_what_is_not_a_request() -> None:
    server = responder()
    indication = Message(Method.BINDING, MessageClass.INDICATION, new_transaction_id())
    assert server.handle(encode(indication), local=A1P1, source=CLIENT) is None
    assert server.handle(b"\x00\x01garbage", local=A1P1, source=CLIENT) is None
    stats = server.stats()
    assert (stats.ignored, stats.malformed, stats.requests) == (1, 1, 0)


def test_counts_answers() -> None:
    server = responder()
    ask(server, request())
    ask(server, request(ResponsePort(0)))
    stats = server.stats()
    assert (stats.requests, stats.success, stats.errors) == (2, 1, 1)


def test_request_on_a_foreign_address_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        responder().handle(encode(request()), local=CLIENT, source=CLIENT)


@pytest.mark.parametrize(
    ("primary", "alternate"),
    [
        (A1P1, A1P2),  # same IP
        (A1P1, A2P1),  # same port
        (A1P1, Endpoint("2001:db8::1", 3479)),  # two families
    ],
)
def test_needs_two_ips_and_two_ports(primary: Endpoint, alternate: Endpoint) -> None:
    with pytest.raises(UsageError):
        Rfc5780Responder(primary, alternate)


def test_ipv6() -> None:
    p, a = Endpoint("2001:db8::10", 3478), Endpoint("2001:db8::11", 3479)
    client = Endpoint("2001:db8:1::5", 5000)
    server = Rfc5780Responder(p, a)
    msg = request(ChangeRequest(change_ip=True, change_port=False))
    reply = server.handle(encode(msg), local=p, source=client)
    assert reply is not None
    assert reply.source == Endpoint("2001:db8::11", 3478)
    assert decode(reply.data).get(OtherAddress) == OtherAddress(a.ip, a.port)


def test_attribute_types_are_rfc_5780_values() -> None:
    assert int(AttrType.RESPONSE_ORIGIN) == 0x802B
    assert int(AttrType.OTHER_ADDRESS) == 0x802C
