"""Client transactions, sans-IO, with an injected clock (RFC 8489 §6.2, §6.3)."""

import pytest

from natkit.stun.attributes import (
    ErrorCodeAttr,
    UnknownAttribute,
    XorMappedAddress,
)
from natkit.stun.constants import MAGIC_COOKIE, MessageClass, Method
from natkit.stun.errors import UsageError
from natkit.stun.message import Message, decode, encode, new_transaction_id
from natkit.stun.transaction import (
    ClientTransaction,
    RetransmitPolicy,
    TransactionState,
    TransactionTable,
    Transport,
    binding_request,
    message_key,
)


def _run_schedule(tx: ClientTransaction) -> tuple[list[float], float | None]:
    """Drive ``tx`` by its own deadlines; return send times and the end time."""
    sends: list[float] = []
    for _ in range(100):
        deadline = tx.next_deadline()
        if deadline is None:
            break
        sends.extend(deadline for _ in tx.handle_timeout(deadline))
    return sends, tx.finished_at


def _response(
    request: Message, cls: MessageClass = MessageClass.SUCCESS, *attrs: object
) -> Message:
    attributes = attrs or (XorMappedAddress("192.0.2.1", 32853),)
    return Message(
        request.method,
        cls,
        request.transaction_id,
        attributes,  # type: ignore[arg-type]
        cookie=request.cookie,
    )


def _new(
    transport: Transport = Transport.UDP,
    now: float = 0.0,
    policy: RetransmitPolicy | None = None,
) -> tuple[Message, ClientTransaction]:
    request = binding_request()
    tx = ClientTransaction(encode(request), transport=transport, now=now, policy=policy)
    return request, tx


def test_rfc8489_6_2_1_udp_schedule_with_defaults() -> None:
    _, tx = _new()
    sends, end = _run_schedule(tx)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert end == 39.5
    assert tx.state is TransactionState.TIMED_OUT
    assert tx.next_deadline() is None
    assert tx.handle_timeout(100.0) == []
    assert RetransmitPolicy().give_up_after(Transport.UDP) == 39.5


def test_schedule_follows_the_clock_it_is_given() -> None:
    _, tx = _new(now=1000.0)
    sends, end = _run_schedule(tx)
    assert sends == [1000.0 + t for t in (0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5)]
    assert end == 1039.5


def test_rto_rc_rm_are_configurable() -> None:
    policy = RetransmitPolicy(rto=0.1, rc=3, rm=4)
    _, tx = _new(policy=policy)
    sends, end = _run_schedule(tx)
    assert sends == pytest.approx([0.0, 0.1, 0.3])
    assert end == pytest.approx(0.7)
    assert policy.give_up_after(Transport.UDP) == pytest.approx(0.7)


def test_timer_does_not_fire_early() -> None:
    _, tx = _new()
    assert tx.next_deadline() == 0.0
    assert len(tx.handle_timeout(0.0)) == 1
    assert tx.handle_timeout(0.49) == []
    assert tx.transmissions == 1
    assert len(tx.handle_timeout(0.5)) == 1
    assert tx.next_deadline() == 1.5


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
def test_rfc8489_6_2_2_reliable_transport_sends_once(transport: Transport) -> None:
    _, tx = _new(transport)
    sends, end = _run_schedule(tx)
    assert sends == [0.0]
    assert end == 39.5
    assert tx.state is TransactionState.TIMED_OUT


def test_rfc8489_6_2_1_response_stops_retransmission() -> None:
    request, tx = _new()
    assert tx.handle_timeout(0.0) == [encode(request)]
    assert tx.handle_timeout(0.5) == [encode(request)]
    assert tx.handle_response(_response(request), 0.75)
    assert tx.state is TransactionState.SUCCEEDED
    assert tx.next_deadline() is None
    assert tx.handle_timeout(1.5) == []
    assert tx.handle_timeout(50.0) == []
    assert tx.transmissions == 2
    assert tx.rtt == pytest.approx(0.25)
    assert tx.elapsed == pytest.approx(0.75)
    assert tx.retransmitted
    assert tx.response is not None
    assert tx.response.get(XorMappedAddress) == XorMappedAddress("192.0.2.1", 32853)


def test_second_response_is_ignored() -> None:
    request, tx = _new()
    tx.handle_timeout(0.0)
    assert tx.handle_response(_response(request), 0.1)
    assert not tx.handle_response(_response(request), 0.2)
    assert tx.rtt == pytest.approx(0.1)


def test_error_response_fails_the_transaction() -> None:
    request, tx = _new()
    tx.handle_timeout(0.0)
    err = _response(request, MessageClass.ERROR, ErrorCodeAttr(400, "Bad Request"))
    assert tx.handle_response(err, 0.1)
    assert tx.state is TransactionState.FAILED
    assert tx.error == ErrorCodeAttr(400, "Bad Request")
    assert tx.failure_reason == "error response 400 Bad Request"
    assert tx.next_deadline() is None


