"""The image hardening checker (deploy/hardening/check.py), rule by rule.

Each test builds a small fake root filesystem in a temporary directory that
passes every rule, breaks one thing, and expects the rule of
deploy/hardening/BENCHMARK.md that covers it to name the file. The trees are
owned by whoever runs the tests; ``load`` maps that owner to root, as the
image's layer records it.
"""

import base64
import hashlib
import importlib.util
import io
import json
import os
import sys
import tarfile
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


check = _load_module("natkit_hardening_check", REPO / "deploy/hardening/check.py")
oci = _load_module("natkit_image_oci", REPO / "deploy/image/oci.py")

UID = 10001
DATA = "/var/lib/natkit"
SITE = "/opt/natkit/lib/python3.11/site-packages"
# the marker alone, as cryptography's ssh.py holds it, is no key
KEY_MARKER = b'_SK_START = b"-----BEGIN OPENSSH PRIVATE KEY-----"\n'
PEM_KEY = (
    b"-----BEGIN PRIVATE KEY-----\n"
    + base64.encodebytes(bytes(range(48)))
    + b"-----END PRIVATE KEY-----\n"
)


def _config() -> dict[str, Any]:
    natkit = "/opt/natkit/bin/natkit"
    prefix = "org.opencontainers.image."
    return {
        "User": f"{UID}:{UID}",
        "Env": ["PATH=/opt/natkit/bin:/usr/bin:/bin", f"NATKIT_DATA_DIR={DATA}"],
        "Entrypoint": [natkit, "serve", "--data-dir", DATA],
        "ExposedPorts": {"3478/udp": {}, "3478/tcp": {}, "5349/tcp": {}},
        "Volumes": {DATA: {}},
        "Healthcheck": {
            "Test": ["CMD", natkit, "health"],
            "Interval": 30_000_000_000,
            "Timeout": 5_000_000_000,
            "Retries": 3,
        },
        "Labels": {
            prefix + "revision": "0123456789abcdef0123456789abcdef01234567",
            prefix + "version": "0.1.0",
            prefix + "created": "2026-12-03T12:00:00Z",
            prefix + "source": "https://example.org/natkit.git",
            prefix + "base.name": "debian:bookworm",
        },
    }


def _write(root: Path, path: str, data: bytes | str, mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data.encode() if isinstance(data, str) else data)
    target.chmod(mode)
    return target


def _record_line(root: Path, path: str) -> str:
    data = (root / path.lstrip("/")).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"{os.path.relpath(path, SITE)},sha256={digest.decode()},{len(data)}"


