"""Private files in the data directory, and the REST shared secrets.

The data directory holds what must survive a restart and must not leak:
the user store, the TLS key, the REST secrets. Every such file is written
atomically with mode 0600 (:func:`write_private_file`) and refused when
other users may read or write it (:func:`check_private_file`).

The REST secrets (the shared secret of the "TURN REST API", see
:mod:`natkit.turn.credentials`) live in the file ``rest-secrets``:

- one secret per line, standard base64 (RFC 4648 §4, padded);
- newest first: the first secret mints new credentials, every listed one is
  accepted, so a secret is rotated by adding a new one, waiting out the
  longest credential lifetime, then retiring the old one;
- blank lines and lines starting with ``#`` are ignored.

The first use writes one random 32-byte secret and says so once at INFO;
a secret itself is never logged, only its fingerprint
(:func:`secret_fingerprint`).

In a data directory that is sealed (:mod:`natkit.security.sealing`, set up
by the first ``natkit serve``) the file holds one ``sealed:`` line instead:
the same text, AES-256-GCM sealed under the master key. Adding and retiring
a secret writes an audit record (``secret.add``, ``secret.retire``) into
the data directory's audit trail (:func:`natkit.security.audit.record_change`).
"""

import base64
import binascii
import fcntl
import hashlib
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from natkit.stun.errors import NatkitError, UsageError

logger = logging.getLogger(__name__)

REST_SECRETS_FILE = "rest-secrets"
#: a generated secret: 256 bits
GENERATED_SECRET_BYTES = 32
#: secrets shorter than this are refused in the secrets file
MIN_SECRET_BYTES = 16
#: what the sealed REST secrets file is bound to (sealing context)
SEAL_CONTEXT = b"natkit rest-secrets v1"
#: placeholders that are refused as secrets (IA-5(1)), compared case-blind
WEAK_SECRETS = frozenset(
    {
        "changeme",
        "changeit",
        "secret",
        "password",
        "passw0rd",
        "default",
        "natkit",
        "turn",
        "coturn",
        "test",
        "example",
        "admin",
        "letmein",
        "0123456789",
        "1234567890",
    }
)

_HEADER = (
    "# natkit REST secrets: one per line, base64, newest first.\n"
    "# The first mints credentials; every line is accepted.\n"
)
_LOCK_SUFFIX = ".lock"


class PrivateFileError(NatkitError):
    """A private file or directory that cannot be used as it is."""


class RestSecretError(NatkitError):
    """A rotation step the secrets file does not allow (unknown, last, twice)."""


@dataclass(frozen=True, slots=True)
class RestSecrets:
    """The REST secrets of a data directory, newest first.

    ``generated`` is True when this call created the file.
    """

    path: Path
    secrets: tuple[bytes, ...] = field(repr=False)
    generated: bool = False

    @property
    def newest(self) -> bytes:
        """The secret that mints new credentials."""
        return self.secrets[0]


# --- private files -----------------------------------------------------------


def ensure_private_dir(path: Path) -> Path:
    """Create directory ``path`` with mode 0700 if it is missing.

    An existing directory is kept as it is, with a warning if other users
    may enter it.
    """
    if not path.exists():
        try:
            path.mkdir(mode=0o700, parents=True)
            path.chmod(0o700)
        except OSError as exc:
            raise PrivateFileError(
                f"cannot create directory {path}: {exc.strerror or exc}"
            ) from None
        logger.info("created data directory %s", path)
        return path
    if not path.is_dir():
        raise PrivateFileError(f"{path} is not a directory")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("directory %s is open to other users (mode %04o)", path, mode)
    return path


def check_private_file(path: Path) -> None:
    """Refuse ``path`` unless it is a regular file only its owner can access.

    Symbolic links are followed (a mounted secret is often one). Raises
    :class:`PrivateFileError` with the ``chmod`` that fixes it.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PrivateFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise PrivateFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise PrivateFileError(f"{path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o044:
        what = "readable"
    elif mode & 0o033:
        what = "writable"
    else:
        return
    raise PrivateFileError(
        f"{path} is {what} by other users (mode {mode:04o}); run: chmod 600 {path}"
    )


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600.

    The data goes to a temporary file (created 0600) in the same directory,
    is flushed to disk, and is renamed over ``path``.
    """
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PrivateFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    _sync_dir(path.parent)


def create_private_file(path: Path, data: bytes) -> bool:
    """Write ``path`` (mode 0600) only if it does not exist yet; atomic.

    Returns False, and leaves the file alone, when another process created
    it first: two first starts never write two different files.
    """
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        raise PrivateFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(path.parent)
    return True


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new 0600 file next to ``path``, flushed to disk."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise PrivateFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PrivateFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    return tmp


