"""Secrets sealed at rest: AES-256-GCM under a master key (NIST SC-28, IA-5(1)).

What is sealed
==============

In a data directory that ``natkit serve`` has started on:

- the REST secrets file (``rest-secrets``, the whole content);
- the long-term keys of the user store (``natkit.db``, column
  ``user_keys.key``, schema version 2; plain v1 keys are sealed on open);
- the digests of the admin API tokens (``admin-tokens.json``, through
  :meth:`Sealer.seal` by :mod:`natkit.server.tokens`).

The master key
==============

32 random bytes, from (first match wins):

1. ``NATKIT_MASTER_KEY``: the key itself, standard base64;
2. ``master_key_file`` (``NATKIT_MASTER_KEY_FILE``): a file holding the
   base64 key (or the 32 raw bytes), mode 0600 - a mounted secret, kept apart
   from the data as FedRAMP expects;
3. otherwise ``DATA_DIR/master.key``, generated on first start (0600); a
   WARNING says each start that the key sits next to the data it protects.

The data directory remembers which key sealed it: ``sealing.json`` holds
the key id (8 hex digits of an HMAC of the key, never the key) and where the
key file is, so the CLI (``natkit users``, ``natkit secrets``) finds the key
the server used, and a different key is refused with one clear line instead
of failing to decrypt.

The API
=======

``Sealer.seal(plaintext, context=b"...") -> bytes`` and
``Sealer.unseal(sealed, context=b"...") -> bytes``: ``context`` names what
the value is and whose (e.g. ``b"user-key\\0alice\\0realm\\0" + algorithm``);
it is authenticated, not stored, so a sealed value moved to another place
does not unseal. :class:`SealError` (a NatkitError) for a wrong key, a
changed value or a wrong context. A sealed value is ``NKS1`` | key id (4
bytes) | nonce (12 bytes) | ciphertext and GCM tag; the AES key is
HKDF-SHA-256(master key, info ``natkit seal v1``), so the master key itself
never touches data. :func:`data_dir_sealer` gives the sealer of a data
directory (None when the directory was never sealed).
"""

import base64
import binascii
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from natkit.security.secrets import (
    PrivateFileError,
    check_private_file,
    create_private_file,
    ensure_private_dir,
    write_private_file,
)
from natkit.stun.errors import NatkitError

logger = logging.getLogger(__name__)

MASTER_KEY_ENV = "NATKIT_MASTER_KEY"
MASTER_KEY_FILE_ENV = "NATKIT_MASTER_KEY_FILE"
MASTER_KEY_FILE = "master.key"
MARKER_FILE = "sealing.json"
KEY_BYTES = 32
NONCE_BYTES = 12

MAGIC = b"NKS1"
#: a sealed value in a text file: this prefix, then base64 of the value
TEXT_PREFIX = "sealed:"
_HEADER = len(MAGIC) + 4 + NONCE_BYTES
_TAG = 16
_SEAL_INFO = b"natkit seal v1"
_ID_INFO = b"natkit master key id"


class SealError(NatkitError):
    """A value that cannot be sealed or unsealed, or a master key problem."""


def _key_id(key: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 4, salt=None, info=_ID_INFO).derive(key)


@dataclass(frozen=True, slots=True)
class MasterKey:
    """The master key and where it came from (``source`` names it, in words)."""

    key: bytes = field(repr=False)
    source: str
    #: the key file, None when it came from the environment
    path: Path | None = None
    #: True when the key is the generated one inside the data directory
    beside_data: bool = False

    @property
    def key_id(self) -> str:
        """8 hex digits that name the key; they reveal nothing about it."""
        return _key_id(self.key).hex()

    def derive(
        self, purpose: bytes, length: int = 32, salt: bytes | None = None
    ) -> bytes:
        """A subkey for ``purpose`` (HKDF-SHA-256); the master key is not used raw."""
        return HKDF(hashes.SHA256(), length, salt=salt, info=purpose).derive(self.key)


