"""TLS material for the STUN-over-TLS listener (RFC 8489 §6.2.3).

A configured certificate is used as is. Without one, the first start writes a
self-signed certificate and key into the data directory (mode 0600) and later
starts reuse them. The server context accepts TLS 1.2 and newer only.
"""

import datetime
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from natkit.stun.errors import NatkitError

logger = logging.getLogger(__name__)

CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"

#: how long a generated certificate is valid
GENERATED_VALIDITY = datetime.timedelta(days=825)


class CertificateError(NatkitError):
    """A certificate or key that cannot be written or loaded."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the certificate chain and private key are, and whether we made them."""

    cert: Path
    key: Path
    generated: bool = False


def ensure_self_signed(data_dir: Path, *, common_name: str = "natkit") -> TlsFiles:
    """The generated certificate in ``data_dir``, made on first use.

    Logs once, at INFO, when a new certificate is written.
    """
    cert, key = data_dir / CERT_FILE, data_dir / KEY_FILE
    if cert.exists() and key.exists():
        return TlsFiles(cert, key)
    cert_pem, key_pem = generate_self_signed(common_name)
    _write_private(key, key_pem)
    _write_private(cert, cert_pem)
    logger.info("generated self-signed TLS certificate %s (key %s)", cert, key)
    return TlsFiles(cert, key, generated=True)


def generate_self_signed(
    common_name: str = "natkit",
    *,
    now: datetime.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate and its key, both PEM.

    Subject alternative names: localhost, 127.0.0.1 and ::1.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = now or datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(start + GENERATED_VALIDITY)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file that only the owner can read (0600)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise CertificateError(f"cannot write {path}: {exc.strerror}") from None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server-side context with TLS 1.2 as the minimum (RFC 8489 §6.2.3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(files.cert, files.key)
    except FileNotFoundError as exc:
        raise CertificateError(f"cannot read {exc.filename}: file not found") from None
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(
            f"cannot load certificate {files.cert} with key {files.key}: {exc}"
        ) from None
    return context
