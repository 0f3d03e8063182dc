"""Check a natkit container image against deploy/hardening/BENCHMARK.md.

Reads the OCI archive that ``make image`` writes (the layers exactly as a
runtime unpacks them, and the image config), or a root filesystem directory
plus a config JSON file, and runs every rule of the benchmark. Each failure is
one line: the rule, the path (or config key) and why. Exit status 0 when every
rule passes, 1 when one fails, 2 on bad input.

    python3 deploy/hardening/check.py dist/natkit-0.1.0.oci.tar
    python3 deploy/hardening/check.py --rootfs build/image/rootfs --config c.json
"""

import argparse
import base64
import csv
import gzip
import hashlib
import io
import json
import os
import re
import stat
import sys
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_DEB_LOCK = REPO / "deploy/image/packages.lock"
DEFAULT_PY_LOCK = REPO / "requirements/runtime.lock"

SHELLS = frozenset(
    "sh bash dash ash zsh ksh ksh93 mksh pdksh csh tcsh fish busybox rbash "
    "toybox".split()
)
PACKAGE_MANAGERS = frozenset(
    "apt apt-get apt-cache apt-key apt-config apt-mark aptitude dpkg dpkg-deb "
    "dpkg-query dpkg-divert dpkg-split dpkg-trigger dpkg-statoverride "
    "dpkg-maintscript-helper update-alternatives rpm yum dnf microdnf apk "
    "pip pip3 pip3.11 easy_install conda mamba".split()
)
PACKAGE_MANAGER_DIRS = ("/etc/apt", "/var/lib/apt", "/var/cache/apt", "/usr/lib/apt")
COMPILER = re.compile(
    r"^(x86_64-linux-gnu-)?(cc|c\+\+|gcc|g\+\+|cpp|clang|clang\+\+|ld|ld\.bfd|"
    r"ld\.gold|as|tcc|make|cmake|ninja|rustc|cargo|go|javac)(-[0-9.]+)?$"
)
BUILD_DISTRIBUTIONS = frozenset(
    {"pip", "setuptools", "wheel", "hatchling", "build", "flit_core", "poetry_core"}
)
PATH_DIRS = ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin")
SECRET_NAMES = frozenset(
    "id_rsa id_dsa id_ecdsa id_ed25519 .netrc .pypirc .npmrc .git-credentials "
    ".dockercfg .pgpass .htpasswd".split()
)
SECRET_SUFFIXES = (".aws/credentials", ".docker/config.json", ".ssh/authorized_keys")
VCS_DIRS = frozenset({".git", ".svn", ".hg"})
# a whole PEM block: header, optional RFC 1421 headers, base64 body, footer
PRIVATE_KEY = re.compile(
    rb"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----\r?\n"
    rb"(?:[A-Za-z-]+: [^\n]*\n)*\s*[A-Za-z0-9+/=\s]{40,}"
    rb"-----END \1PRIVATE KEY-----"
)
SECRET_ENV = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE", re.I)
REQUIRED_LABELS = tuple(
    "org.opencontainers.image." + name
    for name in ("revision", "version", "created", "source", "base.name")
)
LINK_LIMIT = 40


# --- the image as the checker sees it ---------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of the image's root filesystem."""

    path: str  # absolute, normalised: "/usr/bin/python3.11"
    kind: str  # file, dir, symlink, hardlink, char, block, fifo, socket
    mode: int = 0o644  # permission bits with setuid, setgid and sticky
    uid: int = 0
    gid: int = 0
    target: str = ""  # symlink or hardlink target
    capabilities: bool = False  # has a security.capability extended attribute
    data: bytes = b""  # regular files: the content


