"""Self-signed TLS material and the server TLS context."""

import logging
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from natkit.security.certs import (
    CERT_FILE,
    KEY_FILE,
    CertificateError,
    TlsFiles,
    ensure_self_signed,
    server_context,
)


def test_first_use_generates_0600_files_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="natkit.security.certs")
    files = ensure_self_signed(tmp_path)

    assert files.generated
    assert files.cert == tmp_path / CERT_FILE
    assert files.key == tmp_path / KEY_FILE
    for path in (files.cert, files.key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [r.getMessage() for r in caplog.records if "generated" in r.getMessage()]

    caplog.clear()
    again = ensure_self_signed(tmp_path)
    assert not again.generated
    assert again.cert.read_bytes() == files.cert.read_bytes()
    assert not [r for r in caplog.records if "generated" in r.getMessage()]


def test_generated_certificate_names_loopback(tmp_path: Path) -> None:
    files = ensure_self_signed(tmp_path)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert ips == {"127.0.0.1", "::1"}


def test_server_context_is_tls12_minimum(tmp_path: Path) -> None:
    context = server_context(ensure_self_signed(tmp_path))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_bad_certificate_is_one_clear_error(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    with pytest.raises(CertificateError, match="cannot load certificate"):
        server_context(TlsFiles(cert, key))
    with pytest.raises(CertificateError, match="file not found"):
        server_context(TlsFiles(tmp_path / "none.pem", key))


def test_unwritable_data_dir_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="cannot write"):
        ensure_self_signed(tmp_path / "missing" / "dir")