def test_rfc8489_6_3_1_unknown_required_attribute_fails() -> None:
    request, tx = _new()
    tx.handle_timeout(0.0)
    raw = encode(
        _response(request, MessageClass.SUCCESS, UnknownAttribute(0x7F00, b"x"))
    )
    assert tx.handle_response(decode(raw), 0.1)
    assert tx.state is TransactionState.FAILED
    assert tx.failure_reason is not None
    assert "0x7f00" in tx.failure_reason


def test_response_with_other_id_or_method_or_class_is_not_ours() -> None:
    request, tx = _new()
    tx.handle_timeout(0.0)
    other_id = Message(Method.BINDING, MessageClass.SUCCESS, new_transaction_id(), ())
    other_method = Message(
        Method.ALLOCATE, MessageClass.SUCCESS, request.transaction_id, ()
    )
    a_request = Message(
        Method.BINDING, MessageClass.REQUEST, request.transaction_id, ()
    )
    for msg in (other_id, other_method, a_request):
        assert not tx.handle_response(msg, 0.1)
    assert tx.state is TransactionState.WAITING


def test_rfc3489_classic_request_has_no_cookie() -> None:
    request = binding_request(rfc3489=True)
    raw = encode(request)
    assert int.from_bytes(raw[4:8], "big") != MAGIC_COOKIE
    assert len(raw[4:20]) == 16
    tx = ClientTransaction(raw, transport=Transport.UDP, now=0.0)
    assert tx.key == raw[4:20]
    tx.handle_timeout(0.0)

    # a response must echo all 128 bits of the classic id
    wrong = Message(Method.BINDING, MessageClass.SUCCESS, request.transaction_id, ())
    assert not tx.handle_response(wrong, 0.1)
    assert tx.handle_response(_response(request), 0.1)
    assert tx.state is TransactionState.SUCCEEDED


def test_not_a_request_is_refused() -> None:
    response = _response(binding_request())
    with pytest.raises(UsageError):
        ClientTransaction(encode(response), transport=Transport.UDP, now=0.0)
    with pytest.raises(UsageError):
        ClientTransaction(b"\x00\x01", transport=Transport.UDP, now=0.0)
    with pytest.raises(UsageError):
        RetransmitPolicy(rto=0)


def test_cancel() -> None:
    _, tx = _new()
    tx.handle_timeout(0.0)
    tx.cancel(0.2, "socket closed")
    assert tx.state is TransactionState.FAILED
    assert tx.failure_reason == "socket closed"
    assert tx.next_deadline() is None


def test_stop_retransmitting_sends_nothing_more_and_waits_rm_rto() -> None:
    """The RFC 8445 §7.3.1.4 cancellation: silent, a late response counts."""
    policy = RetransmitPolicy(rto=0.2, rc=7, rm=8)
    request, tx = _new(policy=policy)
    assert len(tx.handle_timeout(0.0)) == 1
    assert not tx.silenced
    tx.stop_retransmitting(0.1)
    assert tx.silenced
    assert tx.next_deadline() == pytest.approx(0.1 + 8 * 0.2)
    assert tx.handle_timeout(0.2) == []
    assert tx.handle_response(_response(request), 0.5)
    assert tx.state is TransactionState.SUCCEEDED

    _, quiet = _new(policy=policy)
    quiet.handle_timeout(0.0)
    quiet.stop_retransmitting(0.1)
    sends, end = _run_schedule(quiet)
    assert sends == []
    assert end == pytest.approx(1.7)
    assert quiet.state is TransactionState.TIMED_OUT
    assert quiet.transmissions == 1


def test_table_demultiplexes_and_ignores_unknown_ids() -> None:
    table = TransactionTable()
    requests = []
    for now in (0.0, 0.1, 0.2):
        request, tx = _new(now=now)
        table.add(tx)
        requests.append(request)
        assert table.next_deadline() == now
        assert len(table.handle_timeout(now)) == 1
    assert len(table) == 3
    assert table.next_deadline() == pytest.approx(0.5)

    # an unknown id is ignored, a known one settles only its transaction
    stray = Message(Method.BINDING, MessageClass.SUCCESS, new_transaction_id(), ())
    assert table.handle_response(stray, 0.3) is None
    settled = table.handle_response(_response(requests[1]), 0.3)
    assert settled is not None
    assert settled.key == message_key(requests[1])
    assert settled.state is TransactionState.SUCCEEDED

    # a duplicate is ignored too
    assert table.handle_response(_response(requests[1]), 0.31) is None
    assert [t.key for t in table.pop_done()] == [message_key(requests[1])]
    assert len(table) == 2
    assert message_key(requests[0]) in table

    # the others keep retransmitting on their own schedule
    assert len(table.handle_timeout(0.5)) == 1
    assert table.handle_timeout(0.6) == []
    assert len(table.handle_timeout(0.7)) == 1


def test_table_refuses_duplicate_id() -> None:
    table = TransactionTable()
    request = binding_request()
    table.add(ClientTransaction(encode(request), transport=Transport.UDP, now=0))
    with pytest.raises(UsageError):
        table.add(ClientTransaction(encode(request), transport=Transport.UDP, now=0))