@dataclass(frozen=True, slots=True)
class Image:
    """The root filesystem by path, and the ``config`` object of the image
    config (User, Env, Entrypoint, Labels, Healthcheck...)."""

    entries: Mapping[str, Entry]
    config: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Policy:
    """What the image must match: the locked packages and the data directory."""

    debs: Mapping[str, str]  # Debian package -> version (runtime role)
    wheels: Mapping[str, str]  # Python distribution (normalised) -> version
    data_dir: str = "/var/lib/natkit"
    tmp_dir: str = "/tmp"
    app_name: str = "natkit"
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    where: str  # a path, or a config key such as "config.User"
    why: str

    def __str__(self) -> str:
        return f"FAIL {self.rule} {self.where}: {self.why}"


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    title: str
    refs: str  # CIS Docker Benchmark / NIST SP 800-190 items
    check: Callable[[Image, Policy], Iterator[Finding]] = field(repr=False)


def normalise(name: str) -> str:
    """A tar member or relative path as an absolute image path."""
    parts = [p for p in PurePosixPath("/" + name).parts[1:] if p not in ("", ".")]
    return "/" + "/".join(parts)


def resolve(image: Image, path: str) -> Entry | None:
    """The entry ``path`` names after following symlinks inside the image."""
    parts = [p for p in path.split("/") if p]
    current = ""
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.rsplit("/", 1)[0]
            continue
        candidate = f"{current}/{part}" if part != "." else current
        entry = image.entries.get(candidate or "/")
        if entry is None:
            return None
        if entry.kind == "symlink":
            hops += 1
            if hops > LINK_LIMIT:
                return None
            target = entry.target
            parts = [p for p in target.split("/") if p] + parts
            current = "" if target.startswith("/") else current
            continue
        current = candidate
    return image.entries.get(current or "/")


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def executable(entry: Entry) -> bool:
    return entry.kind in ("file", "hardlink") and bool(entry.mode & 0o111)


def content(image: Image, entry: Entry) -> bytes:
    """File content; a hard link reads its target's."""
    if entry.kind == "hardlink":
        linked = image.entries.get(normalise(entry.target))
        return linked.data if linked else b""
    return entry.data


def shebang(data: bytes) -> list[str]:
    """The interpreter and its argument of a ``#!`` script, else []."""
    if not data.startswith(b"#!"):
        return []
    line = data[2:].split(b"\n", 1)[0].decode("utf-8", "replace")
    return line.split()


def under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def site_packages(image: Image) -> list[str]:
    return sorted(
        path
        for path, entry in image.entries.items()
        if entry.kind == "dir" and basename(path) == "site-packages"
    )


# --- rules -------------------------------------------------------------------