def parse_key(data: bytes, source: str) -> bytes:
    """A 32-byte key from base64 text or 32 raw bytes; SealError otherwise."""
    if len(data) == KEY_BYTES:
        return data  # raw bytes: base64 of 32 bytes is 44 characters
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SealError(f"{source} is not a master key (base64 of {KEY_BYTES} bytes)")
    return key


def read_key_file(path: Path) -> MasterKey:
    """The master key in ``path``; refused when other users may read it."""
    try:
        check_private_file(path)
        data = path.read_bytes()
    except PrivateFileError as exc:
        raise SealError(f"master key: {exc}") from None
    except OSError as exc:
        raise SealError(f"cannot read master key {path}: {exc.strerror}") from None
    return MasterKey(parse_key(data, str(path)), str(path), path)


def load_master_key(
    data_dir: Path,
    *,
    key_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    create: bool = True,
) -> MasterKey:
    """The master key: ``NATKIT_MASTER_KEY``, ``key_file``, or the data dir's.

    Without either, ``DATA_DIR/master.key`` is used and, with ``create``,
    generated; a WARNING says that the key sits next to the data.
    """
    env = os.environ if environ is None else environ
    text = env.get(MASTER_KEY_ENV)
    if text:
        return MasterKey(
            parse_key(text.encode("ascii", "replace"), MASTER_KEY_ENV), MASTER_KEY_ENV
        )
    if key_file is not None:
        return read_key_file(key_file)
    path = data_dir / MASTER_KEY_FILE
    if not path.exists() and create:
        try:
            ensure_private_dir(data_dir)
            data = base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
            if create_private_file(path, data):
                logger.info("generated master key %s", path)
        except PrivateFileError as exc:
            raise SealError(str(exc)) from None
    if not path.exists():
        raise SealError(
            f"no master key: set {MASTER_KEY_ENV}, master_key_file, or create {path}"
        )
    key = read_key_file(path)
    logger.warning(
        "master key %s is inside the data directory it protects; for FedRAMP "
        "keep it apart (master_key_file on another volume, or %s)",
        path,
        MASTER_KEY_ENV,
    )
    return MasterKey(key.key, key.source, path, beside_data=True)


class Sealer:
    """AES-256-GCM sealing under a :class:`MasterKey` (see the module docstring)."""

    __slots__ = ("master", "_aead", "_id")

    def __init__(self, master: MasterKey) -> None:
        self.master = master
        self._aead = AESGCM(master.derive(_SEAL_INFO))
        self._id = _key_id(master.key)

    @property
    def key_id(self) -> str:
        return self._id.hex()

    def seal(self, plaintext: bytes, *, context: bytes) -> bytes:
        """``plaintext`` sealed, bound to ``context``."""
        nonce = os.urandom(NONCE_BYTES)
        header = MAGIC + self._id + nonce
        return header + self._aead.encrypt(nonce, plaintext, MAGIC + self._id + context)

    def unseal(self, sealed: bytes, *, context: bytes) -> bytes:
        """The plaintext of ``sealed``; SealError if it is not ours or changed."""
        if len(sealed) < _HEADER + _TAG or not sealed.startswith(MAGIC):
            raise SealError("not a sealed value")
        key_id = sealed[len(MAGIC) : len(MAGIC) + 4]
        if key_id != self._id:
            raise SealError(
                f"sealed with master key {key_id.hex()}, not with {self._id.hex()} "
                f"({self.master.source})"
            )
        nonce = sealed[len(MAGIC) + 4 : _HEADER]
        try:
            return self._aead.decrypt(nonce, sealed[_HEADER:], MAGIC + key_id + context)
        except InvalidTag:
            raise SealError(
                "cannot unseal: the value was changed or belongs elsewhere"
            ) from None

    def seal_text(self, plaintext: bytes, *, context: bytes) -> str:
        """:meth:`seal` as one text line ``sealed:<base64>``."""
        return (
            TEXT_PREFIX
            + base64.b64encode(self.seal(plaintext, context=context)).decode()
        )

    def unseal_text(self, text: str, *, context: bytes) -> bytes:
        """The plaintext of a ``sealed:<base64>`` line."""
        body = text.strip().removeprefix(TEXT_PREFIX)
        try:
            sealed = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise SealError("not a sealed value (bad base64)") from None
        return self.unseal(sealed, context=context)


