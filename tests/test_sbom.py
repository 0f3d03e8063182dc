"""The CycloneDX 1.6 SBOM: dpkg status, Python metadata, lock file, OCI archive.

Every document built here is checked against the CycloneDX 1.6 schema that
cyclonedx-python-lib ships (offline).
"""

import datetime
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from natkit.cli.supply import sbom_command
from natkit.supply import sbom

ROOT = Path(__file__).parent.parent
LOCK = ROOT / "requirements" / "runtime.lock"
DIGEST = "sha256:" + hashlib.sha256(b"natkit test image").hexdigest()
MOMENT = datetime.datetime(2099, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)

STATUS = """\
Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u4
Source: glibc
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.

Package: bsdutils
Status: install ok installed
Architecture: amd64
Source: util-linux (2.38.1-5+deb12u3)
Version: 1:2.38.1-5+deb12u3

Package: removed-pkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1
"""

OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
"""

METADATA = """\
Metadata-Version: 2.4
Name: {name}
Version: {version}
License-Expression: MIT
Summary: test

Long description that is not a header.
"""


def metadata(name: str, version: str) -> bytes:
    return METADATA.format(name=name, version=version).encode()


def validate(document: dict[str, Any]) -> None:
    pytest.importorskip("cyclonedx.validation.json")
    sbom.validate_bom(document)


# --- dpkg status and os-release ---------------------------------------------


def test_dpkg_status_installed_packages() -> None:
    packages = sbom.parse_dpkg_status(STATUS)
    assert [p.name for p in packages] == ["libc6", "bsdutils", "tzdata"]
    libc, bsdutils, tzdata = packages
    assert libc == sbom.DebPackage("libc6", "2.36-9+deb12u4", "amd64", "glibc")
    # Source: NAME (VERSION) when the source version differs
    assert bsdutils.source == "util-linux"
    assert bsdutils.source_version == "2.38.1-5+deb12u3"
    assert tzdata.architecture == "all" and tzdata.source is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Package: x\nno colon here\n", "line 2: expected 'Field: value'"),
        (" continuation first\n", "line 1: continuation without field"),
        ("Package: x\nArchitecture: amd64\n", "package x has no Version"),
        ("Version: 1\n", "without Package"),
    ],
)
def test_dpkg_status_errors(text: str, message: str) -> None:
    with pytest.raises(sbom.SbomError, match=message):
        sbom.parse_dpkg_status(text)


def test_os_release_distro() -> None:
    release = sbom.parse_os_release(OS_RELEASE)
    assert release is not None
    assert release.distro == "debian-12"
    assert release.pretty_name == "Debian GNU/Linux 12 (bookworm)"
    assert sbom.parse_os_release("NAME=x\n") is None


# --- package URLs ----------------------------------------------------------------


def test_purls_by_example() -> None:
    libc = sbom.DebPackage("libc6", "2.36-9+deb12u4", "amd64")
    assert (
        sbom.deb_purl(libc, "debian-12")
        == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
    )
    assert sbom.pypi_purl("Typing_Extensions", "4.16.0") == (
        "pkg:pypi/typing-extensions@4.16.0"
    )
    assert sbom.oci_purl("natkit", DIGEST) == f"pkg:oci/natkit@{DIGEST}"


@pytest.mark.parametrize(
    ("name", "version", "arch"),
    [
        ("libc6", "2.36-9+deb12u4", "amd64"),
        ("bsdutils", "1:2.38.1-5+deb12u3", "amd64"),
        ("g++-12", "12.2.0-14~test", "amd64"),
        ("tzdata", "2024a-0+deb12u1", "all"),
    ],
)
def test_deb_purls_match_packageurl_python(name: str, version: str, arch: str) -> None:
    packageurl = pytest.importorskip("packageurl")
    expected = packageurl.PackageURL(
        type="deb",
        namespace="debian",
        name=name,
        version=version,
        qualifiers={"arch": arch, "distro": "debian-12"},
    ).to_string()
    assert sbom.deb_purl(sbom.DebPackage(name, version, arch), "debian-12") == expected


@pytest.mark.parametrize(
    ("name", "version"),
    [("Typing_Extensions", "4.16.0"), ("zope.interface", "7.0"), ("x", "1.0+local")],
)
def test_pypi_purls_match_packageurl_python(name: str, version: str) -> None:
    packageurl = pytest.importorskip("packageurl")
    expected = packageurl.PackageURL(type="pypi", name=name, version=version)
    assert sbom.pypi_purl(name, version) == expected.to_string()


# --- the lock file ----------------------------------------------------------------


def test_lock_file_pins_hashes_and_graph() -> None:
    pins = {sbom.normalize_name(d.name): d for d in sbom.read_lock_file(LOCK)}
    assert {"click", "pydantic", "cryptography"} <= set(pins)
    for dist in pins.values():
        assert dist.sha256, dist.name
        assert all(len(h) == 64 for h in dist.sha256)
        assert dist.required_by, dist.name
    # "# via -r requirements/runtime.in": a top-level requirement
    assert "" in pins["click"].required_by
    assert "pydantic" in pins["annotated-types"].required_by


def test_lock_parser_joins_continuations_and_reads_via_blocks() -> None:
    text = (
        "# header comment\n"
        "--index-url https://example.invalid/simple\n"
        "alpha==1.0 \\\n"
        "    --hash=sha256:" + "a" * 64 + " \\\n"
        "    --hash=sha256:" + "B" * 64 + "\n"
        "    # via\n"
        "    #   -c requirements/runtime.lock\n"
        "    #   -r requirements/dev.in\n"
        "    #   Beta_Pkg\n"
        'uvloop==0.23.0 ; sys_platform != "win32" \\\n'
        "    --hash=sha256:" + "c" * 64 + "\n"
        "    # via beta-pkg\n"
    )
    alpha, uv = sbom.parse_lock(text, "test.lock")
    assert (alpha.name, alpha.version) == ("alpha", "1.0")
    assert alpha.sha256 == ("a" * 64, "b" * 64)
    assert alpha.required_by == ("", "beta-pkg")
    assert (uv.version, uv.required_by) == ("0.23.0", ("beta-pkg",))


def test_lock_parser_refuses_unpinned_lines() -> None:
    with pytest.raises(sbom.SbomError, match="test.lock line 2: not a pinned"):
        sbom.parse_lock("a==1\nb>=2\n", "test.lock")


def test_lock_bom_is_valid_and_has_the_graph() -> None:
    pins = sbom.read_lock_file(LOCK)
    top = sbom.TopComponent(sbom.TopKind.APPLICATION, "natkit", "0.1.0")
    source = sbom.BomSource("lock file", str(LOCK))
    document = sbom.build_bom(
        top, sbom.ImageContents(python=pins), source=source, timestamp=MOMENT
    )
    validate(document)
    assert document["specVersion"] == "1.6"
    assert document["metadata"]["timestamp"] == "2099-01-02T03:04:05Z"
    refs = {d["ref"]: d.get("dependsOn", []) for d in document["dependencies"]}
    assert "pkg:pypi/click@" in " ".join(refs["natkit@0.1.0"])
    pydantic = next(r for r in refs if r.startswith("pkg:pypi/pydantic@"))
    assert any(d.startswith("pkg:pypi/annotated-types@") for d in refs[pydantic])
    component = document["components"][0]
    assert component["externalReferences"][0]["hashes"][0]["alg"] == "SHA-256"


def test_lock_components_agree_with_cyclonedx_py(tmp_path: Path) -> None:
    """cyclonedx-py (the reference tool) reads the same names and versions."""
    tool = shutil.which("cyclonedx-py", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.skip("cyclonedx-py is not installed (requirements/dev.lock)")
    out = tmp_path / "ref.json"
    subprocess.run(
        [tool, "requirements", "--sv", "1.6", "-o", str(out), str(LOCK)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    reference = {c["purl"] for c in json.loads(out.read_text())["components"]}
    ours = {d.purl for d in sbom.read_lock_file(LOCK)}
    assert ours == reference


# --- an image root filesystem -------------------------------------------------


def make_rootfs(root: Path) -> None:
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(OS_RELEASE)
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    site = root / "opt/natkit/venv/lib/python3.11/site-packages"
    for name, version in (("natkit", "0.1.0"), ("click", "8.5.1")):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_bytes(metadata(name, version))
    egg = root / "usr/lib/python3/dist-packages/six-1.16.0.egg-info"
    egg.mkdir(parents=True)
    (egg / "PKG-INFO").write_bytes(metadata("six", "1.16.0"))
    # not a package: a METADATA file outside site-packages is ignored
    (root / "opt/METADATA").write_text("Name: nope\n")


def image_bom(root: Path) -> dict[str, Any]:
    contents = sbom.contents_from_files(sbom.read_rootfs(root))
    return sbom.build_bom(
        sbom.TopComponent.image(DIGEST),
        contents,
        source=sbom.BomSource("image root filesystem", str(root)),
        timestamp=MOMENT,
    )


def test_rootfs_bom(tmp_path: Path) -> None:
    make_rootfs(tmp_path)
    document = image_bom(tmp_path)
    validate(document)
    top = document["metadata"]["component"]
    assert top["type"] == "container"
    assert top["purl"] == f"pkg:oci/natkit@{DIGEST}"
    assert top["hashes"] == [{"alg": "SHA-256", "content": DIGEST[7:]}]
    purls = sorted(c.get("purl", c["bom-ref"]) for c in document["components"])
    assert purls == [
        "os:debian-12",
        "pkg:deb/debian/bsdutils@1:2.38.1-5%2Bdeb12u3?arch=amd64&distro=debian-12",
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12",
        "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=debian-12",
        "pkg:pypi/click@8.5.1",
        "pkg:pypi/natkit@0.1.0",
        "pkg:pypi/six@1.16.0",
    ]
    libc = next(c for c in document["components"] if c["name"] == "libc6")
    assert {"name": "natkit:dpkg:source", "value": "glibc"} in libc["properties"]
    click_ = next(c for c in document["components"] if c["name"] == "click")
    assert click_["licenses"] == [{"expression": "MIT"}]
    # the container depends on everything in it
    deps = {d["ref"]: d.get("dependsOn", []) for d in document["dependencies"]}
    assert len(deps[top["bom-ref"]]) == len(document["components"])


def test_same_input_same_document(tmp_path: Path) -> None:
    make_rootfs(tmp_path)
    assert image_bom(tmp_path) == image_bom(tmp_path)


def test_invalid_document_is_refused() -> None:
    pytest.importorskip("cyclonedx.validation.json")
    top = sbom.TopComponent.image(DIGEST)
    document = sbom.build_bom(
        top, sbom.ImageContents(), source=sbom.BomSource("x"), timestamp=MOMENT
    )
    document["components"] = [{"type": "bogus", "name": "x"}]
    with pytest.raises(sbom.SbomError, match="not valid CycloneDX 1.6"):
        sbom.validate_bom(document)


def test_bad_digest() -> None:
    with pytest.raises(sbom.SbomError, match="expected sha256:<64 hex digits>"):
        sbom.TopComponent.image("sha256:abc")


# --- an OCI image archive -----------------------------------------------------


def layer(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def blob_entry(blobs: dict[str, bytes], data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest


def make_oci(path: Path, *, corrupt: bool = False) -> str:
    """A two-layer OCI archive; the second layer removes a distribution."""
    site = "opt/natkit/venv/lib/python3.11/site-packages"
    blobs: dict[str, bytes] = {}
    base = layer(
        {
            "var/lib/dpkg/status": STATUS.encode(),
            "etc/os-release": OS_RELEASE.encode(),
            f"{site}/old-1.0.dist-info/METADATA": metadata("old", "1.0"),
            f"{site}/click-8.5.1.dist-info/METADATA": metadata("click", "8.5.1"),
        }
    )
    top = layer(
        {
            f"{site}/.wh.old-1.0.dist-info": b"",
            f"{site}/natkit-0.1.0.dist-info/METADATA": metadata("natkit", "0.1.0"),
        }
    )
    config = blob_entry(blobs, b"{}")
    layers = [blob_entry(blobs, base), blob_entry(blobs, top)]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": config, "size": 2},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": d,
                    "size": len(blobs[d]),
                }
                for d in layers
            ],
        }
    ).encode()
    digest = blob_entry(blobs, manifest)
    if corrupt:
        blobs[layers[1]] = layer({"x": b"tampered"})
    index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": digest}]})
    with tarfile.open(path, "w") as tar:
        for name, data in [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
                           ("index.json", index.encode())] + [
            (f"blobs/sha256/{d[7:]}", b) for d, b in blobs.items()
        ]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return digest


def test_oci_archive_layers_and_whiteouts(tmp_path: Path) -> None:
    archive = tmp_path / "natkit.oci.tar"
    digest = make_oci(archive)
    found, files = sbom.read_oci_archive(archive)
    assert found == digest
    contents = sbom.contents_from_files(files)
    assert sorted(d.name for d in contents.python) == ["click", "natkit"]
    assert len(contents.debian) == 3
    assert contents.os_release is not None


def test_oci_archive_blob_must_match_its_digest(tmp_path: Path) -> None:
    archive = tmp_path / "natkit.oci.tar"
    make_oci(archive, corrupt=True)
    with pytest.raises(sbom.SbomError, match="does not match its digest"):
        sbom.read_oci_archive(archive)


def test_oci_archive_not_a_layout(tmp_path: Path) -> None:
    archive = tmp_path / "x.tar"
    with tarfile.open(archive, "w"):
        pass
    with pytest.raises(sbom.SbomError, match="no index.json"):
        sbom.read_oci_archive(archive)


# --- the command -------------------------------------------------------------------


def run(*args: str) -> Result:
    return CliRunner().invoke(
        sbom_command, list(args), prog_name="python -m natkit.supply.sbom"
    )


def test_command_lock_mode(tmp_path: Path) -> None:
    pytest.importorskip("cyclonedx.validation.json")
    out = tmp_path / "dist" / "sbom-lock.cdx.json"
    result = run("--lock", str(LOCK), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "valid CycloneDX 1.6" in result.stderr
    document = json.loads(out.read_text())
    assert document["metadata"]["component"]["type"] == "application"


def test_command_oci_mode(tmp_path: Path) -> None:
    pytest.importorskip("cyclonedx.validation.json")
    archive = tmp_path / "natkit.oci.tar"
    digest = make_oci(archive)
    result = run("--oci", str(archive))
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["metadata"]["component"]["version"] == digest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--rootfs", "."), "--rootfs needs --digest"),
        (("--rootfs", ".", "--lock", "x"), "give one of"),
        (("--lock", "missing.lock"), "--lock missing.lock: file not found"),
        (("--lock", str(LOCK), "--digest", "sha256:1"), "expected sha256:<64"),
        (("--rootfs", "missing-dir", "--digest", DIGEST), "not a directory"),
    ],
)
def test_command_bad_input_is_one_line(args: tuple[str, ...], message: str) -> None:
    result = run(*args, "--no-validate")
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr
