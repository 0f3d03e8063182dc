"""ICE in SDP text (RFC 8839): ``candidate:`` lines and credential lines.

RFC 8839 §5.1 grammar, as parsed here::

    candidate:FOUNDATION COMPONENT TRANSPORT PRIORITY ADDRESS PORT typ TYPE
              [raddr ADDRESS rport PORT] *(NAME VALUE)

:func:`parse_candidate` is strict about the fixed fields and the
``raddr``/``rport`` pair and tolerant of extension attributes (``generation``,
``ufrag``, ``network-id``, ``tcptype``... are kept in order). Every problem
raises :class:`CandidateSyntaxError` and nothing else, with the field at
fault. A leading ``a=`` is accepted. Transports other than UDP parse (so a
browser's TCP candidates do not break a trickle stream) but the agent only
pairs UDP ones. Fully qualified domain names (including mDNS ``.local``
names, RFC 8839 §5.1 allows them) are refused: resolve them first.
"""

from __future__ import annotations

import ipaddress

from natkit.ice.candidate import (
    ICE_CHARS,
    MAX_COMPONENT,
    MAX_FOUNDATION,
    MAX_PRIORITY,
    Candidate,
    CandidateType,
    Extension,
    is_transport_token,
)
from natkit.ice.credentials import MIN_PWD, MIN_UFRAG, Credentials, check_ice_string
from natkit.nat.endpoint import Endpoint
from natkit.stun.errors import NatkitError, UsageError

#: RFC 8840 §4.1 (and RFC 8838 §8.2): the end of a trickle stream
END_OF_CANDIDATES = "end-of-candidates"
#: a generous cap on one line (an SDP line has no limit; ours never nears it)
MAX_LINE = 4096

_PREFIX = "candidate:"


class CandidateSyntaxError(NatkitError):
    """A ``candidate:`` (or ice-ufrag/ice-pwd) line that does not parse."""


def _fail(message: str) -> CandidateSyntaxError:
    return CandidateSyntaxError(f"bad candidate line: {message}")


def _digits(token: str, what: str, low: int, high: int, max_len: int) -> int:
    if not (token.isascii() and token.isdigit()) or len(token) > max_len:
        raise _fail(f"{what} must be 1-{max_len} digits, not {token!r}")
    value = int(token)
    if not low <= value <= high:
        raise _fail(f"{what} must be {low}-{high}, not {value}")
    return value


def _address(token: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(token))
    except ValueError:
        pass
    if _is_host_name(token):
        raise _fail(f"{what} {token!r} is a host name; resolve it to an IP first")
    raise _fail(f"{what} {token!r} is not an IP address")


def _is_host_name(token: str) -> bool:
    """An RFC 1123 style name with a non-numeric last label (e.g. mDNS x.local)."""
    labels = token.rstrip(".").split(".")
    return (
        token.isascii()
        and all(label and label.replace("-", "").isalnum() for label in labels)
        and not labels[-1].isdigit()
    )


def _endpoint(ip_token: str, port_token: str, what: str) -> Endpoint:
    ip = _address(ip_token, what)
    port = _digits(port_token, f"{what} port", 0, 0xFFFF, 5)
    try:
        return Endpoint(ip, port)
    except UsageError as exc:  # pragma: no cover - checked above
        raise _fail(str(exc)) from None


def _strip_prefix(line: str) -> str:
    if len(line) > MAX_LINE:
        raise _fail(f"longer than {MAX_LINE} characters")
    text = line.strip()
    if text.startswith("a="):
        text = text[2:]
    if not text.startswith(_PREFIX):
        raise _fail(f"does not start with {_PREFIX!r}")
    return text[len(_PREFIX) :]


