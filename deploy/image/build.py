"""Build the natkit container image without a container daemon.

Steps (docs/deploy.md explains each):

1. download the Debian packages of ``packages.allow`` with mmdebstrap (signed
   archive indexes), at the versions of ``packages.lock``, and check every
   ``.deb`` against the SHA-256 recorded there;
2. extract only the ``runtime`` packages into an empty root filesystem and write
   ``/var/lib/dpkg/status`` for them (no maintainer script runs, so the image
   never needs a shell);
3. download the Python wheels of ``requirements/runtime.lock`` and
   ``requirements/build.lock`` (hash-checked), build the natkit wheel and
   install everything into ``/opt/natkit`` with the image's own Python, run
   inside the root filesystem by chroot;
4. remove what the image must not carry and write the OCI archive
   (``deploy/image/oci.py``). The manifest digest is the last line printed.

Run as root on Debian with mmdebstrap installed: ``make image``.
``--lock`` downloads the newest packages of the allow-list instead and rewrites
``packages.lock``.
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import oci  # noqa: E402

SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
PYTHON = "/usr/bin/python3.11"
VENV = "/opt/natkit"
DATA_DIR = "/var/lib/natkit"
UID = 10001
GID = 10001
BUILD_DIR_IN_ROOT = "/tmp/natkit-build"

# pip --platform does not widen manylinux tags itself: list glibc 2.17 to 2.36
# (bookworm's), so that the download does not depend on the build host
WHEEL_TAGS = (
    ["--python-version", "3.11", "--implementation", "cp"]
    + ["--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    + [f"--platform=manylinux_2_{minor}_x86_64" for minor in range(17, 37)]
    + ["--platform", "manylinux2014_x86_64", "--platform", "any"]
)

# removed from the extracted packages: documentation and hooks for tools that
# the image does not have (copyright files stay, for license compliance)
PRUNE = (
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/doc-base",
    "usr/share/bug",
    "usr/share/base-files/dot.bashrc",
    "usr/share/base-files/dot.profile",
    "usr/share/base-files/dot.profile.md5sums",
    "etc/update-motd.d",
    "etc/profile",
    "etc/profile.d",
    "etc/ld.so.conf.d",
    # writable places other than /tmp and the data directory: a read-only root
    # has none (/var/lock and /var/tmp are world-writable in base-files)
    "var/lock",
    "var/tmp",
)

ETC_FILES = {
    "etc/passwd": (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"natkit:x:{UID}:{GID}:natkit:{DATA_DIR}:/usr/sbin/nologin\n"
    ),
    "etc/group": f"root:x:0:\nnatkit:x:{GID}:\n",
    "etc/nsswitch.conf": (
        "passwd: files\ngroup: files\nhosts: files dns\n"
        "services: files\nprotocols: files\n"
    ),
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}


class BuildError(Exception):
    """A build step failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class LockedDeb:
    """One line of packages.lock."""

    name: str
    version: str
    arch: str
    sha256: str
    role: str  # runtime, build or resolve (pulled in by apt only)


@dataclass(frozen=True, slots=True)
class Provenance:
    """What the image says about where it comes from (the OCI labels)."""

    version: str
    revision: str
    epoch: int
    source: str


def log(message: str) -> None:
    """Progress on stderr: stdout's last line is the digest."""
    sys.stderr.write(f"image: {message}\n")
    sys.stderr.flush()