def _dist(root: Path, name: str, version: str, files: dict[str, str]) -> None:
    """A dist-info with METADATA and a RECORD of ``files`` (relative paths)."""
    info = f"{SITE}/{name}-{version}.dist-info"
    for relative, text in files.items():
        _write(root, f"{SITE}/{relative}", text)
    _write(root, f"{info}/METADATA", f"Name: {name}\nVersion: {version}\n")
    lines = [_record_line(root, f"{SITE}/{relative}") for relative in files]
    lines += [
        _record_line(root, f"{info}/METADATA"),
        f"{name}-{version}.dist-info/RECORD,,",
    ]
    _write(root, f"{info}/RECORD", "\n".join(lines) + "\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A tree that passes every rule."""
    tree = tmp_path / "rootfs"
    for directory in ("bin", "usr/bin", "dev", "proc", "sys", "var/lib/dpkg"):
        (tree / directory).mkdir(parents=True)
    (tree / "tmp").mkdir()
    (tree / "tmp").chmod(0o1777)
    (tree / DATA.lstrip("/")).mkdir(parents=True)
    (tree / DATA.lstrip("/")).chmod(0o700)
    _write(tree, "/usr/bin/python3.11", b"\x7fELF fake interpreter", 0o755)
    _write(
        tree,
        "/etc/passwd",
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"natkit:x:{UID}:{UID}:natkit:{DATA}:/usr/sbin/nologin\n",
    )
    _write(tree, "/usr/lib/os-release", 'ID=debian\nVERSION_ID="12"\n')
    (tree / "etc/os-release").symlink_to("../usr/lib/os-release")
    _write(
        tree,
        "/var/lib/dpkg/status",
        "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n"
        "Description: C library\n continuation line\n",
    )
    bin_dir = tree / "opt/natkit/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to("/usr/bin/python3.11")
    _write(tree, "/opt/natkit/bin/natkit", "#!/opt/natkit/bin/python\n", 0o755)
    _write(tree, "/usr/lib/python3/ssh.py", KEY_MARKER)
    _dist(tree, "natkit", "0.1.0", {"natkit/__init__.py": "VERSION = 1\n"})
    _dist(tree, "click", "8.1.0", {"click/__init__.py": "\n"})
    return tree


def _policy() -> Any:
    return check.Policy(
        debs={"libc6": "2.36-9"}, wheels={"click": "8.1.0"}, version="0.1.0"
    )


def _as_image(entries: dict[str, Any], config: dict[str, Any] | None = None) -> Any:
    return check.Image(entries, _config() if config is None else config)


def load(tree: Path, config: dict[str, Any] | None = None) -> Any:
    """The tree as the image: the test user's files become root's, except the
    data directory, which belongs to the image's user."""
    me = os.geteuid(), os.getegid()
    entries = {}
    for path, entry in check.load_rootfs(tree).items():
        if (entry.uid, entry.gid) == me:
            owner = (UID, UID) if path == DATA else (0, 0)
            entry = replace(entry, uid=owner[0], gid=owner[1])
        entries[path] = entry
    return _as_image(entries, config)


def findings(image: Any) -> set[tuple[str, str]]:
    return {(f.rule, f.where) for f in check.run_rules(image, _policy())}


def test_good_tree_passes_every_rule(root: Path) -> None:
    assert check.run_rules(load(root), _policy()) == []


def test_every_rule_is_written_in_the_benchmark() -> None:
    text = (REPO / "deploy/hardening/BENCHMARK.md").read_text()
    for rule in check.RULES:
        assert f"### {rule.id}:" in text, rule.id
    assert len({rule.id for rule in check.RULES}) == len(check.RULES)


# --- NK-USER ---------------------------------------------------------------


@pytest.mark.parametrize("user", ["", "natkit", "0:0", "10001:0", "10001"])
def test_user_must_be_numeric_and_not_root(root: Path, user: str) -> None:
    config = _config() | {"User": user}
    assert ("NK-USER", "config.User") in findings(load(root, config))


def test_user_must_be_in_passwd(root: Path) -> None:
    _write(root, "/etc/passwd", "root:x:0:0:root:/root:/usr/sbin/nologin\n")
    assert findings(load(root)) == {("NK-USER", "/etc/passwd")}


# --- NK-SHELL, NK-PKGMGR, NK-BUILDTOOLS, NK-SHEBANG ------------------------


def test_shell_symlink_and_shell_script(root: Path) -> None:
    (root / "bin/sh").symlink_to("dash")
    _write(root, "/usr/share/hook", "#!/bin/sh\necho\n", 0o755)
    assert findings(load(root)) == {
        ("NK-SHELL", "/bin/sh"),
        ("NK-SHELL", "/usr/share/hook"),
    }


def test_package_manager_binary_and_state(root: Path) -> None:
    _write(root, "/usr/bin/dpkg", b"\x7fELF", 0o755)
    _write(root, "/var/lib/dpkg/info/libc6.list", "/lib\n")
    _write(root, "/etc/apt/sources.list", "deb x y\n")
    assert findings(load(root)) == {
        ("NK-PKGMGR", "/usr/bin/dpkg"),
        ("NK-PKGMGR", "/var/lib/dpkg/info"),
        ("NK-PKGMGR", "/var/lib/dpkg/info/libc6.list"),
        ("NK-PKGMGR", "/etc/apt"),
        ("NK-PKGMGR", "/etc/apt/sources.list"),
    }


def test_pip_in_site_packages_is_a_package_manager(root: Path) -> None:
    _dist(root, "pip", "23.0", {"pip/__init__.py": "\n"})
    result = findings(load(root))
    assert ("NK-PKGMGR", f"{SITE}/pip") in result
    assert ("NK-PKGMGR", f"{SITE}/pip-23.0.dist-info") in result


def test_compiler_and_build_backend(root: Path) -> None:
    _write(root, "/usr/bin/x86_64-linux-gnu-gcc-12", b"\x7fELF", 0o755)
    _dist(root, "setuptools", "68.0", {"setuptools/__init__.py": "\n"})
    result = findings(load(root))
    assert ("NK-BUILDTOOLS", "/usr/bin/x86_64-linux-gnu-gcc-12") in result
    assert ("NK-BUILDTOOLS", f"{SITE}/setuptools") in result


def test_program_on_path_needs_its_interpreter(root: Path) -> None:
    _write(root, "/opt/natkit/bin/tool", "#!/usr/bin/env python3\n", 0o755)
    assert findings(load(root)) == {("NK-SHEBANG", "/opt/natkit/bin/tool")}


# --- NK-SETID, NK-FCAPS, NK-SPECIAL ----------------------------------------


def test_setuid_and_setgid_files(root: Path) -> None:
    _write(root, "/usr/bin/su", b"\x7fELF", 0o4755)
    _write(root, "/usr/bin/wall", b"\x7fELF", 0o2755)
    assert findings(load(root)) == {
        ("NK-SETID", "/usr/bin/su"),
        ("NK-SETID", "/usr/bin/wall"),
    }


def test_file_capabilities(root: Path) -> None:
    image = load(root)
    entries = dict(image.entries)
    path = "/usr/bin/python3.11"
    entries[path] = replace(entries[path], capabilities=True)
    assert findings(_as_image(entries)) == {("NK-FCAPS", path)}


def test_special_files(root: Path) -> None:
    os.mkfifo(root / "dev/initctl")
    assert findings(load(root)) == {("NK-SPECIAL", "/dev/initctl")}


# --- NK-READONLY, NK-DATADIR -----------------------------------------------


def test_world_writable_directory(root: Path) -> None:
    (root / "opt").chmod(0o777)
    assert findings(load(root)) == {("NK-READONLY", "/opt")}


def test_files_outside_data_dir_belong_to_root(root: Path) -> None:
    image = load(root)
    entries = dict(image.entries)
    entries["/opt/natkit"] = replace(entries["/opt/natkit"], uid=UID, gid=UID)
    assert findings(_as_image(entries)) == {("NK-READONLY", "/opt/natkit")}


def test_tmp_needs_the_sticky_bit(root: Path) -> None:
    (root / "tmp").chmod(0o777)
    assert findings(load(root)) == {("NK-READONLY", "/tmp")}


def test_data_dir_must_be_private_empty_and_a_volume(root: Path) -> None:
    (root / DATA.lstrip("/")).chmod(0o755)
    _write(root, f"{DATA}/turn_secret", "left over\n")
    _write(root, "/tmp/pip-build/setup.py", "\n")
    config = _config() | {"Volumes": {}}
    assert findings(load(root, config)) == {
        ("NK-DATADIR", DATA),
        ("NK-DATADIR", f"{DATA}/turn_secret"),
        ("NK-DATADIR", "/tmp/pip-build"),
        ("NK-DATADIR", "/tmp/pip-build/setup.py"),
        ("NK-DATADIR", "config.Volumes"),
    }


def test_data_dir_must_belong_to_the_image_user(root: Path) -> None:
    image = load(root)
    entries = dict(image.entries)
    entries[DATA] = replace(entries[DATA], uid=0, gid=0)
    assert findings(_as_image(entries)) == {("NK-DATADIR", DATA)}


# --- NK-SECRETS ------------------------------------------------------------


def test_private_key_vcs_and_credentials(root: Path) -> None:
    _write(root, "/etc/natkit/tls.key", PEM_KEY)
    _write(root, "/opt/natkit/.git/HEAD", "ref: refs/heads/main\n")
    _write(root, "/root/.pypirc", "[pypi]\n")
    _write(root, "/root/.cache/pip/x", "\n")
    result = findings(load(root))
    assert {
        ("NK-SECRETS", "/etc/natkit/tls.key"),
        ("NK-SECRETS", "/opt/natkit/.git"),
        ("NK-SECRETS", "/root/.pypirc"),
        ("NK-SECRETS", "/root/.cache"),
        ("NK-SECRETS", "/root/.cache/pip"),
    } <= result
    assert ("NK-SECRETS", "/usr/lib/python3/ssh.py") not in result


def test_secret_in_environment(root: Path) -> None:
    config = _config()
    config["Env"] = [*config["Env"], "NATKIT_ADMIN_TOKEN=hunter2", "NO_TOKEN="]
    assert findings(load(root, config)) == {
        ("NK-SECRETS", "config.Env NATKIT_ADMIN_TOKEN")
    }


# --- NK-PACKAGES, NK-PYPACKAGES, NK-RECORD ---------------------------------


def test_debian_packages_must_be_the_locked_set(root: Path) -> None:
    _write(
        root,
        "/var/lib/dpkg/status",
        "Package: libc6\nStatus: install ok installed\nVersion: 2.36-8\n\n"
        "Package: bash\nStatus: install ok installed\nVersion: 5.2\n",
    )
    reasons = {f.why for f in check.run_rules(load(root), _policy())}
    assert reasons == {
        "libc6: version 2.36-8, locked 2.36-9",
        "bash: not in the allow-list",
    }


def test_debian_status_is_required(root: Path) -> None:
    (root / "var/lib/dpkg/status").unlink()
    assert findings(load(root)) == {("NK-PACKAGES", "/var/lib/dpkg/status")}


def test_python_packages_must_be_the_locked_set(root: Path) -> None:
    _dist(root, "requests", "2.0", {"requests/__init__.py": "\n"})
    policy = check.Policy(
        debs={"libc6": "2.36-9"}, wheels={"click": "8.2.0"}, version="0.1.0"
    )
    reasons = {(f.rule, f.why) for f in check.run_rules(load(root), policy)}
    assert reasons == {
        ("NK-PYPACKAGES", "requests 2.0: not locked"),
        ("NK-PYPACKAGES", "click 8.1.0, locked 8.2.0"),
    }


def test_python_files_must_match_record(root: Path) -> None:
    _write(root, f"{SITE}/natkit/__init__.py", "VERSION = 2\n")
    _write(root, f"{SITE}/natkit/implant.py", "\n")
    assert findings(load(root)) == {
        ("NK-RECORD", f"{SITE}/natkit/__init__.py"),
        ("NK-RECORD", f"{SITE}/natkit/implant.py"),
    }


# --- NK-ENTRYPOINT, NK-HEALTH, NK-PORTS, NK-LABELS, NK-OSRELEASE -----------


@pytest.mark.parametrize(
    "entrypoint",
    [
        ["/bin/sh", "-c", "natkit serve"],
        ["natkit", "serve", "--data-dir", DATA],
        ["/opt/natkit/bin/natkit", "serve"],
        ["/opt/natkit/bin/missing", "serve", "--data-dir", DATA],
        "natkit serve",
    ],
)
def test_entrypoint(root: Path, entrypoint: object) -> None:
    config = _config() | {"Entrypoint": entrypoint}
    assert findings(load(root, config)) == {("NK-ENTRYPOINT", "config.Entrypoint")}


def test_healthcheck_required(root: Path) -> None:
    config = _config()
    del config["Healthcheck"]
    assert findings(load(root, config)) == {("NK-HEALTH", "config.Healthcheck")}


def test_healthcheck_shell_form_refused(root: Path) -> None:
    config = _config()
    config["Healthcheck"] = config["Healthcheck"] | {
        "Test": ["CMD-SHELL", "natkit health"]
    }
    assert findings(load(root, config)) == {("NK-HEALTH", "config.Healthcheck")}


def test_privileged_port(root: Path) -> None:
    config = _config() | {"ExposedPorts": {"443/tcp": {}, "3478/udp": {}}}
    assert findings(load(root, config)) == {("NK-PORTS", "config.ExposedPorts 443/tcp")}


def test_labels(root: Path) -> None:
    config = _config()
    prefix = "org.opencontainers.image."
    labels = dict(config["Labels"])
    del labels[prefix + "source"]
    labels[prefix + "revision"] = "main"
    labels[prefix + "created"] = "yesterday"
    labels[prefix + "version"] = "0.0.9"
    config["Labels"] = labels
    assert findings(load(root, config)) == {
        ("NK-LABELS", f"config.Labels {prefix}source"),
        ("NK-LABELS", f"config.Labels {prefix}revision"),
        ("NK-LABELS", f"config.Labels {prefix}created"),
        ("NK-LABELS", f"config.Labels {prefix}version"),
    }


def test_os_release_required(root: Path) -> None:
    (root / "usr/lib/os-release").unlink()
    assert findings(load(root)) == {("NK-OSRELEASE", "/etc/os-release")}


# --- the OCI archive: written by deploy/image/oci.py, read by the checker ---


def _archive(tree: Path, out: Path) -> str:
    digest: str = oci.write_archive(
        tree,
        out,
        config=_config(),
        annotations={},
        ref_name="0.1.0",
        created="2026-12-03T12:00:00Z",
        epoch=1_700_000_000,
    )
    return digest


def test_archive_is_reproducible_and_readable(root: Path, tmp_path: Path) -> None:
    first = _archive(root, tmp_path / "a.oci.tar")
    second = _archive(root, tmp_path / "b.oci.tar")
    assert first == second
    assert (tmp_path / "a.oci.tar").read_bytes() == (
        tmp_path / "b.oci.tar"
    ).read_bytes()

    image = check.load_archive(tmp_path / "a.oci.tar")
    on_disk = load(root).entries
    assert set(image.entries) == set(on_disk)
    assert image.entries[f"{SITE}/natkit/__init__.py"].data == b"VERSION = 1\n"
    assert image.entries["/etc/os-release"].target == "../usr/lib/os-release"
    assert image.config["User"] == f"{UID}:{UID}"


def _layer(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_layers_apply_whiteouts() -> None:
    entries = {"/": check.Entry("/", "dir", 0o755)}
    check.apply_layer(entries, _layer(("usr/bin/sh", b"x"), ("etc/a/b", b"y")))
    check.apply_layer(
        entries, _layer(("usr/bin/.wh.sh", b""), ("etc/a/.wh..wh..opq", b""))
    )
    assert "/usr/bin/sh" not in entries
    assert "/etc/a/b" not in entries


def test_command_line_names_rule_and_file(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(root, "/usr/bin/su", b"\x7fELF", 0o4755)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": _config()}))
    deb_lock = tmp_path / "packages.lock"
    deb_lock.write_text("libc6 2.36-9 amd64 00 runtime\n")
    wheel_lock = tmp_path / "runtime.lock"
    wheel_lock.write_text("click==8.1.0 \\\n    --hash=sha256:00\n")
    args = ["--rootfs", str(root), "--config", str(config)]
    args += ["--deb-lock", str(deb_lock), "--wheel-lock", str(wheel_lock)]
    code = check.main(args)
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL NK-SETID /usr/bin/su: setuid (mode 4755)" in out
    if os.geteuid() != 0:
        assert "NK-READONLY" in out  # the tree is not root's on disk


def test_command_line_bad_input(tmp_path: Path) -> None:
    assert check.main([str(tmp_path / "missing.oci.tar")]) == 2
