"""A CycloneDX 1.6 SBOM of the natkit image, or of the runtime lock file.

Three sources, one document:

- an image root filesystem (``--rootfs DIR`` with ``--digest sha256:...``):
  the Python distributions found in its ``site-packages`` / ``dist-packages``
  directories (``*.dist-info/METADATA``, ``*.egg-info/PKG-INFO``), the Debian
  packages of ``/var/lib/dpkg/status`` (and ``status.d/``), and the
  distribution named by ``/etc/os-release``;
- an OCI image archive (``--oci dist/natkit.oci.tar``): the same files read
  from its layers, whiteouts applied, every blob checked against its digest;
  the image digest is the manifest's;
- the runtime lock file (``--lock requirements/runtime.lock``) when no image
  is built: what the image would install, with the lock's accepted hashes and
  its ``# via`` dependency graph.

The image is the top component (``metadata.component``, type ``container``,
purl ``pkg:oci/natkit@sha256:...``, the digest as its SHA-256 hash). Every
other component has a package URL: ``pkg:pypi/NAME@VERSION`` and
``pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12``. The document is
checked against the CycloneDX 1.6 JSON schema that cyclonedx-python-lib
ships (offline); see :func:`validate_bom`.

Run as ``python -m natkit.supply.sbom --help``.
"""

import datetime
import email.parser
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import tarfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from natkit import __version__
from natkit.stun.errors import NatkitError

__all__ = [
    "DIGEST_RE",
    "SPEC_VERSION",
    "DebPackage",
    "ImageContents",
    "PythonDist",
    "SbomError",
    "TopComponent",
    "build_bom",
    "contents_from_files",
    "deb_purl",
    "normalize_name",
    "oci_purl",
    "parse_dpkg_status",
    "parse_lock",
    "pypi_purl",
    "read_oci_archive",
    "read_rootfs",
    "validate_bom",
]

logger = logging.getLogger(__name__)

SPEC_VERSION = "1.6"
SCHEMA_URL = "http://cyclonedx.org/schema/bom-1.6.schema.json"
#: an image digest as OCI writes it (only SHA-256 is accepted here)
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
#: the name the SBOM tool gives itself in metadata.tools
TOOL_NAME = "natkit-sbom"
#: the namespace of natkit's own CycloneDX properties
PROPERTY_PREFIX = "natkit:"

_SITE_DIRS = frozenset({"site-packages", "dist-packages"})
_DPKG_STATUS = "var/lib/dpkg/status"
_DPKG_STATUS_D = "var/lib/dpkg/status.d/"
_OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
#: top-level directories of a root filesystem that hold no package data
_SKIP_TOP = frozenset({"proc", "sys", "dev", "run", "tmp"})


class SbomError(NatkitError):
    """Input the SBOM cannot be built from; ``str()`` is the one line to show."""


# --- records ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DebPackage:
    """One installed package of a dpkg status file (deb-control(5) fields)."""

    name: str
    version: str
    architecture: str
    #: the source package, when the status file names one (Source: field)
    source: str | None = None
    #: the source version, when it differs from the binary's
    source_version: str | None = None


@dataclass(frozen=True, slots=True)
class PythonDist:
    """One Python distribution: from an installed METADATA or a lock line."""

    name: str
    version: str
    license_expression: str | None = None
    license_name: str | None = None
    #: where it is installed inside the root filesystem (dist-info paths)
    locations: tuple[str, ...] = ()
    #: the artifact SHA-256 hashes a lock file accepts for it
    sha256: tuple[str, ...] = ()
    #: lock file ``# via``: normalised names of the requiring distributions,
    #: ``""`` for a top-level requirement of the project
    required_by: tuple[str, ...] = ()

    @property
    def purl(self) -> str:
        return pypi_purl(self.name, self.version)


@dataclass(frozen=True, slots=True)
class OsRelease:
    """The distribution named by os-release(5)."""

    id: str
    version_id: str | None
    pretty_name: str | None

    @property
    def distro(self) -> str | None:
        """The purl ``distro`` qualifier: ``debian-12``."""
        return f"{self.id}-{self.version_id}" if self.version_id else None


@dataclass(frozen=True, slots=True)
class ImageContents:
    """What an image holds, as far as the SBOM is concerned."""

    python: tuple[PythonDist, ...] = ()
    debian: tuple[DebPackage, ...] = ()
    os_release: OsRelease | None = None


