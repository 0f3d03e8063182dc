"""``natkit inventory``: this natkit as one asset of a FedRAMP inventory.

The record names the asset, the software and its components, the ports it
listens on and a hash of its configuration:

- **Unique asset identifier.** In an image: ``natkit@sha256:<digest>``, the
  image's manifest digest, from ``NATKIT_IMAGE_DIGEST`` or, failing that, the
  file ``/etc/natkit/image-digest``. (An image cannot hold its own digest, so
  the deployment passes it in: ``deploy/k8s`` sets the variable.) Elsewhere:
  ``host:<id>:natkit``, where ``<id>`` is HMAC-SHA-256 keyed with the host's
  ``/etc/machine-id`` over ``natkit inventory``, cut to 32 hex digits: stable
  for the host, and it does not disclose the machine id (machine-id(5) asks
  applications to derive such an application-specific id). Without a machine
  id the host name is used the same way.
- **Components**: every distribution ``importlib.metadata`` sees.
- **Listening ports**: the effective listeners of the server configuration,
  the TURN relay range (UDP) and the RFC 5780 alternate sockets.
- **Configuration hash**: SHA-256 of the validated configuration as canonical
  JSON (sorted keys, no spaces), defaults filled in, with secrets left out:
  ``auth_secret`` is dropped and ``users`` is reduced to the user names.

The CSV form follows the column list of the FedRAMP Rev. 5 Integrated
Inventory Workbook (SSP Appendix M); see :data:`WORKBOOK_COLUMNS`.
"""

import csv
import datetime
import hashlib
import hmac
import importlib.metadata
import io
import ipaddress
import json
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from natkit import __version__
from natkit.server.config import ServerConfig
from natkit.stun.errors import NatkitError
from natkit.supply.sbom import DIGEST_RE, normalize_name

__all__ = [
    "DIGEST_ENV",
    "DIGEST_FILE",
    "WORKBOOK_COLUMNS",
    "AssetRecord",
    "Component",
    "InventoryError",
    "ListeningPort",
    "asset_identity",
    "build_record",
    "config_fingerprint",
    "installed_components",
    "listening_ports",
    "to_csv",
    "to_json",
]

#: where the image digest comes from, in this order
DIGEST_ENV = "NATKIT_IMAGE_DIGEST"
DIGEST_FILE = Path("/etc/natkit/image-digest")
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
#: the message of the application-specific host id (machine-id(5))
HOST_ID_LABEL = b"natkit inventory"
SOFTWARE_NAME = "natkit"
SOFTWARE_FUNCTION = "STUN/TURN server (RFC 8489, RFC 8656)"
#: config keys whose values stay out of the configuration hash
SECRET_KEYS = ("auth_secret", "users")
#: how the hash treats them, as the JSON record states it
SECRETS_EXCLUDED = ("auth_secret", "users[].keys (user names kept)")

#: FedRAMP Rev. 5 SSP Appendix M, Integrated Inventory Workbook, "Inventory"
#: sheet: the 25 data columns in order. The older SSP Attachment 13 had 23
#: (no "Diagram Label", no "End-of-Life").
WORKBOOK_COLUMNS = (
    "UNIQUE ASSET IDENTIFIER",
    "IPv4 or IPv6 Address",
    "Virtual",
    "Public",
    "DNS Name or URL",
    "NetBIOS Name",
    "MAC Address",
    "Authenticated Scan",
    "Baseline Configuration Name",
    "OS Name and Version",
    "Location",
    "Asset Type",
    "Hardware Make/Model",
    "In Latest Scan",
    "Software/Database Vendor",
    "Software/Database Name & Version",
    "Patch Level",
    "Diagram Label",
    "Comments",
    "Serial #/Asset Tag#",
    "VLAN/Network ID",
    "System Administrator/Owner",
    "Application Administrator/Owner",
    "Function",
    "End-of-Life",
)


NAME_VERSION = "Software/Database Name & Version"


class InventoryError(NatkitError):
    """The inventory cannot be taken; ``str()`` is the one line to show."""


class IdSource(StrEnum):
    """Where the unique asset identifier came from."""

    DIGEST_ENV = "image digest (NATKIT_IMAGE_DIGEST)"
    DIGEST_FILE = "image digest (/etc/natkit/image-digest)"
    MACHINE_ID = "host (machine-id)"
    HOSTNAME = "host (host name)"


@dataclass(frozen=True, slots=True)
class AssetIdentity:
    asset_id: str
    source: IdSource
    image_digest: str | None = None

    @property
    def in_image(self) -> bool:
        return self.image_digest is not None


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class ListeningPort:
    """A listener, or a range of ports (the relay), with what it is for."""

    transport: str
    host: str
    port: int
    end_port: int | None = None
    purpose: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        ports = f"{self.port}-{self.end_port}" if self.end_port else str(self.port)
        return f"{self.transport} {host}:{ports}"