def parse_user(value: object) -> tuple[int, int] | None:
    """``UID:GID``, both numeric, or None."""
    match = re.fullmatch(r"(\d+):(\d+)", value) if isinstance(value, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def rule_user(image: Image, policy: Policy) -> Iterator[Finding]:
    user = image.config.get("User", "")
    ids = parse_user(user)
    if ids is None:
        yield Finding("NK-USER", "config.User", f"{user!r} is not numeric UID:GID")
        return
    if 0 in ids:
        yield Finding("NK-USER", "config.User", f"{user!r} runs as root (uid/gid 0)")
    passwd = resolve(image, "/etc/passwd")
    uids = {
        line.split(":")[2]
        for line in (passwd.data.decode() if passwd else "").splitlines()
        if line.count(":") >= 6
    }
    if str(ids[0]) not in uids:
        yield Finding("NK-USER", "/etc/passwd", f"no entry for uid {ids[0]}")


def rule_shell(image: Image, policy: Policy) -> Iterator[Finding]:
    for path, entry in sorted(image.entries.items()):
        name = basename(path)
        if name in SHELLS and (executable(entry) or entry.kind == "symlink"):
            yield Finding("NK-SHELL", path, "shell")
        elif executable(entry):
            interpreter = shebang(content(image, entry))
            if interpreter and basename(interpreter[0]) in SHELLS:
                yield Finding(
                    "NK-SHELL", path, f"script for {' '.join(interpreter[:2])}"
                )


def rule_package_manager(image: Image, policy: Policy) -> Iterator[Finding]:
    for path, entry in sorted(image.entries.items()):
        name = basename(path)
        if name in PACKAGE_MANAGERS and (executable(entry) or entry.kind == "symlink"):
            yield Finding("NK-PKGMGR", path, "package manager")
        elif any(under(path, d) for d in PACKAGE_MANAGER_DIRS):
            yield Finding("NK-PKGMGR", path, "package manager state")
        elif under(path, "/var/lib/dpkg") and path not in (
            "/var/lib/dpkg",
            "/var/lib/dpkg/status",
        ):
            yield Finding("NK-PKGMGR", path, "dpkg state other than the status file")
    for finding in distributions_named(image, {"pip"}):
        yield Finding("NK-PKGMGR", finding, "pip is installed")


def distributions_named(image: Image, names: Iterable[str]) -> Iterator[str]:
    wanted = {canonical(name) for name in names}
    for site in site_packages(image):
        for path in sorted(image.entries):
            if path.startswith(site + "/") and path.count("/") == site.count("/") + 1:
                top = basename(path)
                stem = re.sub(r"-[^-]*\.dist-info$", "", top)
                if canonical(stem) in wanted and image.entries[path].kind == "dir":
                    yield path


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def rule_build_tools(image: Image, policy: Policy) -> Iterator[Finding]:
    for path, entry in sorted(image.entries.items()):
        if COMPILER.match(basename(path)) and (
            executable(entry) or entry.kind == "symlink"
        ):
            yield Finding("NK-BUILDTOOLS", path, "compiler or build tool")
    others = BUILD_DISTRIBUTIONS - {"pip"}
    for path in distributions_named(image, others):
        yield Finding("NK-BUILDTOOLS", path, "Python build tool installed")


def rule_setid(image: Image, policy: Policy) -> Iterator[Finding]:
    for path, entry in sorted(image.entries.items()):
        if entry.kind in ("file", "hardlink") and entry.mode & 0o6000:
            which = "setuid" if entry.mode & 0o4000 else "setgid"
            yield Finding("NK-SETID", path, f"{which} (mode {entry.mode:04o})")


def rule_capabilities(image: Image, policy: Policy) -> Iterator[Finding]:
    for path, entry in sorted(image.entries.items()):
        if entry.capabilities:
            yield Finding("NK-FCAPS", path, "file capabilities (security.capability)")


def rule_special_files(image: Image, policy: Policy) -> Iterator[Finding]:
    for path, entry in sorted(image.entries.items()):
        if entry.kind in ("char", "block", "fifo", "socket"):
            yield Finding("NK-SPECIAL", path, f"{entry.kind} device or special file")


def rule_read_only(image: Image, policy: Policy) -> Iterator[Finding]:
    """Only the data directory and /tmp may be written at run time."""
    ids = parse_user(image.config.get("User", "")) or (0, 0)
    writable = (policy.data_dir, policy.tmp_dir)
    for path, entry in sorted(image.entries.items()):
        if entry.kind == "symlink" or any(under(path, d) for d in writable):
            continue
        if entry.mode & 0o002:
            yield Finding("NK-READONLY", path, f"world-writable ({entry.mode:04o})")
        elif entry.uid != 0 or entry.gid != 0:
            yield Finding(
                "NK-READONLY", path, f"owned by {entry.uid}:{entry.gid}, not root"
            )
        elif ids[1] == 0 and entry.mode & 0o020:
            yield Finding("NK-READONLY", path, "writable by the runtime group 0")
    tmp = image.entries.get(policy.tmp_dir)
    if tmp is None or tmp.kind != "dir" or tmp.mode & 0o1777 != 0o1777:
        yield Finding("NK-READONLY", policy.tmp_dir, "must be a directory, mode 1777")


def rule_data_dir(image: Image, policy: Policy) -> Iterator[Finding]:
    ids = parse_user(image.config.get("User", ""))
    data = image.entries.get(policy.data_dir)
    if data is None or data.kind != "dir":
        yield Finding("NK-DATADIR", policy.data_dir, "missing or not a directory")
        return
    if ids is not None and (data.uid, data.gid) != ids:
        yield Finding(
            "NK-DATADIR",
            policy.data_dir,
            f"owned by {data.uid}:{data.gid}, not {ids[0]}:{ids[1]}",
        )
    if data.mode & 0o077:
        yield Finding("NK-DATADIR", policy.data_dir, f"mode {data.mode:04o}, not 0700")
    for directory in (policy.data_dir, policy.tmp_dir):
        for path in sorted(image.entries):
            if path.startswith(directory + "/"):
                yield Finding("NK-DATADIR", path, "left in a run-time directory")
    volumes = image.config.get("Volumes") or {}
    if policy.data_dir not in volumes:
        yield Finding("NK-DATADIR", "config.Volumes", f"lacks {policy.data_dir}")


def rule_secrets(image: Image, policy: Policy) -> Iterator[Finding]:
    for path, entry in sorted(image.entries.items()):
        name = basename(path)
        if name in VCS_DIRS:
            yield Finding("NK-SECRETS", path, "version control metadata")
        elif name in SECRET_NAMES or path.endswith(SECRET_SUFFIXES):
            yield Finding("NK-SECRETS", path, "credential file")
        elif "/.cache/" in path + "/" or name in ("pip-cache", ".pip"):
            yield Finding("NK-SECRETS", path, "cache directory")
        elif entry.kind == "file" and b"PRIVATE KEY-----" in entry.data:
            if PRIVATE_KEY.search(entry.data):
                yield Finding("NK-SECRETS", path, "PEM private key")
    for item in image.config.get("Env") or []:
        key, _, value = str(item).partition("=")
        if SECRET_ENV.search(key) and value:
            yield Finding("NK-SECRETS", f"config.Env {key}", "secret in the image")


def dpkg_status(data: str) -> dict[str, dict[str, str]]:
    """Package -> fields of /var/lib/dpkg/status (continuation lines dropped)."""
    packages: dict[str, dict[str, str]] = {}
    for stanza in re.split(r"\n\s*\n", data.strip()):
        fields = dict(
            line.split(": ", 1)
            for line in stanza.splitlines()
            if ": " in line and not line[:1].isspace()
        )
        if "Package" in fields:
            packages[fields["Package"]] = fields
    return packages


def rule_packages(image: Image, policy: Policy) -> Iterator[Finding]:
    where = "/var/lib/dpkg/status"
    status = image.entries.get(where)
    if status is None or status.kind != "file":
        yield Finding("NK-PACKAGES", where, "missing: scanners cannot list packages")
        return
    installed = dpkg_status(status.data.decode("utf-8", "replace"))
    for name, fields in sorted(installed.items()):
        state = fields.get("Status", "")
        if state != "install ok installed":
            yield Finding("NK-PACKAGES", where, f"{name}: status {state!r}")
        if name not in policy.debs:
            yield Finding("NK-PACKAGES", where, f"{name}: not in the allow-list")
        elif fields.get("Version") != policy.debs[name]:
            yield Finding(
                "NK-PACKAGES",
                where,
                f"{name}: version {fields.get('Version')}, locked {policy.debs[name]}",
            )
    for name in sorted(set(policy.debs) - set(installed)):
        yield Finding("NK-PACKAGES", where, f"{name}: locked but not installed")


def distributions(image: Image) -> dict[str, tuple[str, str]]:
    """Normalised name -> (version, dist-info path) in every site-packages."""
    found = {}
    for site in site_packages(image):
        for path in sorted(image.entries):
            if path.startswith(site + "/") and path.endswith(".dist-info"):
                metadata = image.entries.get(path + "/METADATA")
                text = metadata.data.decode("utf-8", "replace") if metadata else ""
                name = re.search(r"^Name: (.+)$", text, re.MULTILINE)
                version = re.search(r"^Version: (.+)$", text, re.MULTILINE)
                if name and version:
                    key = canonical(name.group(1).strip())
                    found[key] = (version.group(1).strip(), path)
                else:
                    found[path] = ("", path)
    return found


def rule_python_packages(image: Image, policy: Policy) -> Iterator[Finding]:
    found = distributions(image)
    expected = dict(policy.wheels)
    if policy.version is not None:
        expected.setdefault(policy.app_name, policy.version)
    for name, (version, path) in sorted(found.items()):
        if not version:
            yield Finding("NK-PYPACKAGES", path, "no Name/Version in METADATA")
        elif name == policy.app_name and policy.version is None:
            continue
        elif name not in expected:
            yield Finding("NK-PYPACKAGES", path, f"{name} {version}: not locked")
        elif version != expected[name]:
            yield Finding(
                "NK-PYPACKAGES", path, f"{name} {version}, locked {expected[name]}"
            )
    for name in sorted(set(expected) - set(found)):
        yield Finding("NK-PYPACKAGES", "site-packages", f"{name}: locked, missing")
    if policy.app_name not in found:
        yield Finding("NK-PYPACKAGES", "site-packages", f"{policy.app_name} missing")


def record_hashes(image: Image, site: str) -> dict[str, str]:
    """Image path -> RECORD hash ("" for files listed without one)."""
    listed = {}
    for path, entry in image.entries.items():
        if path.startswith(site + "/") and path.endswith(".dist-info/RECORD"):
            rows = csv.reader(io.StringIO(entry.data.decode("utf-8", "replace")))
            for row in rows:
                if row:
                    listed[normalise(f"{site}/{row[0]}")] = (
                        row[1] if len(row) > 1 else ""
                    )
    return listed


def rule_record(image: Image, policy: Policy) -> Iterator[Finding]:
    """Every file of site-packages is recorded by its installer, unmodified."""
    for site in site_packages(image):
        listed = record_hashes(image, site)
        for path, entry in sorted(image.entries.items()):
            if not path.startswith(site + "/") or entry.kind == "dir":
                continue
            if path not in listed:
                yield Finding("NK-RECORD", path, "in no RECORD of site-packages")
                continue
            algorithm, _, expected = listed[path].partition("=")
            if algorithm != "sha256" or entry.kind != "file":
                continue
            digest = base64.urlsafe_b64encode(hashlib.sha256(entry.data).digest())
            if digest.rstrip(b"=").decode() != expected:
                yield Finding("NK-RECORD", path, "content differs from RECORD")


def rule_shebang(image: Image, policy: Policy) -> Iterator[Finding]:
    """Programs on PATH start: their interpreter is in the image."""
    env_path = [
        item.partition("=")[2].split(":")
        for item in image.config.get("Env") or []
        if str(item).startswith("PATH=")
    ]
    dirs = set(PATH_DIRS) | set(env_path[0] if env_path else [])
    for path, entry in sorted(image.entries.items()):
        if path.rsplit("/", 1)[0] not in dirs or not executable(entry):
            continue
        interpreter = shebang(content(image, entry))
        if interpreter:
            target = resolve(image, interpreter[0])
            if target is None or not executable(target):
                yield Finding(
                    "NK-SHEBANG", path, f"interpreter {interpreter[0]} not in image"
                )


def command_problem(image: Image, argv: object) -> str | None:
    """Why ``argv`` cannot start directly (exec form, no shell), or None."""
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) for a in argv)
    ):
        return "not a non-empty list of strings (exec form)"
    program = argv[0]
    if not program.startswith("/"):
        return f"{program!r} is not an absolute path"
    if basename(program) in SHELLS or "-c" in argv[1:2]:
        return "runs a shell"
    target = resolve(image, program)
    if target is None or not executable(target):
        return f"{program} is not an executable in the image"
    return None


def rule_entrypoint(image: Image, policy: Policy) -> Iterator[Finding]:
    entrypoint = image.config.get("Entrypoint")
    problem = command_problem(image, entrypoint)
    if problem or not isinstance(entrypoint, list):
        yield Finding("NK-ENTRYPOINT", "config.Entrypoint", problem or "not a list")
        return
    argv = entrypoint + list(image.config.get("Cmd") or [])
    if "serve" not in argv[1:2]:
        yield Finding("NK-ENTRYPOINT", "config.Entrypoint", "does not run serve")
    if not any(
        argv[i] == "--data-dir" and argv[i + 1] == policy.data_dir
        for i in range(len(argv) - 1)
    ):
        yield Finding(
            "NK-ENTRYPOINT", "config.Entrypoint", f"lacks --data-dir {policy.data_dir}"
        )


def rule_healthcheck(image: Image, policy: Policy) -> Iterator[Finding]:
    check = image.config.get("Healthcheck") or {}
    test = check.get("Test") if isinstance(check, dict) else None
    if not isinstance(test, list) or test[:1] != ["CMD"]:
        yield Finding("NK-HEALTH", "config.Healthcheck", "no exec-form (CMD) test")
        return
    problem = command_problem(image, test[1:])
    if problem:
        yield Finding("NK-HEALTH", "config.Healthcheck.Test", problem)
    elif "health" not in test[2:3]:
        yield Finding("NK-HEALTH", "config.Healthcheck.Test", "does not run health")
    for key in ("Interval", "Timeout", "Retries"):
        value = check.get(key)
        if not isinstance(value, int) or value <= 0:
            yield Finding("NK-HEALTH", f"config.Healthcheck.{key}", "must be > 0")


