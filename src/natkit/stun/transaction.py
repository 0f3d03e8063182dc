"""STUN client transactions, sans-IO (RFC 8489 §6.2 and §6.3).

A :class:`ClientTransaction` is told the time and asked what to send: it holds
one encoded request, says when its next timer is due (:meth:`next_deadline`),
returns the datagrams to (re)transmit when that timer fires
(:meth:`handle_timeout`) and settles when a response arrives
(:meth:`handle_response`). It never touches a socket or an event loop.

A :class:`TransactionTable` keeps many transactions keyed by transaction id, so
a driver that owns one socket can hand it every response and let the table find
the transaction it belongs to.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum, StrEnum

from natkit.stun.attributes import ErrorCodeAttr, Software
from natkit.stun.constants import HEADER_LENGTH, MAGIC_COOKIE, MessageClass, Method
from natkit.stun.errors import UsageError
from natkit.stun.message import Message, new_transaction_id, split_message_type

logger = logging.getLogger(__name__)

#: RFC 8489 §6.2.1: the recommended initial retransmission timeout, in seconds.
DEFAULT_RTO = 0.5
#: RFC 8489 §6.2.1: a request is sent at most Rc times over UDP.
DEFAULT_RC = 7
#: RFC 8489 §6.2.1: after the last transmission the client waits Rm × RTO.
DEFAULT_RM = 16
#: RFC 8489 §6.2.2: over TCP/TLS a transaction times out after Ti seconds.
DEFAULT_TI = 39.5


class Transport(StrEnum):
    """The transport a request travels on (RFC 8489 §6.2)."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"

    @property
    def is_stream(self) -> bool:
        """TCP and TLS deliver reliably, so the client never retransmits."""
        return self is not Transport.UDP


class TransactionState(Enum):
    """Where a client transaction stands."""

    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed out"


@dataclass(frozen=True, slots=True)
class RetransmitPolicy:
    """The timer values of RFC 8489 §6.2.1 (UDP) and §6.2.2 (TCP/TLS).

    ``rto`` is the initial retransmission timeout; it doubles after each
    retransmission. ``rc`` is the number of transmissions, ``rm`` the multiple
    of ``rto`` to wait after the last one, ``ti`` the reliable-transport
    timeout.
    """

    rto: float = DEFAULT_RTO
    rc: int = DEFAULT_RC
    rm: int = DEFAULT_RM
    ti: float = DEFAULT_TI

    def __post_init__(self) -> None:
        if self.rto <= 0:
            raise UsageError(f"RTO must be positive, not {self.rto}")
        if self.rc < 1:
            raise UsageError(f"Rc must be at least 1, not {self.rc}")
        if self.rm < 1:
            raise UsageError(f"Rm must be at least 1, not {self.rm}")
        if self.ti <= 0:
            raise UsageError(f"Ti must be positive, not {self.ti}")

    def give_up_after(self, transport: Transport) -> float:
        """Seconds from the first transmission until the client gives up.

        With the defaults over UDP: 0.5 × (1 + 2 + ... + 64) + 16 × 0.5 = 39.5.
        """
        if transport.is_stream:
            return self.ti
        return self.rto * float(2 ** (self.rc - 1) - 1) + self.rm * self.rto


def transaction_key(data: bytes) -> bytes:
    """The 16 bytes that identify a transaction: magic cookie and id.

    RFC 8489 §5 keeps a 96-bit id after the cookie; RFC 3489 used all 128 bits
    as the id. Keying on bytes 4-20 of the header matches both.
    """
    return data[4:HEADER_LENGTH]


def message_key(msg: Message) -> bytes:
    """:func:`transaction_key` of a decoded message."""
    return msg.cookie.to_bytes(4, "big") + msg.transaction_id


def binding_request(
    *,
    rfc3489: bool = False,
    transaction_id: bytes | None = None,
    software: str | None = None,
) -> Message:
    """A Binding request (RFC 8489 §6.1), or a classic RFC 3489 §10.1 one.

    A classic request has no magic cookie: its 128-bit transaction id is all
    random, which :class:`Message` keeps as ``cookie`` (first 32 bits) plus
    ``transaction_id`` (96 bits). It exists for compatibility tests.
    """
    tid = transaction_id if transaction_id is not None else new_transaction_id()
    if len(tid) != 12:
        raise UsageError(f"transaction id must be 12 bytes, not {len(tid)}")
    attributes = (Software(software),) if software else ()
    cookie = MAGIC_COOKIE
    if rfc3489:
        while cookie == MAGIC_COOKIE:
            cookie = int.from_bytes(os.urandom(4), "big")
    return Message(Method.BINDING, MessageClass.REQUEST, tid, attributes, cookie=cookie)