@dataclass(frozen=True, slots=True)
class AssetRecord:
    """One inventory record; :func:`to_json` and :func:`to_csv` render it."""

    identity: AssetIdentity
    software_version: str
    os_name: str | None
    addresses: tuple[str, ...]
    ports: tuple[ListeningPort, ...]
    config_sha256: str
    config_file: str | None
    components: tuple[Component, ...]
    generated: str


# --- the parts ---------------------------------------------------------------


def asset_identity(
    *,
    environ: Mapping[str, str] | None = None,
    digest_file: Path = DIGEST_FILE,
    machine_id_files: Iterable[Path] = MACHINE_ID_FILES,
    hostname: str | None = None,
) -> AssetIdentity:
    """The unique asset identifier (see the module docstring for the rules)."""
    env = os.environ if environ is None else environ

    # step 1: an image digest handed in by the deployment, or written at build
    value = env.get(DIGEST_ENV, "").strip()
    if value:
        return AssetIdentity(_image_id(value, DIGEST_ENV), IdSource.DIGEST_ENV, value)
    try:
        value = digest_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        value = ""
    if value:
        asset_id = _image_id(value, str(digest_file))
        return AssetIdentity(asset_id, IdSource.DIGEST_FILE, value)

    # step 2: a host-bound id that does not disclose the machine id
    for path in machine_id_files:
        try:
            machine_id = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if len(machine_id) == 32 and all(c in "0123456789abcdef" for c in machine_id):
            return AssetIdentity(
                _host_id(bytes.fromhex(machine_id)), IdSource.MACHINE_ID
            )
    name = hostname if hostname is not None else platform.node()
    return AssetIdentity(_host_id(name.encode()), IdSource.HOSTNAME)


def _image_id(digest: str, where: str) -> str:
    if not DIGEST_RE.fullmatch(digest):
        raise InventoryError(
            f"{where} = {digest!r}: expected an image digest sha256:<64 hex digits>"
        )
    return f"{SOFTWARE_NAME}@{digest}"


def _host_id(key: bytes) -> str:
    token = hmac.new(key, HOST_ID_LABEL, hashlib.sha256).hexdigest()[:32]
    return f"host:{token}:{SOFTWARE_NAME}"


def installed_components() -> tuple[Component, ...]:
    """Name and version of each installed distribution, first on sys.path wins."""
    seen: dict[str, Component] = {}
    for dist in importlib.metadata.distributions():
        # a broken distribution (no METADATA) has no name: skip it
        name: str | None = dist.name
        if not name:
            continue
        key = normalize_name(str(name))
        if key not in seen:
            seen[key] = Component(str(name), dist.version)
    return tuple(seen[k] for k in sorted(seen))


def listening_ports(config: ServerConfig) -> tuple[ListeningPort, ...]:
    """What the configured server listens on: listeners, relay range, RFC 5780."""
    ports = [
        ListeningPort(
            str(a.transport),
            a.host,
            a.port,
            purpose="STUN/TURN over TLS" if str(a.transport) == "tls" else "STUN/TURN",
        )
        for a in config.listeners()
    ]
    addresses = config.rfc5780_addresses()
    if addresses is not None:
        for ip, port in (
            (addresses.primary_ip, addresses.alternate_port),
            (addresses.alternate_ip, addresses.primary_port),
            (addresses.alternate_ip, addresses.alternate_port),
        ):
            ports.append(ListeningPort("udp", ip, port, purpose="RFC 5780 alternate"))
    admin = _admin_listener(config)
    if admin is not None:
        ports.append(admin)
    if config.turn:
        relay = config.relay_ports
        for host in config.relay_ip or ("*",):
            ports.append(
                ListeningPort("udp", host, relay.low, relay.high, purpose="TURN relay")
            )
    return tuple(ports)


def _admin_listener(config: ServerConfig) -> ListeningPort | None:
    """The admin API's HTTPS listener (metrics too), when it is switched on."""
    # read defensively: the admin keys are newer than the rest of the model
    enabled = getattr(config, "admin", False)
    address = getattr(config, "admin_listen", None)
    if not enabled or address is None:
        return None
    host, port = str(getattr(address, "host", "")), getattr(address, "port", None)
    if not host or not isinstance(port, int):
        return None
    return ListeningPort("tcp", host, port, purpose="admin API and metrics (HTTPS)")


def asset_addresses(config: ServerConfig) -> tuple[str, ...]:
    """The concrete IPs the configuration names: listen, relay and external."""
    found: list[str] = []
    candidates = [a.host for a in config.listeners()]
    candidates += list(config.relay_ip)
    candidates += [e.public for e in config.external_ip]
    if config.alternate_ip:
        candidates.append(config.alternate_ip)
    for text in candidates:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if not ip.is_unspecified and str(ip) not in found:
            found.append(str(ip))
    return tuple(found)