def is_sealed_text(text: str) -> bool:
    """Does the text of a file hold a sealed value (a ``sealed:`` line)?"""
    return any(line.strip().startswith(TEXT_PREFIX) for line in text.splitlines())


def sealed_line(text: str) -> str:
    """The ``sealed:`` line of a sealed text file."""
    for line in text.splitlines():
        if line.strip().startswith(TEXT_PREFIX):
            return line.strip()
    raise SealError("no sealed value in the file")


# --- the data directory ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealingMarker:
    """``sealing.json``: which key sealed the data directory, and where it is."""

    key_id: str
    #: the key file (relative to the data directory if inside it); None: env
    key_file: Path | None


def read_marker(data_dir: Path) -> SealingMarker | None:
    """The marker of ``data_dir``, None if it was never sealed."""
    path = data_dir / MARKER_FILE
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        key_file = body.get("key_file")
        return SealingMarker(
            str(body["key_id"]), None if key_file is None else Path(key_file)
        )
    except OSError as exc:
        raise SealError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise SealError(f"{path} is not a natkit sealing marker") from None


def enable_sealing(data_dir: Path, master: MasterKey) -> Sealer:
    """Mark ``data_dir`` as sealed with ``master``; the :class:`Sealer`.

    Refuses (SealError) a key other than the one the directory was sealed
    with: the sealed files would not open.
    """
    marker = read_marker(data_dir)
    if marker is not None and marker.key_id != master.key_id:
        raise SealError(
            f"{data_dir} was sealed with master key {marker.key_id}, but the "
            f"master key from {master.source} is {master.key_id}: give the "
            "original key (master_key_file or NATKIT_MASTER_KEY)"
        )
    key_file: str | None = None
    if master.path is not None:
        absolute = master.path.absolute()
        inside = absolute.parent == data_dir.absolute()
        key_file = absolute.name if inside else str(absolute)
    body = {
        "format": "natkit-sealing",
        "version": 1,
        "key_id": master.key_id,
        "key_file": key_file,
    }
    wanted = json.dumps(body, indent=1).encode("utf-8") + b"\n"
    path = data_dir / MARKER_FILE
    try:
        if not path.exists() or path.read_bytes() != wanted:
            write_private_file(path, wanted)
    except (OSError, PrivateFileError) as exc:
        raise SealError(f"cannot write {path}: {exc}") from None
    return Sealer(master)


def data_dir_sealer(
    data_dir: Path, *, environ: Mapping[str, str] | None = None
) -> Sealer | None:
    """The sealer of ``data_dir``, found from its marker; None if unsealed.

    The key: ``NATKIT_MASTER_KEY``, ``NATKIT_MASTER_KEY_FILE``, then the key
    file the marker names. SealError when it is missing or is another key.
    """
    marker = read_marker(data_dir)
    if marker is None:
        return None
    env = os.environ if environ is None else environ
    if env.get(MASTER_KEY_ENV):
        master = load_master_key(data_dir, environ=env, create=False)
    else:
        if env.get(MASTER_KEY_FILE_ENV):
            key_file = Path(env[MASTER_KEY_FILE_ENV])
        elif marker.key_file is not None:
            key_file = _resolve(marker.key_file, data_dir)
        else:
            raise SealError(
                f"{data_dir} is sealed with a master key from {MASTER_KEY_ENV}; set it"
            )
        if not key_file.exists():
            raise SealError(
                f"{data_dir} is sealed with master key {marker.key_id} from "
                f"{key_file}, which does not exist; set {MASTER_KEY_FILE_ENV} or "
                f"{MASTER_KEY_ENV}"
            )
        master = read_key_file(key_file)
    if master.key_id != marker.key_id:
        raise SealError(
            f"{data_dir} was sealed with master key {marker.key_id}, but the key "
            f"from {master.source} is {master.key_id}"
        )
    return Sealer(master)


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path