def run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run a command; a non-zero exit becomes a BuildError naming it."""
    try:
        return subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload, no-any-return]
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{' '.join(argv[:3])} ... exited {exc.returncode}") from None
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} not found (apt-get install it)") from None


def output(argv: Sequence[str], cwd: Path | None = None) -> str:
    return run(argv, stdout=subprocess.PIPE, cwd=cwd).stdout.decode().strip()


# --- packages.allow and packages.lock -------------------------------------


def read_allow(path: Path) -> dict[str, str]:
    """Package name -> role (runtime or build) from packages.allow."""
    roles: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        if len(line) != 2 or line[0] not in ("runtime", "build"):
            raise BuildError(f"{path}:{number}: expected 'runtime|build NAME'")
        roles[line[1]] = line[0]
    return roles


def read_lock(path: Path) -> list[LockedDeb]:
    if not path.exists():
        raise BuildError(f"{path} missing: run deploy/image/build.py --lock")
    debs = []
    for raw in path.read_text().splitlines():
        if raw.strip() and not raw.startswith("#"):
            name, version, arch, sha256, role = raw.split()
            debs.append(LockedDeb(name, version, arch, sha256, role))
    return debs


def write_lock(path: Path, debs: Iterable[LockedDeb]) -> None:
    lines = [
        "# Exact Debian packages of the natkit image; generated by",
        "# `python3 deploy/image/build.py --lock` from packages.allow. Do not edit.",
        "# name version architecture sha256 role",
    ]
    for deb in sorted(debs, key=lambda d: d.name):
        lines.append(f"{deb.name} {deb.version} {deb.arch} {deb.sha256} {deb.role}")
    path.write_text("\n".join(lines) + "\n")


# --- Debian packages -------------------------------------------------------


def download_debs(work: Path, includes: Sequence[str], epoch: int) -> Path:
    """Let mmdebstrap resolve and download ``includes``; return the .deb folder.

    The extract variant runs no maintainer script. Its root filesystem is only
    a staging area: the image is extracted afresh from the checked .debs.
    """
    work.mkdir(parents=True, exist_ok=True)
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
    run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=extract",
            "--quiet",
            "--aptopt=APT::Install-Recommends false",
            "--skip=cleanup/apt/cache",
            "--include=" + ",".join(includes),
            SUITE,
            str(stage),
            *MIRRORS,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    debs = work / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    shutil.move(stage / "var/cache/apt/archives", debs)
    shutil.rmtree(stage)
    return debs


def deb_field(deb: Path, *fields: str) -> list[str]:
    return output(["dpkg-deb", "--field", str(deb), *fields]).splitlines()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan_debs(debs: Path, roles: dict[str, str]) -> dict[str, tuple[LockedDeb, Path]]:
    """Name -> (what the .deb is, its file), for every downloaded package."""
    found = {}
    for path in sorted(debs.glob("*.deb")):
        fields = dict(
            line.split(": ", 1)
            for line in deb_field(path, "Package", "Version", "Architecture")
        )
        name = fields["Package"]
        deb = LockedDeb(
            name,
            fields["Version"],
            fields["Architecture"],
            sha256_file(path),
            roles.get(name, "resolve"),
        )
        found[name] = (deb, path)
    return found


def verify_debs(
    found: dict[str, tuple[LockedDeb, Path]], lock: Sequence[LockedDeb]
) -> None:
    """The downloaded set must be the locked set, byte for byte."""
    wanted = {deb.name: deb for deb in lock}
    problems = []
    for name in sorted(set(wanted) | set(found)):
        if name not in found:
            problems.append(f"{name}: locked but not downloaded")
        elif name not in wanted:
            problems.append(f"{name}: downloaded but not in packages.lock")
        elif found[name][0] != wanted[name]:
            got, want = found[name][0], wanted[name]
            problems.append(
                f"{name}: got {got.version} sha256 {got.sha256[:16]}..., "
                f"locked {want.version} sha256 {want.sha256[:16]}..."
            )
    if problems:
        raise BuildError(
            "Debian packages differ from packages.lock:\n  "
            + "\n  ".join(problems)
            + "\n(relock with: python3 deploy/image/build.py --lock)"
        )


def extract_debs(paths: Iterable[Path], root: Path) -> None:
    """Unpack the data part of each .deb, keeping owners and modes."""
    for path in paths:
        fsys = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(path)], stdout=subprocess.PIPE
        )
        run(
            ["tar", "-x", "-C", str(root), "--same-owner", "--same-permissions"]
            + ["--numeric-owner", "--no-overwrite-dir"],
            stdin=fsys.stdout,
        )
        if fsys.wait() != 0:
            raise BuildError(f"dpkg-deb --fsys-tarfile {path.name} failed")


def write_status(paths: Iterable[Path], root: Path) -> None:
    """/var/lib/dpkg/status for the extracted packages, for SBOM scanners."""
    stanzas = []
    for path in paths:
        control = output(["dpkg-deb", "--field", str(path)]).splitlines()
        stanzas.append(
            "\n".join([control[0], "Status: install ok installed", *control[1:]])
        )
    status = root / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text("\n\n".join(sorted(stanzas)) + "\n")
    status.chmod(0o644)


# --- the root filesystem ---------------------------------------------------


def make_root(root: Path) -> None:
    """Empty mount points, /tmp and the data directory, owned as they must be."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(mode=0o755, parents=True)
    root.chmod(0o755)
    for name in ("dev", "proc", "sys", "etc", "var/lib", "run"):
        (root / name).mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = root / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)