class TopKind(StrEnum):
    CONTAINER = "container"
    APPLICATION = "application"


@dataclass(frozen=True, slots=True)
class TopComponent:
    """``metadata.component``: the image (by digest), or natkit itself."""

    kind: TopKind
    name: str
    version: str
    digest: str | None = None

    @classmethod
    def image(cls, digest: str, name: str = "natkit") -> "TopComponent":
        check_digest(digest)
        return cls(TopKind.CONTAINER, name, digest, digest)

    @property
    def bom_ref(self) -> str:
        if self.digest is not None:
            return oci_purl(self.name, self.digest)
        return f"{self.name}@{self.version}"


def check_digest(digest: str) -> str:
    """``sha256:<64 lowercase hex>`` or an SbomError."""
    if not DIGEST_RE.fullmatch(digest):
        raise SbomError(f"image digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


# --- package URLs (purl-spec) -----------------------------------------------


def normalize_name(name: str) -> str:
    """PEP 503 normalised name: ``Typing_Extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _purl_quote(text: str) -> str:
    # percent-encode all but unreserved characters; ':' stays as it is, as the
    # reference implementation (packageurl-python) writes it
    return quote(text, safe=":")


def _qualifiers(values: Mapping[str, str | None]) -> str:
    pairs = [f"{k}={_purl_quote(v)}" for k, v in sorted(values.items()) if v]
    return "?" + "&".join(pairs) if pairs else ""


def pypi_purl(name: str, version: str) -> str:
    """``pkg:pypi/NAME@VERSION``; purl-spec: NAME lowercased, ``_`` as ``-``."""
    purl_name = name.lower().replace("_", "-")
    return f"pkg:pypi/{_purl_quote(purl_name)}@{_purl_quote(version)}"


def deb_purl(package: DebPackage, distro: str | None) -> str:
    """``pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12``."""
    base = f"pkg:deb/debian/{_purl_quote(package.name)}@{_purl_quote(package.version)}"
    return base + _qualifiers({"arch": package.architecture, "distro": distro})


def oci_purl(name: str, digest: str) -> str:
    """``pkg:oci/NAME@sha256:...``: an OCI image by its manifest digest."""
    return f"pkg:oci/{_purl_quote(name.lower())}@{digest}"


# --- dpkg status, os-release, Python metadata -------------------------------


def _paragraphs(text: str, origin: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs: ``Field: value`` lines, blank-line separated."""
    fields: dict[str, str] = {}
    last: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0] in " \t":
            # a continuation line (Description, Conffiles): not needed here
            if last is None:
                raise SbomError(f"{origin} line {number}: continuation without field")
        else:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise SbomError(f"{origin} line {number}: expected 'Field: value'")
            last = name.strip().lower()
            fields[last] = value.strip()
    if fields:
        yield fields


def parse_dpkg_status(text: str, origin: str = _DPKG_STATUS) -> tuple[DebPackage, ...]:
    """The installed packages of a dpkg status file (dpkg(1), deb-control(5)).

    Packages whose Status is not ``... installed`` (removed, config files
    only, half-installed) are left out.
    """
    packages = []
    for fields in _paragraphs(text, origin):
        name = fields.get("package")
        if not name:
            raise SbomError(f"{origin}: a paragraph without Package: field")
        status = fields.get("status")
        if status is not None and status.split()[-1:] != ["installed"]:
            continue
        version, arch = fields.get("version"), fields.get("architecture")
        if not version or not arch:
            missing = "Version" if not version else "Architecture"
            raise SbomError(f"{origin}: package {name} has no {missing}: field")
        source, source_version = _parse_source(fields.get("source"), version)
        packages.append(DebPackage(name, version, arch, source, source_version))
    return tuple(packages)


def _parse_source(text: str | None, version: str) -> tuple[str | None, str | None]:
    """``Source: NAME`` or ``Source: NAME (VERSION)``."""
    if not text:
        return None, None
    name, _, rest = text.partition("(")
    source_version = rest.rstrip(") ").strip() or None
    return name.strip(), None if source_version == version else source_version