def _sync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        logger.debug("fsync of directory %s failed", path)
    finally:
        os.close(fd)


# --- REST secrets ------------------------------------------------------------


def secret_fingerprint(secret: bytes) -> str:
    """What names a secret in listings and logs: 8 hex digits of its SHA-256."""
    return hashlib.sha256(secret).hexdigest()[:8]


def rest_secrets_path(data_dir: Path) -> Path:
    """Where the REST secrets of ``data_dir`` are."""
    return data_dir / REST_SECRETS_FILE


def parse_rest_secrets(text: str, *, source: str = REST_SECRETS_FILE) -> list[bytes]:
    """The secrets in the text of a secrets file, newest first.

    Raises :class:`PrivateFileError` naming ``source`` and the line for a
    line that is not base64, a secret that is too short, or a duplicate.
    """
    found: list[bytes] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            secret = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise PrivateFileError(f"{source} line {number}: not base64") from None
        if len(secret) < MIN_SECRET_BYTES:
            raise PrivateFileError(
                f"{source} line {number}: secret shorter than {MIN_SECRET_BYTES} bytes"
            )
        if secret in found:
            raise PrivateFileError(f"{source} line {number}: duplicate secret")
        found.append(secret)
    return found


def format_rest_secrets(secrets: Sequence[bytes]) -> bytes:
    """The text of a secrets file holding ``secrets`` (newest first)."""
    lines = [base64.b64encode(s).decode("ascii") + "\n" for s in secrets]
    return (_HEADER + "".join(lines)).encode("ascii")


def weak_secret_reason(secret: bytes) -> str | None:
    """Why ``secret`` must not be used as a shared secret, or None (IA-5(1)).

    Shorter than :data:`MIN_SECRET_BYTES`, a known placeholder (possibly
    repeated, e.g. ``changemechangeme``), or one character repeated.
    """
    if len(secret) < MIN_SECRET_BYTES:
        return f"shorter than {MIN_SECRET_BYTES} bytes"
    text = secret.decode("utf-8", "replace").lower()
    letters = "".join(ch for ch in text if ch.isalnum())
    for word in WEAK_SECRETS:
        if letters and letters == word * (len(letters) // len(word)):
            return f"a known placeholder ({word!r})"
    if len(set(secret)) == 1:
        return "one character repeated"
    return None


def _unsealed(data_dir: Path, path: Path, text: str) -> str:
    """The text of a secrets file, unsealed when it is sealed."""
    from natkit.security.sealing import (
        SealError,
        data_dir_sealer,
        is_sealed_text,
        sealed_line,
    )

    if not is_sealed_text(text):
        return text
    try:
        sealer = data_dir_sealer(data_dir)
        if sealer is None:
            raise SealError(f"{data_dir} has no sealing marker (sealing.json)")
        plain = sealer.unseal_text(sealed_line(text), context=SEAL_CONTEXT)
        return plain.decode("ascii")
    except SealError as exc:
        raise PrivateFileError(f"{path} is sealed: {exc}") from None
    except UnicodeDecodeError:
        raise PrivateFileError(f"{path}: sealed content is not ASCII text") from None


def _file_bytes(data_dir: Path, secrets: Sequence[bytes]) -> bytes:
    """The secrets file content: sealed when the data directory is."""
    from natkit.security.sealing import SealError, data_dir_sealer

    plain = format_rest_secrets(secrets)
    try:
        sealer = data_dir_sealer(data_dir)
    except SealError as exc:
        raise PrivateFileError(str(exc)) from None
    if sealer is None:
        return plain
    line = sealer.seal_text(plain, context=SEAL_CONTEXT)
    header = (
        f"# natkit REST secrets, sealed with master key {sealer.key_id}.\n"
        "# Edit with natkit secrets add / retire.\n"
    )
    return (header + line + "\n").encode("ascii")


def seal_rest_secrets(data_dir: Path) -> bool:
    """Rewrite a plain ``rest-secrets`` sealed (data directory sealed); True if done."""
    from natkit.security.sealing import is_sealed_text

    path = rest_secrets_path(data_dir)
    if not path.exists():
        return False
    with _locked(path):
        check_private_file(path)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return False  # read_rest_secrets reports it
        if is_sealed_text(text):
            return False
        current = read_rest_secrets(data_dir)
        data = _file_bytes(data_dir, current)
        if data == text.encode("ascii"):
            return False
        write_private_file(path, data)
    logger.info("sealed REST secrets file %s", path)
    return True


def _audit(
    data_dir: Path, event_type: str, fingerprint: str, reason: str | None = None
) -> None:
    from natkit.security.audit import record_change

    record_change(
        data_dir, event_type, outcome="success", fingerprint=fingerprint, reason=reason
    )


def read_rest_secrets(data_dir: Path) -> list[bytes]:
    """The REST secrets of ``data_dir``, newest first; the file must exist.

    Raises :class:`PrivateFileError` if it is missing, open to other users,
    malformed, empty, or sealed under a master key that cannot be found.
    """
    path = rest_secrets_path(data_dir)
    check_private_file(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise PrivateFileError(f"cannot read {path}: {reason or exc}") from None
    text = _unsealed(data_dir, path, text)
    found = parse_rest_secrets(text, source=str(path))
    if not found:
        raise PrivateFileError(
            f"{path} holds no secret; add one with: natkit secrets add"
        )
    return found


def ensure_rest_secrets(data_dir: Path) -> RestSecrets:
    """The REST secrets of ``data_dir``, generating the first one if needed.

    Creates the data directory (0700) and the file (0600) when missing and
    logs, once at INFO, where the new secret was written.
    """
    ensure_private_dir(data_dir)
    path = rest_secrets_path(data_dir)
    generated = False
    if not path.exists():
        secret = secrets.token_bytes(GENERATED_SECRET_BYTES)
        generated = create_private_file(path, _file_bytes(data_dir, [secret]))
        if generated:
            logger.info(
                "generated REST secret %s in %s", secret_fingerprint(secret), path
            )
            _audit(
                data_dir,
                "secret.add",
                fingerprint=secret_fingerprint(secret),
                reason="generated on first use",
            )
    return RestSecrets(path, tuple(read_rest_secrets(data_dir)), generated)


def load_or_create_rest_secret(data_dir: Path) -> list[bytes]:
    """The REST secrets of ``data_dir``, newest first, created on first use."""
    return list(ensure_rest_secrets(data_dir).secrets)


def add_rest_secret(data_dir: Path, secret: bytes | None = None) -> bytes:
    """Put ``secret`` (a new random one by default) first; return it.

    The older secrets stay valid until retired. Raises UsageError for a
    secret that is too short, :class:`RestSecretError` for one already listed.
    """
    if secret is None:
        secret = secrets.token_bytes(GENERATED_SECRET_BYTES)
    elif len(secret) < MIN_SECRET_BYTES:
        raise UsageError(f"a REST secret must be at least {MIN_SECRET_BYTES} bytes")
    ensure_private_dir(data_dir)
    path = rest_secrets_path(data_dir)
    with _locked(path):
        current = read_rest_secrets(data_dir) if path.exists() else []
        if secret in current:
            raise RestSecretError(
                f"secret {secret_fingerprint(secret)} is already in {path}"
            )
        write_private_file(path, _file_bytes(data_dir, [secret, *current]))
    logger.info("added REST secret %s to %s", secret_fingerprint(secret), path)
    _audit(data_dir, "secret.add", fingerprint=secret_fingerprint(secret))
    return secret


def retire_rest_secret(data_dir: Path, fingerprint: str | None = None) -> bytes:
    """Remove the secret whose fingerprint starts with ``fingerprint``.

    Without ``fingerprint`` the oldest secret goes. The last secret is never
    removed (the server would accept no REST credential at all). A
    fingerprint that is not hex is a UsageError; an unknown or ambiguous one,
    or the last secret, a :class:`RestSecretError`. Returns the removed secret.
    """
    path = rest_secrets_path(data_dir)
    with _locked(path):
        current = read_rest_secrets(data_dir)
        if fingerprint is None:
            victim = current[-1]
        else:
            victim = _by_fingerprint(current, fingerprint, path)
        if len(current) == 1:
            raise RestSecretError(
                f"{secret_fingerprint(victim)} is the only secret in {path}; "
                "add a new one first"
            )
        write_private_file(
            path, _file_bytes(data_dir, [s for s in current if s != victim])
        )
    logger.info("retired REST secret %s from %s", secret_fingerprint(victim), path)
    _audit(data_dir, "secret.retire", fingerprint=secret_fingerprint(victim))
    return victim


def _by_fingerprint(current: Sequence[bytes], fingerprint: str, path: Path) -> bytes:
    prefix = fingerprint.strip().lower()
    if not prefix or any(ch not in "0123456789abcdef" for ch in prefix):
        raise UsageError(f"fingerprint {fingerprint!r}: expected hex digits")
    matches = [s for s in current if secret_fingerprint(s).startswith(prefix)]
    if not matches:
        raise RestSecretError(f"no secret with fingerprint {prefix} in {path}")
    if len(matches) > 1:
        raise RestSecretError(
            f"fingerprint {prefix} matches several secrets; give more"
        )
    return matches[0]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of ``path`` between processes (flock)."""
    lock = path.with_name(f".{path.name}{_LOCK_SUFFIX}")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise PrivateFileError(f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
