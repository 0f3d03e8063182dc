"""The sans-IO Binding responder (RFC 8489 §6.3, §12.2)."""

import os
import struct

import pytest

from natkit.stun.attributes import (
    Attribute,
    ChangeRequest,
    ErrorCodeAttr,
    Fingerprint,
    MappedAddress,
    Padding,
    ResponsePort,
    Software,
    UnknownAttribute,
    UnknownAttributes,
    XorMappedAddress,
)
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.errors import StunProtocolError, UsageError
from natkit.stun.message import Message, decode, encode, new_transaction_id
from natkit.stun.server import BindingResponder, ResponderStats


def binding(
    *attributes: Attribute, cls: MessageClass = MessageClass.REQUEST
) -> Message:
    return Message(Method.BINDING, cls, new_transaction_id(), attributes=attributes)


def answer(
    responder: BindingResponder,
    request: Message,
    ip: str = "192.0.2.7",
    port: int = 40000,
    *,
    fingerprint: bool = False,
) -> Message:
    data = responder.handle(encode(request, fingerprint=fingerprint), ip, port)
    assert data is not None
    return decode(data)


def test_binding_success_has_xor_mapped_address_ipv4() -> None:
    request = binding()
    response = answer(BindingResponder(), request, "192.0.2.7", 40000)

    assert response.cls is MessageClass.SUCCESS
    assert response.method == Method.BINDING
    assert response.transaction_id == request.transaction_id
    assert response.get(XorMappedAddress) == XorMappedAddress("192.0.2.7", 40000)
    assert response.get(MappedAddress) is None
    assert response.get(Software) is None
    assert not response.has_fingerprint


def test_binding_success_has_xor_mapped_address_ipv6() -> None:
    response = answer(BindingResponder(), binding(), "2001:db8::42", 3479)
    assert response.get(XorMappedAddress) == XorMappedAddress("2001:db8::42", 3479)


def test_fingerprint_is_echoed_only_when_the_request_has_one() -> None:
    responder = BindingResponder()
    with_fp = answer(responder, binding(), fingerprint=True)
    without = answer(responder, binding())
    assert with_fp.has_fingerprint
    assert isinstance(with_fp.attributes[-1], Fingerprint)
    assert not without.has_fingerprint


def test_software_only_when_configured() -> None:
    response = answer(BindingResponder("natkit test"), binding())
    assert response.get(Software) == Software("natkit test")
    assert answer(BindingResponder(), binding()).get(Software) is None


def test_rfc3489_request_gets_mapped_address_and_same_16_byte_id() -> None:
    """RFC 8489 §12.2: no magic cookie, so answer in RFC 3489 form."""
    tid16 = os.urandom(16)
    request = struct.pack("!HH", 0x0001, 0) + tid16
    data = BindingResponder().handle(request, "198.51.100.9", 5000)

    assert data is not None
    assert data[:2] == b"\x01\x01"
    assert data[4:20] == tid16
    response = decode(data)
    assert response.is_rfc3489
    assert response.get(MappedAddress) == MappedAddress("198.51.100.9", 5000)
    assert response.get(XorMappedAddress) is None


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    """RFC 8489 §6.3.1.1: 420 listing the unknown attributes."""
    request = binding(
        UnknownAttribute(0x7F01, b"abcd"),
        UnknownAttribute(0x8F01, b"ignored!"),  # optional: not listed
        UnknownAttribute(0x7F02, b""),
    )
    response = answer(BindingResponder("sw"), request, fingerprint=True)

    assert response.cls is MessageClass.ERROR
    assert response.transaction_id == request.transaction_id
    error = response.get(ErrorCodeAttr)
    assert error is not None and error.code == 420
    assert response.get(UnknownAttributes) == UnknownAttributes((0x7F01, 0x7F02))
    assert response.get(XorMappedAddress) is None
    assert response.get(Software) == Software("sw")
    assert response.has_fingerprint


def test_unknown_optional_attribute_is_ignored() -> None:
    response = answer(BindingResponder(), binding(UnknownAttribute(0x8F01, b"xy")))
    assert response.cls is MessageClass.SUCCESS


def test_non_binding_method_gets_400() -> None:
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id())
    response = answer(BindingResponder(), request)
    assert response.cls is MessageClass.ERROR
    assert response.method == Method.ALLOCATE
    error = response.get(ErrorCodeAttr)
    assert error is not None and error.code == 400


@pytest.mark.parametrize(
    ("attribute", "listed"),
    [
        (ChangeRequest(change_ip=True), AttrType.CHANGE_REQUEST),
        (ChangeRequest(change_port=True), AttrType.CHANGE_REQUEST),
        (ResponsePort(4000), AttrType.RESPONSE_PORT),
        (Padding(b"\x00" * 8), AttrType.PADDING),
    ],
)
def test_rfc5780_requests_without_alternate_address_get_420(
    attribute: Attribute, listed: int
) -> None:
    """RFC 5780 §6.1: no alternate address, so these cannot be honoured."""
    response = answer(BindingResponder(), binding(attribute))
    error = response.get(ErrorCodeAttr)
    assert error is not None and error.code == 420
    assert response.get(UnknownAttributes) == UnknownAttributes((listed,))


def test_change_request_without_flags_is_answered() -> None:
    response = answer(BindingResponder(), binding(ChangeRequest()))
    assert response.cls is MessageClass.SUCCESS


@pytest.mark.parametrize(
    "cls", [MessageClass.INDICATION, MessageClass.SUCCESS, MessageClass.ERROR]
)
def test_indications_and_responses_are_ignored_and_counted(cls: MessageClass) -> None:
    responder = BindingResponder()
    assert responder.handle(encode(binding(cls=cls)), "192.0.2.1", 1) is None
    assert responder.stats() == ResponderStats(ignored=1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x00\x00",
        b"\xff" * 20,
        b"\x00\x01\x00\x04" + b"\x21\x12\xa4\x42" + bytes(12),  # length overruns
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_malformed_is_dropped_and_counted(data: bytes) -> None:
    responder = BindingResponder()
    assert responder.handle(data, "192.0.2.1", 1) is None
    assert responder.stats() == ResponderStats(malformed=1)


def test_wrong_fingerprint_is_dropped() -> None:
    data = bytearray(encode(binding(), fingerprint=True))
    data[-1] ^= 0xFF
    responder = BindingResponder()
    assert responder.handle(bytes(data), "192.0.2.1", 1) is None
    assert responder.stats().malformed == 1


def test_stats_count_success_and_errors() -> None:
    responder = BindingResponder()
    answer(responder, binding())
    answer(responder, binding(UnknownAttribute(0x7F01, b"")))
    stats = responder.stats()
    assert stats == ResponderStats(requests=2, success=1, errors=1)


def test_add_method_dispatches_and_can_raise_errors() -> None:
    responder = BindingResponder()

    def allocate(request: Message, ip: str, port: int) -> tuple[Software, ...]:
        if ip == "192.0.2.99":
            raise StunProtocolError(403)
        return (Software("allocated"),)

    responder.add_method(Method.ALLOCATE, allocate)
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id())
    ok = answer(responder, request)
    assert ok.cls is MessageClass.SUCCESS
    assert ok.get(Software) == Software("allocated")
    refused = answer(responder, request, "192.0.2.99")
    error = refused.get(ErrorCodeAttr)
    assert error is not None and error.code == 403
    with pytest.raises(UsageError):
        responder.add_method(Method.BINDING, allocate)