def parse_os_release(text: str) -> OsRelease | None:
    """ID, VERSION_ID and PRETTY_NAME of an os-release(5) file."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value.strip().strip("\"'")
    if "ID" not in values:
        return None
    return OsRelease(values["ID"], values.get("VERSION_ID"), values.get("PRETTY_NAME"))


def parse_dist_metadata(text: str, location: str) -> PythonDist:
    """Name, Version and licence of a core-metadata file (METADATA, PKG-INFO)."""
    headers = email.parser.HeaderParser().parsestr(text)
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        raise SbomError(f"{location}: no Name or Version in the metadata")
    expression = headers.get("License-Expression")
    license_name = headers.get("License")
    if license_name is not None:
        license_name = license_name.strip()
        # free-text licences are often the whole licence file: keep a name only
        if not license_name or "\n" in license_name or len(license_name) > 100:
            license_name = None
    return PythonDist(
        str(name).strip(),
        str(version).strip(),
        license_expression=str(expression).strip() if expression else None,
        license_name=license_name,
        locations=(posixpath.dirname(location),),
    )


def is_wanted(path: str) -> bool:
    """Whether a root filesystem path (relative, POSIX) feeds the SBOM."""
    if path == _DPKG_STATUS or path in _OS_RELEASE:
        return True
    if path.startswith(_DPKG_STATUS_D):
        return not path.endswith(".md5sums")
    parts = path.split("/")
    if len(parts) < 3 or parts[-3] not in _SITE_DIRS:
        return False
    return (parts[-1] == "METADATA" and parts[-2].endswith(".dist-info")) or (
        parts[-1] == "PKG-INFO" and parts[-2].endswith(".egg-info")
    )


def contents_from_files(files: Mapping[str, bytes]) -> ImageContents:
    """The SBOM's view of a root filesystem, given its wanted files."""

    # step 1: Debian packages, from status and status.d/* (distroless style)
    debian: list[DebPackage] = []
    for path in sorted(files):
        if path == _DPKG_STATUS or path.startswith(_DPKG_STATUS_D):
            debian.extend(parse_dpkg_status(_text(files[path], path), path))

    # step 2: the distribution, /etc/os-release before /usr/lib/os-release
    os_release = None
    for path in _OS_RELEASE:
        if path in files:
            os_release = parse_os_release(_text(files[path], path))
            break

    # step 3: Python distributions, one component per name and version
    found: dict[tuple[str, str], PythonDist] = {}
    for path in sorted(files):
        if path == _DPKG_STATUS or path in _OS_RELEASE:
            continue
        if path.startswith(_DPKG_STATUS_D):
            continue
        dist = parse_dist_metadata(_text(files[path], path), path)
        key = (normalize_name(dist.name), dist.version)
        if key in found:
            known = found[key]
            dist = PythonDist(
                known.name,
                known.version,
                known.license_expression,
                known.license_name,
                known.locations + dist.locations,
            )
        found[key] = dist
    return ImageContents(tuple(found.values()), tuple(debian), os_release)


def _text(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SbomError(f"{path}: not UTF-8 text ({exc.reason})") from None


# --- reading a root filesystem or an OCI archive ----------------------------


def read_rootfs(root: Path) -> dict[str, bytes]:
    """The wanted files of an unpacked root filesystem.

    Symbolic links are not followed (an absolute link would leave the root:
    ``/etc/os-release`` usually links to ``/usr/lib/os-release``, which is
    read as itself).
    """
    if not root.is_dir():
        raise SbomError(f"--rootfs {root}: not a directory")
    files: dict[str, bytes] = {}
    for directory, dirs, names in os.walk(root):
        rel_dir = Path(directory).relative_to(root).as_posix()
        if rel_dir == ".":
            dirs[:] = [d for d in dirs if d not in _SKIP_TOP]
            rel_dir = ""
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = Path(directory, name)
            if is_wanted(rel) and not path.is_symlink() and path.is_file():
                files[rel] = path.read_bytes()
    return files


def read_oci_archive(archive: Path) -> tuple[str, dict[str, bytes]]:
    """The manifest digest and the wanted files of an OCI image archive.

    The archive is an OCI image layout in a tar file (``index.json``,
    ``blobs/sha256/...``), as ``buildah push IMAGE oci-archive:FILE`` writes.
    Layers are applied in order with their whiteouts (OCI image spec,
    "Representing Changes"); every blob read is checked against its digest.
    """
    try:
        with tarfile.open(archive) as tar:
            return _read_layout(tar, str(archive))
    except FileNotFoundError:
        raise SbomError(f"--oci {archive}: file not found") from None
    except (tarfile.TarError, OSError) as exc:
        raise SbomError(f"--oci {archive}: not a readable tar archive: {exc}") from None


def _read_layout(tar: tarfile.TarFile, origin: str) -> tuple[str, dict[str, bytes]]:
    index = _json_member(tar, "index.json", origin)
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or len(manifests) != 1:
        count = len(manifests) if isinstance(manifests, list) else 0
        raise SbomError(f"{origin}: index.json lists {count} manifests, expected 1")
    digest = str(manifests[0].get("digest", ""))
    check_digest(digest)
    manifest = json.loads(_blob(tar, digest, origin))
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list):
        raise SbomError(f"{origin}: manifest {digest} has no layers (an index?)")
    files: dict[str, bytes] = {}
    for layer in layers:
        _apply_layer(files, _blob(tar, str(layer.get("digest", "")), origin), origin)
    return digest, files


