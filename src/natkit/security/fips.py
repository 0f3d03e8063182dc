"""The crypto profile: ``default`` or ``fips`` (NIST SC-8, SC-13).

``crypto_profile = "fips"`` (or ``--fips``) keeps natkit to FIPS 140
approved algorithms where the protocols leave a choice:

- long-term credentials (RFC 8489 §9.2): SHA-256 only. PASSWORD-ALGORITHMS
  in a 401 lists SHA-256 alone, and a request that implies MD5 (MESSAGE-
  INTEGRITY without PASSWORD-ALGORITHM, the RFC 5389 way) is refused with
  400; ``allow_legacy_md5 = true`` keeps MD5 for old clients, with a
  WARNING at every start;
- REST credentials: HMAC-SHA-256 (``rest_hmac``; ``sha1`` only with
  ``allow_legacy_sha1 = true``);
- TLS: 1.2 and newer, ECDHE with AES-GCM only (in the default profile
  ChaCha20-Poly1305 too); TLS 1.3 suites are all AEAD;
- sealing, backups, the audit chain and nonces: AES-256-GCM, HKDF and
  HMAC with SHA-256, PBKDF2-HMAC-SHA-256 in both profiles.

The profile selects algorithms; whether the OpenSSL underneath runs its
FIPS provider is a property of the host. Start-up logs the OpenSSL versions
(Python's ``ssl``/``hashlib`` and ``cryptography``'s) and their FIPS mode;
``fips_required = true`` refuses to start unless both are in FIPS mode.
"""

import hashlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from natkit.stun.constants import PasswordAlgorithm
from natkit.stun.errors import NatkitError
from natkit.turn.credentials import RestHmac

logger = logging.getLogger(__name__)

#: TLS 1.2 suites: forward secret (ECDHE) and AEAD only
DEFAULT_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
#: ChaCha20-Poly1305 is not a FIPS 140 approved algorithm
FIPS_TLS12_CIPHERS = "ECDHE+AESGCM:!aNULL:!eNULL"
KERNEL_FIPS = Path("/proc/sys/crypto/fips_enabled")


class FipsError(NatkitError):
    """The FIPS profile cannot be honoured (``fips_required``, MD5 asked for)."""


@dataclass(frozen=True, slots=True)
class FipsStatus:
    """The OpenSSL libraries in use, and whether each runs in FIPS mode."""

    #: the OpenSSL of Python's ``ssl`` and ``hashlib`` (TLS, HMAC, SHA)
    openssl_version: str
    openssl_fips: bool
    #: the OpenSSL that ``cryptography`` is linked with (AES-GCM, HKDF)
    cryptography_openssl: str
    cryptography_fips: bool
    #: ``/proc/sys/crypto/fips_enabled``; None when the kernel does not say
    kernel_fips: bool | None

    @property
    def enabled(self) -> bool:
        """Both OpenSSL libraries run in FIPS mode."""
        return self.openssl_fips and self.cryptography_fips

    def describe(self) -> str:
        """One line for the start-up log."""
        kernel = "unknown" if self.kernel_fips is None else _on(self.kernel_fips)
        return (
            f"{self.openssl_version} (FIPS mode {_on(self.openssl_fips)}), "
            f"cryptography with {self.cryptography_openssl} "
            f"(FIPS mode {_on(self.cryptography_fips)}), kernel FIPS {kernel}"
        )


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def fips_status() -> FipsStatus:
    """What the libraries of this process report."""
    return FipsStatus(
        openssl_version=ssl.OPENSSL_VERSION,
        openssl_fips=_hashlib_fips(),
        cryptography_openssl=_cryptography_version(),
        cryptography_fips=_cryptography_fips(),
        kernel_fips=_kernel_fips(),
    )


def _hashlib_fips() -> bool:
    try:
        import _hashlib
    except ImportError:
        return False
    get_mode = getattr(_hashlib, "get_fips_mode", None)
    return bool(get_mode()) if get_mode is not None else False


