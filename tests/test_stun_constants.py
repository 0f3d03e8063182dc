"""natkit's STUN constants against the IANA STUN registry.

``tests/data/iana-stun-parameters.csv`` is a snapshot of the registry rows
(see the comment at its top for where it came from). Every natkit constant
must be a registry row with the same number and, after normalising, the same
name; and every registry name natkit uses must carry natkit's number.
"""

import csv
import re
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import pytest

from natkit.stun import attributes
from natkit.stun.constants import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    REASON_PHRASES,
    AddressFamily,
    AttrType,
    ErrorCode,
    MessageClass,
    Method,
    PasswordAlgorithm,
    is_comprehension_required,
)

SNAPSHOT = Path(__file__).parent / "data" / "iana-stun-parameters.csv"


@dataclass(frozen=True, slots=True)
class Row:
    registry: str
    value: int
    name: str
    reference: str


def _load() -> list[Row]:
    with SNAPSHOT.open(encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    return [
        Row(r["registry"], int(r["value"], 0), r["name"], r["reference"])
        for r in csv.DictReader(lines)
    ]


ROWS = _load()


def _normalise(name: str) -> str:
    """ "CreatePermission", "CREATE_PERMISSION", "SHA-256" -> letters and digits."""
    return re.sub(r"[^A-Z0-9]", "", name.upper())


def _assigned(registry: str) -> dict[int, str]:
    return {
        r.value: r.name
        for r in ROWS
        if r.registry == registry and not r.name.startswith("Reserved")
    }


#: natkit enum -> registry in the snapshot
ENUMS: list[tuple[type[IntEnum], str]] = [
    (Method, "method"),
    (AttrType, "attribute"),
    (ErrorCode, "error"),
    (PasswordAlgorithm, "password-algorithm"),
]

#: registry rows natkit deliberately has no constant for (and why)
NOT_IMPLEMENTED = {
    # RFC 6062 TURN-TCP, not supported
    ("method", 0x00A),
    ("method", 0x00B),
    ("method", 0x00C),
    ("attribute", 0x002A),
    ("error", 446),
    ("error", 447),
    # vendor method
    ("method", 0x080),
    # RFC 7635 third-party authorisation, RFC 7982, RFC 6679, RFC 8016 mobility
    ("attribute", 0x001B),
    ("attribute", 0x802E),
    ("attribute", 0x8025),
    ("attribute", 0x802D),
    ("attribute", 0x8030),
    # RFC 5780 CACHE-TIMEOUT (an experimental binding-lifetime probe)
    ("attribute", 0x8027),
}


def test_snapshot_is_well_formed() -> None:
    assert len(ROWS) > 80
    keys = [(r.registry, r.value) for r in ROWS]
    assert len(keys) == len(set(keys))
    assert {r.registry for r in ROWS} == {
        "method",
        "attribute",
        "error",
        "password-algorithm",
        "security-feature",
    }


@pytest.mark.parametrize(("enum", "registry"), ENUMS)
def test_every_constant_is_registered(enum: type[IntEnum], registry: str) -> None:
    """natkit -> IANA: same number, same name after normalising."""
    assigned = _assigned(registry)
    for member in enum:
        assert member.value in assigned, f"{member!r} is not in the IANA registry"
        assert _normalise(assigned[member.value]) == _normalise(member.name), member


@pytest.mark.parametrize(("enum", "registry"), ENUMS)
def test_registered_names_have_natkit_numbers(
    enum: type[IntEnum], registry: str
) -> None:
    """IANA -> natkit: a registry name natkit uses carries natkit's number."""
    by_name = {_normalise(m.name): m for m in enum}
    for value, name in _assigned(registry).items():
        member = by_name.get(_normalise(name))
        if member is not None:
            assert member.value == value, (name, member)
        else:
            assert (registry, value) in NOT_IMPLEMENTED, (
                f"IANA {registry} {value:#x} {name!r} has no natkit constant"
            )


def test_not_implemented_list_is_current() -> None:
    """Every exemption names a real row that natkit really lacks."""
    defined = {(reg, int(m)) for enum, reg in ENUMS for m in enum}
    for registry, value in NOT_IMPLEMENTED:
        assert value in _assigned(registry)
        assert (registry, value) not in defined


def test_reason_phrases_match_registry() -> None:
    """RFC 8489 §14.8: the default reason phrases are IANA's names."""
    assigned = _assigned("error")
    assert set(REASON_PHRASES) == set(ErrorCode)
    for code, phrase in REASON_PHRASES.items():
        assert phrase == assigned[code]


def test_security_feature_bits() -> None:
    """RFC 8489 §18.1: bit N of the feature set has value 1 << N.

    Bit 0 is taken as the least significant bit of the 24-bit set (the
    RFC 8489 errata on §18.1, and the Appendix B.1 nonce "AAAC").
    """
    bits = _assigned("security-feature")
    assert bits == {0: "Password algorithms", 1: "Username anonymity"}
    assert attributes.FEATURE_PASSWORD_ALGORITHMS == 1 << 0
    assert attributes.FEATURE_USERNAME_ANONYMITY == 1 << 1


def test_fixed_values() -> None:
    """RFC 8489 §5 and §14.7."""
    assert MAGIC_COOKIE == 0x2112A442
    assert MAGIC_COOKIE_BYTES == b"\x21\x12\xa4\x42"
    assert HEADER_LENGTH == 20
    assert FINGERPRINT_XOR == int.from_bytes(b"STUN")
    assert attributes.NONCE_COOKIE == "obMatJos2"


def test_message_class_bits() -> None:
    """RFC 8489 §5: C1 C0 = 00 request, 01 indication, 10 success, 11 error."""
    assert [(c.name, c.value) for c in MessageClass] == [
        ("REQUEST", 0),
        ("INDICATION", 1),
        ("SUCCESS", 2),
        ("ERROR", 3),
    ]


def test_address_family() -> None:
    """RFC 8489 §14.1."""
    assert (AddressFamily.IPV4, AddressFamily.IPV6) == (1, 2)


@pytest.mark.parametrize(
    ("attr_type", "required"),
    [
        (0x0000, True),
        (0x0001, True),
        (0x3FFF, True),
        (0x4000, True),
        (0x7FFF, True),
        (0x8000, False),
        (0xBFFF, False),
        (0xC000, False),
        (0xFFFF, False),
    ],
)
def test_comprehension_ranges(attr_type: int, required: bool) -> None:
    """RFC 8489 §18.3: 0x0000-0x7FFF required, 0x8000-0xFFFF optional."""
    assert is_comprehension_required(attr_type) is required


def test_attr_types_in_their_ranges() -> None:
    optional = {t for t in AttrType if t >= 0x8000}
    assert all(not is_comprehension_required(t) for t in optional)
    assert AttrType.FINGERPRINT in optional and AttrType.SOFTWARE in optional
    assert is_comprehension_required(AttrType.XOR_MAPPED_ADDRESS)