def write_etc(root: Path) -> None:
    for name, text in ETC_FILES.items():
        path = root / name
        path.write_text(text)
        path.chmod(0o644)
    # base-files leaves /var/local to group staff (its postinst would set it)
    os.chown(root / "var/local", 0, 0)
    (root / "var/local").chmod(0o755)
    data = root / DATA_DIR.lstrip("/")
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    os.chown(data, UID, GID)


def prune(root: Path) -> None:
    """Remove documentation and tool hooks, keep the copyright files."""
    for name in PRUNE:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for doc in (root / "usr/share/doc").glob("*/*"):
        if doc.name != "copyright":
            if doc.is_dir() and not doc.is_symlink():
                shutil.rmtree(doc)
            else:
                doc.unlink()
    for path in (root / "tmp", root / "run"):
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def clear_special_bits(root: Path) -> None:
    """No setuid or setgid file may remain (the checker verifies it too)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            if not path.is_symlink() and mode & 0o6000 and not path.is_dir():
                log(f"clearing setuid/setgid on /{path.relative_to(root)}")
                path.chmod(mode & 0o1777)


# --- Python: wheels, the natkit wheel, the virtualenv ----------------------


def download_wheels(dest: Path) -> None:
    """The locked wheels, hash-checked, for CPython 3.11 on glibc x86-64."""
    dest.mkdir(parents=True)
    run(
        [sys.executable, "-m", "pip", "download", "-qq", "--require-hashes"]
        + ["--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
        + WHEEL_TAGS
        + ["--dest", str(dest)]
        + ["-r", str(REPO / "requirements/runtime.lock")]
        + ["-r", str(REPO / "requirements/build.lock")],
        stdin=subprocess.DEVNULL,
    )


def stage_source(dest: Path) -> None:
    """The files git knows (tracked, or new and not ignored) that the wheel needs."""
    listing = output(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
        + ["--", "src", "pyproject.toml", "README.md"],
        cwd=REPO,
    )
    for name in listing.split("\0"):
        source = REPO / name
        if name and source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def host_tool(name: str) -> str:
    """The build host's ``name``, looked up in /usr/sbin and /sbin too."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise BuildError(f"{name} not found on the build host")
    return found