def config_fingerprint(config: ServerConfig) -> str:
    """SHA-256 of the canonical JSON of the effective config, secrets left out.

    Canonical: ``json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` of the validated model in JSON mode, with ``listen``
    replaced by the effective listeners, ``auth_secret`` dropped and
    ``users`` reduced to the sorted user names (their keys derive from the
    passwords).
    """
    data: dict[str, Any] = config.model_dump(mode="json", exclude=set(SECRET_KEYS))
    data["listen"] = [str(a) for a in config.listeners()]
    data["users"] = sorted(u.name for u in config.users)
    canonical = json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def os_name() -> str | None:
    """PRETTY_NAME of os-release(5), or None where there is none."""
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        return None


def build_record(
    config: ServerConfig,
    *,
    config_file: Path | None = None,
    identity: AssetIdentity | None = None,
    components: tuple[Component, ...] | None = None,
    now: datetime.datetime | None = None,
) -> AssetRecord:
    """The inventory record of this natkit with ``config``."""
    moment = now or datetime.datetime.now(datetime.UTC)
    return AssetRecord(
        identity=identity or asset_identity(),
        software_version=__version__,
        os_name=os_name(),
        addresses=asset_addresses(config),
        ports=listening_ports(config),
        config_sha256=config_fingerprint(config),
        config_file=str(config_file) if config_file is not None else None,
        components=installed_components() if components is None else components,
        generated=moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


# --- rendering ---------------------------------------------------------------


def to_json(record: AssetRecord) -> dict[str, Any]:
    """The record as a JSON-ready dict (``natkit inventory --json``)."""
    identity = record.identity
    return {
        "unique_asset_identifier": identity.asset_id,
        "asset_identifier_source": str(identity.source),
        "image_digest": identity.image_digest,
        "software": {"name": SOFTWARE_NAME, "version": record.software_version},
        "function": SOFTWARE_FUNCTION,
        "os": record.os_name,
        "addresses": list(record.addresses),
        "listening_ports": [
            {
                "transport": p.transport,
                "host": p.host,
                "port": p.port,
                "end_port": p.end_port,
                "purpose": p.purpose,
            }
            for p in record.ports
        ],
        "configuration": {
            "sha256": record.config_sha256,
            "file": record.config_file,
            "secrets_excluded": list(SECRETS_EXCLUDED),
        },
        "components": [
            {"name": c.name, "version": c.version} for c in record.components
        ],
        "generated": record.generated,
    }


def workbook_rows(record: AssetRecord) -> list[dict[str, str]]:
    """Workbook rows: the asset (one per IP, as the template asks), then one
    software row per component under the same asset identifier."""
    identity = record.identity
    ports = ", ".join(f"{p} ({p.purpose})" for p in record.ports)
    comments = f"listening: {ports}; configuration sha256:{record.config_sha256}"
    base = {
        "UNIQUE ASSET IDENTIFIER": identity.asset_id,
        "Virtual": "Yes" if identity.in_image else "",
        "OS Name and Version": record.os_name or "",
        "Asset Type": "Container" if identity.in_image else "Application",
        "Software/Database Vendor": SOFTWARE_NAME,
        NAME_VERSION: f"{SOFTWARE_NAME} {record.software_version}",
        "Comments": comments,
        "Serial #/Asset Tag#": identity.image_digest or "",
        "Function": SOFTWARE_FUNCTION,
    }
    rows = [{**base, "IPv4 or IPv6 Address": ip} for ip in record.addresses] or [base]
    for component in record.components:
        rows.append(
            {
                "UNIQUE ASSET IDENTIFIER": identity.asset_id,
                "Software/Database Vendor": "Open Source",
                NAME_VERSION: f"{component.name} {component.version}",
                "Comments": f"Python distribution installed with {SOFTWARE_NAME}",
                "Function": "software component",
            }
        )
    return [
        {column: row.get(column, "") for column in WORKBOOK_COLUMNS} for row in rows
    ]


def to_csv(record: AssetRecord) -> str:
    """The workbook rows as CSV (RFC 4180), header first."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=WORKBOOK_COLUMNS)
    writer.writeheader()
    writer.writerows(workbook_rows(record))
    return out.getvalue()


def to_text(record: AssetRecord) -> str:
    """A short human summary (``natkit inventory`` without --json/--csv)."""
    identity = record.identity
    lines = [
        f"asset:       {identity.asset_id}  [{identity.source}]",
        f"software:    {SOFTWARE_NAME} {record.software_version}",
        f"os:          {record.os_name or 'unknown'}",
        f"config:      sha256:{record.config_sha256}"
        + (f"  ({record.config_file})" if record.config_file else ""),
        "listening:",
    ]
    lines += [f"  {p}  {p.purpose}" for p in record.ports]
    lines.append(f"components:  {len(record.components)}")
    lines += [f"  {c.name} {c.version}" for c in record.components]
    return "\n".join(lines)