def rule_ports(image: Image, policy: Policy) -> Iterator[Finding]:
    ports = image.config.get("ExposedPorts") or {}
    for key in sorted(ports):
        match = re.fullmatch(r"(\d+)/(tcp|udp|sctp)", key)
        if match is None:
            yield Finding("NK-PORTS", f"config.ExposedPorts {key}", "not PORT/PROTO")
        elif int(match.group(1)) < 1024:
            yield Finding(
                "NK-PORTS", f"config.ExposedPorts {key}", "privileged port (< 1024)"
            )


def rule_labels(image: Image, policy: Policy) -> Iterator[Finding]:
    labels = image.config.get("Labels") or {}
    for key in REQUIRED_LABELS:
        if not str(labels.get(key, "")).strip():
            yield Finding("NK-LABELS", f"config.Labels {key}", "missing or empty")
    prefix = "org.opencontainers.image."
    revision = str(labels.get(prefix + "revision", ""))
    if revision and not re.fullmatch(r"[0-9a-f]{40}(-dirty)?", revision):
        yield Finding("NK-LABELS", f"config.Labels {prefix}revision", "not a commit")
    created = str(labels.get(prefix + "created", ""))
    if created:
        try:
            datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            yield Finding("NK-LABELS", f"config.Labels {prefix}created", "not RFC 3339")
    version = labels.get(prefix + "version")
    if policy.version is not None and version and version != policy.version:
        yield Finding(
            "NK-LABELS",
            f"config.Labels {prefix}version",
            f"{version}, natkit is {policy.version}",
        )