def chroot(root: Path, argv: Sequence[str], epoch: int) -> None:
    """Run ``argv`` inside ``root`` with /proc and /dev, in a private mount
    namespace (the mounts vanish with it), and a clean environment."""
    script = (
        'set -e; mount -t proc proc "$0/proc"; mount --rbind /dev "$0/dev"; '
        f'exec {host_tool("chroot")} "$0" "$@"'
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(epoch),
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    run(
        [host_tool("unshare"), "--mount", "--propagation", "private"]
        + ["/bin/sh", "-c", script]
        + [str(root), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr.fileno(),
    )


def install_python(root: Path, work: Path, pip_wheel: Path, epoch: int) -> None:
    """Build natkit's wheel and fill /opt/natkit, all with the image's Python."""
    build = root / BUILD_DIR_IN_ROOT.lstrip("/")
    inside = BUILD_DIR_IN_ROOT
    build.mkdir(parents=True)
    shutil.copytree(work / "wheels", build / "wheels")
    shutil.copy2(pip_wheel, build / pip_wheel.name)
    for name in ("runtime.lock", "build.lock"):
        shutil.copy2(REPO / "requirements" / name, build / name)
    stage_source(build / "src")
    pip = f"{inside}/{pip_wheel.name}/pip"
    offline = ["--no-index", "--find-links", f"{inside}/wheels"]

    # a throwaway build environment with the locked hatchling
    chroot(root, [PYTHON, "-m", "venv", "--without-pip", f"{inside}/venv"], epoch)
    chroot(
        root,
        [f"{inside}/venv/bin/python", pip, "install", "--quiet", "--require-hashes"]
        + offline
        + ["-r", f"{inside}/build.lock"],
        epoch,
    )
    chroot(
        root,
        [f"{inside}/venv/bin/python", pip, "wheel", "--quiet", "--no-deps"]
        + ["--no-build-isolation", "--no-index", "-w", f"{inside}/dist"]
        + [f"{inside}/src"],
        epoch,
    )

    # the runtime environment: locked wheels, then natkit; pip stays outside
    chroot(root, [PYTHON, "-m", "venv", "--without-pip", VENV], epoch)
    python = f"{VENV}/bin/python"
    chroot(
        root,
        [python, pip, "install", "--quiet", "--require-hashes", *offline]
        + ["-r", f"{inside}/runtime.lock"],
        epoch,
    )
    wheels = sorted((build / "dist").glob("natkit-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one natkit wheel, found {len(wheels)}")
    chroot(
        root,
        [python, pip, "install", "--quiet", "--no-deps", "--no-index"]
        + [f"{inside}/dist/{wheels[0].name}"],
        epoch,
    )
    chroot(root, [python, pip, "check"], epoch)
    shutil.rmtree(build)


def compile_stdlib(root: Path, epoch: int) -> None:
    """Byte-compile the standard library: Debian does it in a maintainer script
    that never runs here, and a read-only root cannot cache it at run time.
    Hash-based .pyc files (SOURCE_DATE_EPOCH is set) keep the build
    reproducible."""
    chroot(
        root,
        [PYTHON, "-m", "compileall", "-q", "-j", "1"]
        + ["--invalidation-mode", "checked-hash", "/usr/lib/python3.11"],
        epoch,
    )


def tidy_venv(root: Path) -> None:
    """Activation scripts are for shells the image does not have."""
    for path in (root / VENV.lstrip("/") / "bin").glob("[Aa]ctivate*"):
        path.unlink()


def smoke(root: Path, epoch: int) -> None:
    """The entry point imports everything it needs (uvloop, cryptography...)."""
    code = (
        "import natkit.cli, natkit.server.daemon, natkit.health, uvloop, ssl, "
        "sqlite3, cryptography.hazmat.primitives.ciphers.aead, pydantic_core"
    )
    chroot(root, [f"{VENV}/bin/python", "-I", "-c", code], epoch)
    chroot(root, [f"{VENV}/bin/natkit", "--version"], epoch)


# --- provenance and the image config ---------------------------------------


def provenance(source: str) -> Provenance:
    init = (REPO / "src/natkit/__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', init, re.MULTILINE)
    if match is None:
        raise BuildError("no __version__ in src/natkit/__init__.py")
    revision = output(["git", "rev-parse", "HEAD"], cwd=REPO)
    changed = output(
        ["git", "status", "--porcelain", "--", "src", "pyproject.toml"]
        + ["README.md", "requirements", "deploy/image"],
        cwd=REPO,
    )
    if changed:
        revision += "-dirty"
    epoch_text = os.environ.get("SOURCE_DATE_EPOCH") or output(
        ["git", "log", "-1", "--format=%ct", "HEAD"], cwd=REPO
    )
    if not source:
        remote = subprocess.run(
            ["git", "config", "--get", "remote.origin.url"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            check=False,
        ).stdout.decode()
        source = remote.strip() if "://" in remote or "@" in remote else ""
    return Provenance(match.group(1), revision, int(epoch_text), source or "unset")


def image_config(prov: Provenance) -> dict[str, object]:
    """The runtime settings: numeric user, entry point, health check, labels."""
    natkit = f"{VENV}/bin/natkit"
    second = 1_000_000_000  # Healthcheck durations are nanoseconds
    return {
        "User": f"{UID}:{GID}",
        "Env": [
            f"PATH={VENV}/bin:/usr/bin:/bin",
            "LANG=C.UTF-8",
            "PYTHONDONTWRITEBYTECODE=1",
            "PYTHONUNBUFFERED=1",
            f"HOME={DATA_DIR}",
            f"NATKIT_DATA_DIR={DATA_DIR}",
        ],
        "Entrypoint": [natkit, "serve", "--data-dir", DATA_DIR],
        "WorkingDir": DATA_DIR,
        "ExposedPorts": {"3478/udp": {}, "3478/tcp": {}, "5349/tcp": {}},
        "Volumes": {DATA_DIR: {}},
        "StopSignal": "SIGTERM",
        "Labels": labels(prov),
        "Healthcheck": {
            "Test": ["CMD", natkit, "health"],
            "Interval": 30 * second,
            "Timeout": 5 * second,
            "StartPeriod": 10 * second,
            "Retries": 3,
        },
    }


def labels(prov: Provenance) -> dict[str, str]:
    prefix = "org.opencontainers.image."
    return {
        prefix + "title": "natkit",
        prefix + "description": "natkit STUN/TURN server (natkit serve)",
        prefix + "version": prov.version,
        prefix + "revision": prov.revision,
        prefix + "created": rfc3339(prov.epoch),
        prefix + "source": prov.source,
        prefix + "base.name": f"debian:{SUITE}",
    }


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# --- the two commands ------------------------------------------------------


def relock(work: Path) -> None:
    """Download the newest packages of the allow-list and write packages.lock."""
    roles = read_allow(HERE / "packages.allow")
    debs = download_debs(work, sorted(roles), int(time.time()))
    found = scan_debs(debs, roles)
    missing = sorted(set(roles) - set(found))
    if missing:
        raise BuildError(f"not downloaded: {', '.join(missing)}")
    write_lock(HERE / "packages.lock", [deb for deb, _ in found.values()])
    shutil.rmtree(debs)
    log(f"wrote packages.lock: {len(found)} packages")


def check_allow_matches_lock(roles: dict[str, str], lock: Sequence[LockedDeb]) -> None:
    locked = {deb.name: deb.role for deb in lock if deb.role != "resolve"}
    if locked != roles:
        raise BuildError(
            "packages.allow and packages.lock disagree: "
            "run python3 deploy/image/build.py --lock"
        )


def build(work: Path, dist: Path, source: str) -> str:
    """Build the image; return its manifest digest."""
    started = time.monotonic()

    def step(message: str) -> None:
        log(f"[{time.monotonic() - started:5.1f}s] {message}")

    prov = provenance(source)
    roles = read_allow(HERE / "packages.allow")
    lock = read_lock(HERE / "packages.lock")
    check_allow_matches_lock(roles, lock)
    work.mkdir(parents=True, exist_ok=True)

    step(f"natkit {prov.version} at {prov.revision}; downloading {len(lock)} debs")
    pins = [f"{deb.name}={deb.version}" for deb in lock]
    found = scan_debs(download_debs(work, pins, prov.epoch), roles)
    verify_debs(found, lock)

    step("extracting the runtime packages")
    root = work / "rootfs"
    make_root(root)
    runtime = [found[deb.name][1] for deb in lock if deb.role == "runtime"]
    extract_debs(runtime, root)
    write_status(runtime, root)
    prune(root)
    write_etc(root)
    pip_wheel = unpack_pip_wheel(
        work, [found[d.name][1] for d in lock if d.role == "build"]
    )

    step("downloading the locked wheels")
    shutil.rmtree(work / "wheels", ignore_errors=True)
    download_wheels(work / "wheels")

    step("installing natkit into /opt/natkit with the image's python")
    install_python(root, work, pip_wheel, prov.epoch)
    compile_stdlib(root, prov.epoch)
    tidy_venv(root)
    smoke(root, prov.epoch)
    prune(root)
    clear_special_bits(root)

    step("writing the OCI archive")
    dist.mkdir(parents=True, exist_ok=True)
    out = dist / f"natkit-{prov.version}.oci.tar"
    config = image_config(prov)
    digest = oci.write_archive(
        root,
        out,
        config=config,
        annotations=labels(prov),
        ref_name=prov.version,
        created=rfc3339(prov.epoch),
        epoch=prov.epoch,
    )
    (dist / f"natkit-{prov.version}.oci.digest").write_text(digest + "\n")
    size = out.stat().st_size / 1e6
    step(f"{out.relative_to(REPO) if out.is_relative_to(REPO) else out}: {size:.1f} MB")
    return digest


def unpack_pip_wheel(work: Path, debs: Sequence[Path]) -> Path:
    """pip's wheel from the python3-pip-whl package, outside the image."""
    dest = work / "build-only"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    extract_debs(debs, dest)
    wheels = sorted(dest.glob("usr/share/python-wheels/pip-*.whl"))
    if len(wheels) != 1:
        raise BuildError("python3-pip-whl holds no single pip wheel")
    return wheels[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lock", action="store_true", help="rewrite packages.lock")
    parser.add_argument("--work", type=Path, default=REPO / "build/image")
    parser.add_argument("--dist", type=Path, default=REPO / "dist")
    parser.add_argument("--source", default="", help="org.opencontainers.image.source")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        log("error: run as root (mmdebstrap --mode=root, chroot)")
        return 1
    try:
        if args.lock:
            relock(args.work.resolve())
            return 0
        digest = build(args.work.resolve(), args.dist.resolve(), args.source)
    except (BuildError, OSError, ValueError) as exc:
        log(f"error: {exc}")
        return 1
    sys.stdout.write(digest + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