def _json_member(tar: tarfile.TarFile, name: str, origin: str) -> Any:
    for candidate in (name, f"./{name}"):
        try:
            member = tar.extractfile(candidate)
        except KeyError:
            continue
        if member is not None:
            try:
                return json.loads(member.read())
            except ValueError:
                raise SbomError(f"{origin}: {name} is not JSON") from None
    raise SbomError(f"{origin}: no {name} (not an OCI image layout)")


def _blob(tar: tarfile.TarFile, digest: str, origin: str) -> bytes:
    check_digest(digest)
    hexdigest = digest.partition(":")[2]
    for name in (f"blobs/sha256/{hexdigest}", f"./blobs/sha256/{hexdigest}"):
        try:
            member = tar.extractfile(name)
        except KeyError:
            continue
        if member is not None:
            data = member.read()
            if hashlib.sha256(data).hexdigest() != hexdigest:
                raise SbomError(f"{origin}: blob {digest} does not match its digest")
            return data
    raise SbomError(f"{origin}: blob {digest} is missing")


def _apply_layer(files: dict[str, bytes], blob: bytes, origin: str) -> None:
    """Apply one layer (tar, tar+gzip) to the files of the layers below it."""
    removed: list[str] = []
    opaque: list[str] = []
    added: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as layer:
            for member in layer:
                path = posixpath.normpath(member.name.lstrip("/")).removeprefix("./")
                directory, base = posixpath.split(path)
                if base == ".wh..wh..opq":
                    opaque.append(directory)
                elif base.startswith(".wh."):
                    removed.append(posixpath.join(directory, base[4:]))
                elif member.isfile() and is_wanted(path):
                    data = layer.extractfile(member)
                    if data is not None:
                        added[path] = data.read()
    except tarfile.TarError as exc:
        raise SbomError(
            f"{origin}: a layer is not a tar or tar+gzip stream ({exc}); "
            "zstd layers are not supported"
        ) from None

    # whiteouts hide what the layers below hold; the layer's own files stay
    for path in list(files):
        hidden = any(path == r or path.startswith(r + "/") for r in removed)
        if hidden or any(d == "" or path.startswith(d + "/") for d in opaque):
            del files[path]
    files.update(added)