def rule_os_release(image: Image, policy: Policy) -> Iterator[Finding]:
    entry = resolve(image, "/etc/os-release")
    if entry is None or entry.kind != "file":
        yield Finding("NK-OSRELEASE", "/etc/os-release", "missing")
        return
    fields = dict(
        line.split("=", 1) for line in entry.data.decode().splitlines() if "=" in line
    )
    if fields.get("ID") != "debian" or not fields.get("VERSION_ID"):
        yield Finding("NK-OSRELEASE", "/etc/os-release", "does not name Debian")


RULES = (
    Rule("NK-USER", "numeric non-root user", "CIS 4.1; 800-190 4.1.2", rule_user),
    Rule("NK-SHELL", "no shell", "CIS 4.3; 800-190 4.1.2", rule_shell),
    Rule(
        "NK-PKGMGR",
        "no package manager",
        "CIS 4.3; 800-190 4.1.2",
        rule_package_manager,
    ),
    Rule(
        "NK-BUILDTOOLS",
        "no compiler or build tool",
        "CIS 4.3; 800-190 4.1.2",
        rule_build_tools,
    ),
    Rule(
        "NK-SETID", "no setuid/setgid file", "CIS 4.8, 5.25; 800-190 4.1.2", rule_setid
    ),
    Rule(
        "NK-FCAPS",
        "no file capabilities",
        "CIS 5.3, 5.25; 800-190 4.4.3",
        rule_capabilities,
    ),
    Rule(
        "NK-SPECIAL",
        "no device or special file",
        "CIS 5.17; 800-190 4.1.2",
        rule_special_files,
    ),
    Rule(
        "NK-READONLY",
        "read-only root filesystem works",
        "CIS 5.12; 800-190 4.4.4",
        rule_read_only,
    ),
    Rule(
        "NK-DATADIR",
        "data directory owned by the user, run-time dirs empty",
        "CIS 5.12; 800-190 4.4.4",
        rule_data_dir,
    ),
    Rule(
        "NK-SECRETS",
        "no secrets, keys, VCS data or caches",
        "CIS 4.10; 800-190 4.1.4",
        rule_secrets,
    ),
    Rule(
        "NK-PACKAGES",
        "Debian packages: exactly the locked allow-list",
        "CIS 4.2, 4.3, 4.11; 800-190 4.1.1, 4.1.5",
        rule_packages,
    ),
    Rule(
        "NK-PYPACKAGES",
        "Python packages: exactly the locked wheels and natkit",
        "CIS 4.3, 4.11; 800-190 4.1.1, 4.1.5",
        rule_python_packages,
    ),
    Rule(
        "NK-RECORD",
        "Python files match their RECORD hashes",
        "CIS 4.11; 800-190 4.1.3",
        rule_record,
    ),
    Rule(
        "NK-SHEBANG",
        "programs on PATH have their interpreter",
        "CIS 4.3; 800-190 4.1.2",
        rule_shebang,
    ),
    Rule(
        "NK-ENTRYPOINT",
        "exec-form entry point: natkit serve --data-dir",
        "CIS 5.12; 800-190 4.4.4",
        rule_entrypoint,
    ),
    Rule("NK-HEALTH", "health check: natkit health", "CIS 4.6, 5.26", rule_healthcheck),
    Rule("NK-PORTS", "no privileged port", "CIS 5.7, 5.8; 800-190 4.4.3", rule_ports),
    Rule(
        "NK-LABELS",
        "OCI provenance labels",
        "CIS 4.2; 800-190 4.1.5, 4.2.2",
        rule_labels,
    ),
    Rule(
        "NK-OSRELEASE",
        "distribution identifiable by scanners",
        "CIS 4.4; 800-190 4.1.1",
        rule_os_release,
    ),
)


