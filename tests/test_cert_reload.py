"""SIGHUP certificate reload: new handshakes get the new certificate (SC-8).

Loopback only. The reload works on the live server context, so connections
(and the allocations on them) opened before it are left as they are.
"""

import asyncio
import hashlib
import ssl
from pathlib import Path

from natkit.security.audit import CollectingAuditSink
from natkit.security.certs import TlsFiles, ensure_self_signed, server_context
from natkit.server.daemon import reload_certificate


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _connect(
    port: int,
) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TLS connection; the SHA-256 of the certificate the server showed."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_client_context()
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest(), reader, writer


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(100):
        writer.write(data)
        await writer.drain()
    writer.close()


def _generated(directory: Path) -> TlsFiles:
    directory.mkdir(mode=0o700)
    return ensure_self_signed(directory)


def _fingerprint(files: TlsFiles) -> str:
    pem = files.cert.read_text()
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


async def test_sighup_reload_serves_the_new_certificate(tmp_path: Path) -> None:
    old = _generated(tmp_path / "old")
    new = _generated(tmp_path / "new")
    context = server_context(old)
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    audit = CollectingAuditSink()
    try:
        before, open_reader, open_writer = await _connect(port)
        assert before == _fingerprint(old)

        assert reload_certificate(new, context, audit)
        after, _, writer = await _connect(port)
        assert after == _fingerprint(new)
        writer.close()
        assert audit.of_type("config.reload")[0]["outcome"] == "success"

        # the connection opened before the reload still carries data
        open_writer.write(b"still here")
        assert await asyncio.wait_for(open_reader.read(100), 5) == b"still here"
        open_writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_broken_certificate_keeps_the_old_one(tmp_path: Path) -> None:
    old = _generated(tmp_path / "old")
    other = _generated(tmp_path / "other")
    context = server_context(old)
    # a certificate with a key that does not belong to it
    mismatched = TlsFiles(cert=other.cert, key=old.key, generated=False)
    audit = CollectingAuditSink()
    assert not reload_certificate(mismatched, context, audit)
    assert audit.of_type("config.reload")[0]["outcome"] == "failure"
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        seen, _, writer = await _connect(port)
        assert seen == _fingerprint(old)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