def parse_candidate(line: str) -> Candidate:
    """Parse an RFC 8839 §5.1 ``candidate:`` attribute (with or without ``a=``).

    Raises :class:`CandidateSyntaxError` (only) with the field at fault.
    """
    tokens = _strip_prefix(line).split()
    if len(tokens) < 8:
        raise _fail(f"{len(tokens)} fields, at least 8 are needed")
    foundation, component, transport, priority, ip, port, typ, kind = tokens[:8]

    # step 1: the fixed fields
    if not 1 <= len(foundation) <= MAX_FOUNDATION or not set(foundation) <= ICE_CHARS:
        raise _fail(f"foundation {foundation!r} is not 1-32 ice-chars")
    component_id = _digits(component, "component id", 1, MAX_COMPONENT, 3)
    if not is_transport_token(transport):
        raise _fail(f"transport {transport!r} is not a token")
    prio = _digits(priority, "priority", 0, MAX_PRIORITY, 10)
    address = _endpoint(ip, port, "connection address")
    if typ != "typ":
        raise _fail(f"expected 'typ' after the port, not {typ!r}")
    try:
        cand_type = CandidateType(kind)
    except ValueError:
        raise _fail(f"unknown candidate type {kind!r}") from None

    # step 2: raddr/rport and the extension attributes, as name/value pairs
    rest = tokens[8:]
    if len(rest) % 2:
        raise _fail(f"attribute {rest[-1]!r} has no value")
    raddr: str | None = None
    rport: str | None = None
    extensions: list[Extension] = []
    for name, value in zip(rest[::2], rest[1::2], strict=True):
        if name == "raddr":
            if raddr is not None:
                raise _fail("raddr given twice")
            raddr = value
        elif name == "rport":
            if rport is not None:
                raise _fail("rport given twice")
            rport = value
        else:
            extensions.append(Extension(name, value))
    if (raddr is None) != (rport is None):
        raise _fail("raddr and rport must come together")
    related = None
    if raddr is not None and rport is not None:
        related = _endpoint(raddr, rport, "raddr")

    # step 3: the record (its own checks are the ones already made)
    try:
        return Candidate(
            type=cand_type,
            address=address,
            priority=prio,
            foundation=foundation,
            component=component_id,
            transport=transport,
            related=related,
            extensions=tuple(extensions),
        )
    except UsageError as exc:  # pragma: no cover - every field checked above
        raise _fail(str(exc)) from None


def format_candidate(candidate: Candidate, *, transport_upper: bool = False) -> str:
    """The RFC 8839 §5.1 ``candidate:`` attribute value (no ``a=``).

    ``transport_upper`` writes ``UDP`` as RFC 8839's examples do; the
    default lowercase ``udp`` is what browsers send. The base, which never
    leaves the agent, is not written.
    """
    transport = candidate.transport.upper() if transport_upper else candidate.transport
    parts = [
        f"{_PREFIX}{candidate.foundation}",
        str(candidate.component),
        transport,
        str(candidate.priority),
        candidate.address.ip,
        str(candidate.address.port),
        "typ",
        candidate.type.value,
    ]
    if candidate.related is not None:
        parts += ["raddr", candidate.related.ip, "rport", str(candidate.related.port)]
    for ext in candidate.extensions:
        parts += [ext.name, ext.value]
    return " ".join(parts)


def is_end_of_candidates(line: str) -> bool:
    """``a=end-of-candidates`` (RFC 8840 §4.1), with or without ``a=``."""
    text = line.strip()
    return text in (END_OF_CANDIDATES, f"a={END_OF_CANDIDATES}")


def format_credentials(credentials: Credentials) -> list[str]:
    """``a=ice-ufrag`` and ``a=ice-pwd`` lines (RFC 8839 §5.4)."""
    return [f"a=ice-ufrag:{credentials.ufrag}", f"a=ice-pwd:{credentials.pwd}"]


def parse_credentials(lines: list[str]) -> Credentials:
    """Find ``ice-ufrag`` and ``ice-pwd`` in ``lines`` (RFC 8839 §5.4)."""
    ufrag: str | None = None
    pwd: str | None = None
    for line in lines:
        text = line.strip().removeprefix("a=")
        if text.startswith("ice-ufrag:"):
            if ufrag is not None:
                raise CandidateSyntaxError("ice-ufrag given twice")
            ufrag = text[len("ice-ufrag:") :]
        elif text.startswith("ice-pwd:"):
            if pwd is not None:
                raise CandidateSyntaxError("ice-pwd given twice")
            pwd = text[len("ice-pwd:") :]
    if ufrag is None or pwd is None:
        raise CandidateSyntaxError("need both a=ice-ufrag and a=ice-pwd")
    try:
        check_ice_string(ufrag, "ice-ufrag", MIN_UFRAG)
        check_ice_string(pwd, "ice-pwd", MIN_PWD)
    except UsageError as exc:
        raise CandidateSyntaxError(str(exc)) from None
    return Credentials(ufrag, pwd)