def _cryptography_version() -> str:
    try:
        from cryptography.hazmat.backends.openssl import backend

        return str(backend.openssl_version_text())
    except (ImportError, AttributeError):
        return "unknown OpenSSL"


def _cryptography_fips() -> bool:
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        return bool(rust_openssl.is_fips_enabled())
    except (ImportError, AttributeError):
        pass
    try:
        from cryptography.hazmat.backends.openssl import backend

        return bool(getattr(backend, "_fips_enabled", False))
    except ImportError:
        return False


def _kernel_fips(path: Path = KERNEL_FIPS) -> bool | None:
    try:
        return path.read_text(encoding="ascii").strip() == "1"
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class CryptoProfile:
    """The algorithm choices of one server (see the module docstring)."""

    fips: bool
    password_algorithms: tuple[PasswordAlgorithm, ...]
    rest_hmac: RestHmac
    tls12_ciphers: str
    allow_legacy_md5: bool = False

    @property
    def name(self) -> str:
        return "fips" if self.fips else "default"

    @property
    def authenticator_fips(self) -> bool:
        """The ``fips=`` flag of the LongTermAuthenticator: no MD5 at all."""
        return PasswordAlgorithm.MD5 not in self.password_algorithms


def make_profile(
    *,
    fips: bool,
    allow_legacy_md5: bool = False,
    rest_hmac: str | None = None,
) -> CryptoProfile:
    """The profile for these settings (validated by the config already)."""
    if fips:
        algorithms: tuple[PasswordAlgorithm, ...] = (PasswordAlgorithm.SHA256,)
        if allow_legacy_md5:
            algorithms = (PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5)
        hmac_algorithm = RestHmac(rest_hmac or "sha256")
        ciphers = FIPS_TLS12_CIPHERS
    else:
        algorithms = (PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5)
        hmac_algorithm = RestHmac(rest_hmac or "sha1")
        ciphers = DEFAULT_TLS12_CIPHERS
    return CryptoProfile(fips, algorithms, hmac_algorithm, ciphers, allow_legacy_md5)


def harden_tls_context(context: ssl.SSLContext, profile: CryptoProfile) -> None:
    """TLS 1.2 minimum, AEAD suites only, no compression, no renegotiation."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(profile.tls12_ciphers)
    context.options |= ssl.OP_NO_COMPRESSION
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE


def check_start(profile: CryptoProfile, status: FipsStatus, *, required: bool) -> None:
    """Log the libraries and the profile; FipsError when FIPS mode is required.

    Logged at INFO: the OpenSSL versions and FIPS modes. At WARNING: MD5
    kept by ``allow_legacy_md5`` or HMAC-SHA-1 REST credentials in the fips
    profile, and a fips profile on an OpenSSL that is not in FIPS mode.
    """
    logger.info("crypto profile %s: %s", profile.name, status.describe())
    if required and not status.enabled:
        raise FipsError(
            "fips_required = true, but OpenSSL is not in FIPS mode ("
            + status.describe()
            + "): enable the OpenSSL FIPS provider or unset fips_required"
        )
    if not profile.fips:
        return
    if PasswordAlgorithm.MD5 in profile.password_algorithms:
        logger.warning(
            "allow_legacy_md5 = true: MD5 long-term credentials are accepted "
            "(not a FIPS 140 algorithm)"
        )
    if profile.rest_hmac is RestHmac.SHA1:
        logger.warning(
            "allow_legacy_sha1 = true: REST credentials use HMAC-SHA-1 in the "
            "fips profile"
        )
    if not status.enabled:
        logger.warning(
            "crypto profile fips on an OpenSSL that is not in FIPS mode: "
            "algorithms are restricted, but the module is not FIPS validated"
        )


def md5_available() -> bool:
    """Can this process compute MD5 for security use (off in FIPS mode)?"""
    try:
        hashlib.md5(b"", usedforsecurity=True)
    except ValueError:
        return False
    return True