class ClientTransaction:
    """One STUN request and its timers (RFC 8489 §6.2.1, §6.2.2, §6.3).

    Created with the encoded request and the current time; the first
    transmission is due at once, so a driver calls :meth:`handle_timeout` with
    ``now`` right away and sends what it returns. Over UDP the request is sent
    again after RTO, 2×RTO, 4×RTO... up to Rc transmissions, then the client
    waits Rm×RTO more before giving up. Over TCP and TLS it is sent once and
    the transaction times out after Ti.
    """

    def __init__(
        self,
        request: bytes,
        *,
        transport: Transport,
        now: float,
        policy: RetransmitPolicy | None = None,
    ) -> None:
        if len(request) < HEADER_LENGTH:
            raise UsageError(f"a STUN request is at least 20 bytes, not {len(request)}")
        message_type = int.from_bytes(request[0:2], "big")
        method, cls = split_message_type(message_type)
        if message_type & 0xC000 or cls != MessageClass.REQUEST:
            raise UsageError(f"not a STUN request: message type 0x{message_type:04x}")

        self.request = request
        self.transport = transport
        self.policy = policy or RetransmitPolicy()
        self.key = transaction_key(request)
        self.method = method
        self.state = TransactionState.WAITING
        self.response: Message | None = None
        self.created_at = now
        self.transmissions = 0
        self.first_sent_at: float | None = None
        self.last_sent_at: float | None = None
        self.finished_at: float | None = None
        self.failure_reason: str | None = None
        self._deadline: float | None = now
        self._interval = self.policy.rto
        self._silent = False

    def __repr__(self) -> str:
        return (
            f"<ClientTransaction {self.key.hex()} {self.transport.value} "
            f"{self.state.value} sent={self.transmissions}>"
        )

    @property
    def transaction_id(self) -> bytes:
        """The 96-bit id of RFC 8489 §5 (bytes 8-20 of the header)."""
        return self.request[8:HEADER_LENGTH]

    @property
    def done(self) -> bool:
        return self.state is not TransactionState.WAITING

    @property
    def rtt(self) -> float | None:
        """Seconds from the latest transmission to the response.

        After a retransmission the sample is ambiguous (Karn's algorithm);
        :attr:`retransmitted` says whether that is the case.
        """
        if self.finished_at is None or self.last_sent_at is None or not self.response:
            return None
        return self.finished_at - self.last_sent_at

    @property
    def elapsed(self) -> float | None:
        """Seconds from the first transmission until the transaction ended."""
        if self.finished_at is None or self.first_sent_at is None:
            return None
        return self.finished_at - self.first_sent_at

    @property
    def silenced(self) -> bool:
        """:meth:`stop_retransmitting` was called."""
        return self._silent

    @property
    def retransmitted(self) -> bool:
        return self.transmissions > 1

    @property
    def error(self) -> ErrorCodeAttr | None:
        """The ERROR-CODE of an error response, if that is how it ended."""
        if self.response is None or self.response.cls != MessageClass.ERROR:
            return None
        return self.response.get(ErrorCodeAttr)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` must next be called; None once done."""
        return self._deadline

    def handle_timeout(self, now: float) -> list[bytes]:
        """Fire the timer if it is due: return what to send (maybe nothing).

        RFC 8489 §6.2.1: the request is retransmitted with a doubling interval
        until Rc transmissions have been made; Rm×RTO after the last one the
        transaction has failed with a timeout. RFC 8489 §6.2.2: over TCP/TLS
        the request is sent once and fails after Ti.
        """
        if self._deadline is None or now < self._deadline:
            return []

        # every transmission allowed has been made: time out
        limit = 1 if self.transport.is_stream else self.policy.rc
        if self.transmissions >= limit or self._silent:
            self._finish(TransactionState.TIMED_OUT, now)
            self.failure_reason = f"no response after {self.transmissions} sent"
            return []

        # (re)transmit and arm the next timer from the time actually sent
        self.transmissions += 1
        if self.first_sent_at is None:
            self.first_sent_at = now
        self.last_sent_at = now
        if self.transport.is_stream:
            wait = self.policy.ti
        elif self.transmissions >= self.policy.rc:
            wait = self.policy.rm * self.policy.rto
        else:
            wait = self._interval
            self._interval *= 2
        self._deadline = now + wait
        logger.debug(
            "%s: transmission %d, next timer in %.3f s",
            self.key.hex(),
            self.transmissions,
            wait,
        )
        return [self.request]

    def matches(self, msg: Message) -> bool:
        """Whether ``msg`` is a response to this request (RFC 8489 §6.3)."""
        return (
            message_key(msg) == self.key
            and msg.method == self.method
            and msg.cls in (MessageClass.SUCCESS, MessageClass.ERROR)
        )

    def handle_response(self, msg: Message, now: float) -> bool:
        """Settle the transaction with a response; False if it is not ours.

        RFC 8489 §6.2.1: once a response arrives, retransmissions stop.
        RFC 8489 §6.3.1: a success response holding unknown
        comprehension-required attributes is discarded and the transaction
        fails; §6.3.4 says the same of such an error response.
        """
        if self.done or not self.matches(msg):
            return False
        self.response = msg
        if msg.unknown_required:
            types = ", ".join(f"0x{t:04x}" for t in msg.unknown_required)
            self.failure_reason = f"unknown comprehension-required attributes {types}"
            self._finish(TransactionState.FAILED, now)
        elif msg.cls == MessageClass.SUCCESS:
            self._finish(TransactionState.SUCCEEDED, now)
        else:
            err = msg.get(ErrorCodeAttr)
            self.failure_reason = (
                f"error response {err.code} {err.reason}".rstrip()
                if err
                else "error response without ERROR-CODE"
            )
            self._finish(TransactionState.FAILED, now)
        return True

    def stop_retransmitting(self, now: float) -> None:
        """Send nothing more, but take a response for Rm×RTO (UDP) or Ti.

        The cancellation of RFC 8445 §7.3.1.4: a late response still counts;
        none by then ends the transaction as timed out.
        """
        if self.done or self._silent:
            return
        self._silent = True
        if self.transport.is_stream:
            wait = self.policy.ti
        else:
            wait = self.policy.rm * self.policy.rto
        self._deadline = now + wait

    def cancel(self, now: float, reason: str) -> None:
        """End a waiting transaction from outside (e.g. the socket failed)."""
        if not self.done:
            self.failure_reason = reason
            self._finish(TransactionState.FAILED, now)

    def _finish(self, state: TransactionState, now: float) -> None:
        logger.debug("%s: %s -> %s", self.key.hex(), self.state.value, state.value)
        self.state = state
        self.finished_at = now
        self._deadline = None


class TransactionTable:
    """Client transactions keyed by transaction id (RFC 8489 §6.3).

    Responses are handed to the table, which passes each to the transaction
    with the same id and ignores those with an id it does not know (late
    duplicates, stray packets). Finished transactions stay in the table until
    :meth:`pop_done` collects them.
    """

    def __init__(self) -> None:
        self._transactions: dict[bytes, ClientTransaction] = {}

    def __len__(self) -> int:
        return len(self._transactions)

    def __iter__(self) -> Iterator[ClientTransaction]:
        return iter(list(self._transactions.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._transactions

    def add(self, transaction: ClientTransaction) -> None:
        if transaction.key in self._transactions:
            raise UsageError(f"transaction {transaction.key.hex()} already exists")
        self._transactions[transaction.key] = transaction

    def get(self, key: bytes) -> ClientTransaction | None:
        """The transaction with this 16-byte :func:`transaction_key`."""
        return self._transactions.get(key)

    def handle_response(self, msg: Message, now: float) -> ClientTransaction | None:
        """The transaction ``msg`` settled, or None if it was ignored."""
        transaction = self._transactions.get(message_key(msg))
        if transaction is None:
            logger.debug("ignoring response to unknown transaction %s", msg)
            return None
        if not transaction.handle_response(msg, now):
            return None
        return transaction

    def next_deadline(self) -> float | None:
        """The earliest timer of the waiting transactions."""
        deadlines = [
            d
            for t in self._transactions.values()
            if (d := t.next_deadline()) is not None
        ]
        return min(deadlines, default=None)

    def handle_timeout(self, now: float) -> list[bytes]:
        """Fire every due timer; return all the datagrams to send."""
        out: list[bytes] = []
        for transaction in self._transactions.values():
            out.extend(transaction.handle_timeout(now))
        return out

    def pop_done(self) -> list[ClientTransaction]:
        """Remove and return the transactions that have ended."""
        done = [t for t in self._transactions.values() if t.done]
        for transaction in done:
            del self._transactions[transaction.key]
        return done