def run_rules(image: Image, policy: Policy) -> list[Finding]:
    return [finding for rule in RULES for finding in rule.check(image, policy)]


# --- loading the image -------------------------------------------------------

TAR_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


class InputError(Exception):
    """The image or a lock file cannot be read."""


def load_rootfs(root: Path) -> dict[str, Entry]:
    """Entries of a root filesystem directory (lstat, xattrs, contents)."""
    entries = {"/": entry_from_stat("/", root)}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            image_path = "/" + path.relative_to(root).as_posix()
            entries[image_path] = entry_from_stat(image_path, path)
    return entries


def entry_from_stat(image_path: str, path: Path) -> Entry:
    st = path.lstat()
    kinds = (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
    )
    kind = next((name for test, name in kinds if test(st.st_mode)), "file")
    try:
        caps = "security.capability" in os.listxattr(path, follow_symlinks=False)
    except OSError:
        caps = False
    return Entry(
        path=image_path,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        target=os.readlink(path) if kind == "symlink" else "",
        capabilities=caps,
        data=path.read_bytes() if kind == "file" else b"",
    )


def apply_layer(entries: dict[str, Entry], layer: bytes) -> None:
    """Unpack one layer over ``entries``, honouring OCI whiteouts."""
    raw = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar:
            path = normalise(info.name)
            parent, _, name = path.rpartition("/")
            if name == ".wh..wh..opq":
                for key in [k for k in entries if k.startswith(parent + "/")]:
                    del entries[key]
                continue
            if name.startswith(".wh."):
                gone = f"{parent}/{name[4:]}"
                for key in [k for k in entries if under(k, gone)]:
                    del entries[key]
                continue
            file = tar.extractfile(info) if info.isreg() else None
            entries[path] = Entry(
                path=path,
                kind=TAR_KINDS.get(info.type, "file"),
                mode=info.mode & 0o7777,
                uid=info.uid,
                gid=info.gid,
                target=info.linkname,
                capabilities="SCHILY.xattr.security.capability" in info.pax_headers,
                data=file.read() if file else b"",
            )