def read_lock_file(path: Path) -> tuple[PythonDist, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SbomError(f"--lock {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SbomError(f"--lock {path}: cannot read: {exc}") from None
    return parse_lock(text, str(path))


_REQ_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*(?P<version>[^\s;\\]+)"
)
_HASH_RE = re.compile(r"--hash=sha256:([0-9a-fA-F]{64})")


def parse_lock(text: str, origin: str) -> tuple[PythonDist, ...]:
    """The pins of a pip-compile lock file, with hashes and ``# via`` parents.

    Every requirement must be pinned (``name==version``); ``-r``/``-c`` and
    other option lines are skipped.
    """
    dists: list[PythonDist] = []
    current: PythonDist | None = None
    in_via = False
    for number, line in _logical_lines(text):
        stripped = line.strip()
        if stripped.startswith("#"):
            comment = stripped[1:].strip()
            if current is None:
                continue
            if comment.startswith("via"):
                in_via = True
                current = _add_parent(current, comment[3:].strip())
            elif in_via and comment:
                current = _add_parent(current, comment)
            dists[-1] = current
            continue
        in_via = False
        if not stripped or stripped.startswith("-"):
            continue
        match = _REQ_RE.match(stripped)
        if match is None:
            raise SbomError(
                f"{origin} line {number}: not a pinned requirement 'name==version'"
            )
        hashes = tuple(h.lower() for h in _HASH_RE.findall(stripped))
        current = PythonDist(match["name"], match["version"], sha256=hashes)
        dists.append(current)
    return tuple(dists)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines with backslash continuations joined, numbered by their first line."""
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        pending.append(line)
        yield start, " ".join(pending)
        pending = []
    if pending:
        yield start, " ".join(pending)


def _add_parent(dist: PythonDist, text: str) -> PythonDist:
    if not text or text.startswith("-c "):
        return dist
    parent = "" if text.startswith("-r ") else normalize_name(text)
    if parent in dist.required_by:
        return dist
    return PythonDist(
        dist.name,
        dist.version,
        dist.license_expression,
        dist.license_name,
        dist.locations,
        dist.sha256,
        dist.required_by + (parent,),
    )


# --- the CycloneDX document --------------------------------------------------


@dataclass(frozen=True, slots=True)
class BomSource:
    """Where the components came from, recorded in metadata.properties."""

    kind: str
    detail: str = ""
    notes: tuple[str, ...] = field(default=())


def build_bom(
    top: TopComponent,
    contents: ImageContents,
    *,
    source: BomSource,
    timestamp: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The CycloneDX 1.6 document (a JSON-ready dict).

    The serial number is derived from the content, so that one input gives
    one document; the timestamp is ``SOURCE_DATE_EPOCH`` when set, else now.
    """
    distro = contents.os_release.distro if contents.os_release else None
    python = sorted(contents.python, key=lambda d: d.purl)
    debian = sorted(contents.debian, key=lambda p: deb_purl(p, distro))
    components = [_python_component(d) for d in python]
    components += [_deb_component(p, distro) for p in debian]
    if contents.os_release is not None:
        components.append(_os_component(contents.os_release))
    top_json = _top_component(top)
    dependencies = _dependencies(top, python, components)

    digest = hashlib.sha256(
        json.dumps([top_json, components], sort_keys=True).encode()
    ).hexdigest()
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"urn:natkit:sbom:{digest}")
    properties = [{"name": PROPERTY_PREFIX + "sbom:source", "value": source.kind}]
    if source.detail:
        properties.append(
            {"name": PROPERTY_PREFIX + "sbom:input", "value": source.detail}
        )
    properties += [
        {"name": PROPERTY_PREFIX + "sbom:note", "value": n} for n in source.notes
    ]
    return {
        "$schema": SCHEMA_URL,
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": serial.urn,
        "version": 1,
        "metadata": {
            "timestamp": _timestamp(timestamp),
            "tools": {
                "components": [
                    {"type": "application", "name": TOOL_NAME, "version": __version__}
                ]
            },
            "component": top_json,
            "properties": properties,
        },
        "components": components,
        "dependencies": dependencies,
    }


def _timestamp(moment: datetime.datetime | None) -> str:
    if moment is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if epoch.isdigit():
            moment = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        else:
            moment = datetime.datetime.now(datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _top_component(top: TopComponent) -> dict[str, Any]:
    component: dict[str, Any] = {
        "type": str(top.kind),
        "bom-ref": top.bom_ref,
        "name": top.name,
        "version": top.version,
    }
    if top.digest is not None:
        component["hashes"] = [
            {"alg": "SHA-256", "content": top.digest.partition(":")[2]}
        ]
        component["purl"] = oci_purl(top.name, top.digest)
    return component


def _python_component(dist: PythonDist) -> dict[str, Any]:
    component: dict[str, Any] = {
        "type": "library",
        "bom-ref": dist.purl,
        "name": dist.name,
        "version": dist.version,
        "purl": dist.purl,
    }
    if dist.license_expression:
        component["licenses"] = [{"expression": dist.license_expression}]
    elif dist.license_name:
        component["licenses"] = [{"license": {"name": dist.license_name}}]
    if dist.sha256:
        component["externalReferences"] = [
            {
                "type": "distribution",
                "url": f"https://pypi.org/simple/{normalize_name(dist.name)}/",
                "comment": "artifacts the lock file accepts, by SHA-256",
                "hashes": [{"alg": "SHA-256", "content": h} for h in dist.sha256],
            }
        ]
    if dist.locations:
        component["properties"] = [
            {"name": PROPERTY_PREFIX + "python:location", "value": "/" + loc}
            for loc in dist.locations
        ]
    return component


def _deb_component(package: DebPackage, distro: str | None) -> dict[str, Any]:
    purl = deb_purl(package, distro)
    component: dict[str, Any] = {
        "type": "library",
        "bom-ref": purl,
        "name": package.name,
        "version": package.version,
        "purl": purl,
    }
    properties = []
    if package.source and package.source != package.name:
        properties.append(
            {"name": PROPERTY_PREFIX + "dpkg:source", "value": package.source}
        )
    if package.source_version:
        properties.append(
            {
                "name": PROPERTY_PREFIX + "dpkg:source-version",
                "value": package.source_version,
            }
        )
    if properties:
        component["properties"] = properties
    return component


def _os_component(release: OsRelease) -> dict[str, Any]:
    component: dict[str, Any] = {
        "type": "operating-system",
        "bom-ref": f"os:{release.distro or release.id}",
        "name": release.id,
    }
    if release.version_id:
        component["version"] = release.version_id
    if release.pretty_name:
        component["description"] = release.pretty_name
    return component


def _dependencies(
    top: TopComponent, python: Iterable[PythonDist], components: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The top component depends on every component; lock pins by ``# via``."""
    python = list(python)
    refs = [str(c["bom-ref"]) for c in components]
    by_name = {normalize_name(d.name): d.purl for d in python}
    if not any(d.required_by for d in python):
        return [{"ref": top.bom_ref, "dependsOn": refs}] + [{"ref": r} for r in refs]

    # a lock file: the project needs its top-level pins, each pin its children
    children: dict[str, list[str]] = {ref: [] for ref in refs}
    direct = []
    for dist in python:
        for parent in dist.required_by:
            if parent == "":
                direct.append(dist.purl)
            elif parent in by_name:
                children[by_name[parent]].append(dist.purl)
            else:
                direct.append(dist.purl)
    direct += [r for r in refs if r not in set(by_name.values())]
    entries = [{"ref": top.bom_ref, "dependsOn": sorted(set(direct))}]
    for ref in refs:
        entry: dict[str, Any] = {"ref": ref}
        if children[ref]:
            entry["dependsOn"] = sorted(set(children[ref]))
        entries.append(entry)
    return entries


def validate_bom(bom: Mapping[str, Any]) -> None:
    """Check against the CycloneDX 1.6 JSON schema (offline), or SbomError.

    Needs cyclonedx-python-lib with its ``validation`` extra (dev.lock): it
    ships the schemas and resolves their references locally.
    """
    try:
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator
    except ImportError:
        raise SbomError(
            "schema validation needs cyclonedx-python-lib (requirements/dev.lock);"
            " pass --no-validate to skip it"
        ) from None
    validator = JsonStrictValidator(SchemaVersion.V1_6)
    error = validator.validate_str(json.dumps(bom))
    if error is not None:
        detail = getattr(error, "data", error)
        where = getattr(detail, "json_path", "$")
        message = getattr(detail, "message", str(detail))
        raise SbomError(f"not valid CycloneDX {SPEC_VERSION}: {where}: {message}")


def summary(bom: Mapping[str, Any]) -> str:
    """``27 Python, 92 Debian, 1 OS components``, for the command's last line."""
    python = debian = other = 0
    for component in bom.get("components", []):
        purl = str(component.get("purl", ""))
        if purl.startswith("pkg:pypi/"):
            python += 1
        elif purl.startswith("pkg:deb/"):
            debian += 1
        else:
            other += 1
    return f"{python} Python, {debian} Debian, {other} other components"


if __name__ == "__main__":  # pragma: no cover - the command's own entry point
    from natkit.cli.supply import sbom_command

    sbom_command(prog_name="python -m natkit.supply.sbom")