def load_archive(path: Path) -> Image:
    """The image of an OCI archive (an OCI image layout in a tar file)."""
    try:
        with tarfile.open(path) as outer:

            def blob(digest: str) -> bytes:
                member = outer.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
                if member is None:
                    raise InputError(f"{path}: blob {digest} missing")
                data = member.read()
                if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                    raise InputError(f"{path}: blob {digest} does not match digest")
                return data

            index_file = outer.extractfile("index.json")
            if index_file is None:
                raise InputError(f"{path}: no index.json")
            manifests = json.load(index_file)["manifests"]
            if len(manifests) != 1:
                raise InputError(f"{path}: expected one manifest, not {len(manifests)}")
            manifest = json.loads(blob(manifests[0]["digest"]))
            config = json.loads(blob(manifest["config"]["digest"]))
            entries = {"/": Entry("/", "dir", 0o755)}
            for layer in manifest["layers"]:
                apply_layer(entries, blob(layer["digest"]))
    except (OSError, KeyError, ValueError, tarfile.TarError) as exc:
        raise InputError(f"{path}: not a readable OCI archive: {exc}") from None
    return Image(entries, config.get("config") or {})


def read_deb_lock(path: Path) -> dict[str, str]:
    """Runtime packages of deploy/image/packages.lock: name -> version."""
    debs = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 5 and not line.startswith("#") and fields[4] == "runtime":
            debs[fields[0]] = fields[1]
    return debs


def read_wheel_lock(path: Path) -> dict[str, str]:
    """``name==version`` pins of a pip-compile lock: normalised name -> version."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def natkit_version() -> str | None:
    init = REPO / "src/natkit/__init__.py"
    text = init.read_text() if init.exists() else ""
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else None


# --- command line ------------------------------------------------------------


def report(findings: list[Finding], out: Any) -> None:
    failed = {finding.rule for finding in findings}
    for finding in findings:
        out.write(f"{finding}\n")
    for rule in RULES:
        verdict = "FAIL" if rule.id in failed else "pass"
        out.write(f"{verdict:4}  {rule.id:14} {rule.title} ({rule.refs})\n")
    out.write(
        f"{len(RULES) - len(failed)} passed, {len(failed)} failed "
        f"({len(findings)} findings)\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("archive", nargs="?", type=Path, help="OCI archive")
    parser.add_argument("--rootfs", type=Path, help="root filesystem directory")
    parser.add_argument("--config", type=Path, help="image config JSON (--rootfs)")
    parser.add_argument("--deb-lock", type=Path, default=DEFAULT_DEB_LOCK)
    parser.add_argument("--wheel-lock", type=Path, default=DEFAULT_PY_LOCK)
    args = parser.parse_args(argv)
    if (args.archive is None) == (args.rootfs is None):
        parser.error("give an OCI archive or --rootfs DIR --config FILE")
    try:
        if args.archive is not None:
            image = load_archive(args.archive)
        else:
            if args.config is None:
                parser.error("--rootfs needs --config")
            config = json.loads(args.config.read_text())
            image = Image(load_rootfs(args.rootfs), config.get("config", config))
        policy = Policy(
            debs=read_deb_lock(args.deb_lock),
            wheels=read_wheel_lock(args.wheel_lock),
            version=natkit_version(),
        )
    except (InputError, OSError, ValueError) as exc:
        sys.stderr.write(f"check: error: {exc}\n")
        return 2
    findings = run_rules(image, policy)
    report(findings, sys.stdout)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
