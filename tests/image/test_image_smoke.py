"""Smoke test of the built image (``make image``): run it as a container would.

The layers of dist/natkit-<version>.oci.tar are unpacked into a temporary
root; the image's entry point then runs there under chroot as the image's
numeric user, with the root filesystem mounted read-only and tmpfs on the data
directory and /tmp (a private mount namespace, gone when the process ends). The
server listens on loopback only; the test and the image's own health check ask
it for a STUN Binding, then it is stopped with SIGTERM.

Skips when no image was built, when not root, or without unshare/chroot.
With NATKIT_IMAGE_REQUIRED=1 (CI after ``make image``) a missing image fails.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from natkit.health import HealthError, check

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# inside a private mount namespace: read-only root, tmpfs where the image may
# write, a minimal /dev, /proc; then chroot as the image's user, no groups
# (host tools by absolute path: the environment is the image's)
CONTAINER = """
set -e
r="$0" uid="$1" gid="$2" data="$3"; shift 3
{mount} --bind "$r" "$r"
{mount} -o remount,bind,ro "$r"
{mount} -t tmpfs -o "mode=0700,uid=$uid,gid=$gid" tmpfs "$r$data"
{mount} -t tmpfs -o mode=1777 tmpfs "$r/tmp"
{mount} -t proc proc "$r/proc"
{mount} -t tmpfs -o mode=0755 tmpfs "$r/dev"
for d in null zero full random urandom; do
    : > "$r/dev/$d"; {mount} --bind "/dev/$d" "$r/dev/$d"
done
exec {chroot} --userspec="$uid:$gid" --groups= "$r" "$@"
"""
HOST_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"


def _host_tool(name: str) -> str | None:
    return shutil.which(name, path=HOST_PATH)


@dataclass(frozen=True, slots=True)
class Unpacked:
    """The image's root filesystem and its config."""

    root: Path
    config: dict[str, Any]

    @property
    def user(self) -> tuple[str, str]:
        uid, gid = str(self.config["User"]).split(":")
        return uid, gid

    @property
    def env(self) -> dict[str, str]:
        return dict(str(item).split("=", 1) for item in self.config.get("Env", []))

    def command(self, argv: list[str], data_dir: str) -> list[str]:
        """``argv`` run inside the image, as its user, read-only."""
        uid, gid = self.user
        script = CONTAINER.format(
            mount=_host_tool("mount"), chroot=_host_tool("chroot")
        )
        return [
            _host_tool("unshare") or "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            script,
            str(self.root),
            uid,
            gid,
            data_dir,
            *argv,
        ]


def _archive() -> Path | None:
    override = os.environ.get("NATKIT_IMAGE")
    if override:
        return Path(override)
    init = (REPO / "src/natkit/__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', init, re.MULTILINE)
    version = match.group(1) if match else "0"
    path = REPO / "dist" / f"natkit-{version}.oci.tar"
    return path if path.exists() else None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("NATKIT_IMAGE_REQUIRED") == "1":
        pytest.fail(f"NATKIT_IMAGE_REQUIRED=1 but {reason}")
    pytest.skip(reason)


def _unpack(archive: Path, dest: Path) -> dict[str, Any]:
    """Apply the layers in order (no whiteouts: the image has one layer)."""
    with tarfile.open(archive) as outer:

        def blob(digest: str) -> Any:
            member = outer.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            assert member is not None, digest
            return member

        index = json.load(outer.extractfile("index.json") or blob(""))
        manifest = json.load(blob(index["manifests"][0]["digest"]))
        config: dict[str, Any] = json.load(blob(manifest["config"]["digest"]))
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=blob(layer["digest"]), mode="r|*") as tar:
                tar.extractall(dest, numeric_owner=True, filter="fully_trusted")
    return dict(config["config"])


@pytest.fixture(scope="module")
def image() -> Iterator[Unpacked]:
    archive = _archive()
    if archive is None or not archive.exists():
        _skip_or_fail("no image built (run `make image` first)")
    if os.geteuid() != 0:
        _skip_or_fail("needs root (mount namespaces, chroot)")
    for tool in ("unshare", "chroot", "mount"):
        if _host_tool(tool) is None:
            _skip_or_fail(f"{tool} not found")
    assert archive is not None
    with tempfile.TemporaryDirectory(prefix="natkit-image-") as tmp:
        root = Path(tmp, "rootfs")
        root.mkdir()
        config = _unpack(archive, root)
        yield Unpacked(root, config)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _data_dir(image: Unpacked) -> str:
    argv = list(image.config["Entrypoint"])
    return str(argv[argv.index("--data-dir") + 1])


@dataclass(frozen=True, slots=True)
class Server:
    process: "subprocess.Popen[bytes]"
    port: int
    log: Path


@pytest.fixture(scope="module")
def server(image: Unpacked) -> Iterator[Server]:
    """The image's entry point, listening on a free loopback UDP port."""
    port = _free_udp_port()
    argv = [*image.config["Entrypoint"], "--listen", f"udp:127.0.0.1:{port}"]
    with tempfile.NamedTemporaryFile(prefix="natkit-image-", suffix=".log") as log:
        process = subprocess.Popen(
            image.command(argv, _data_dir(image)),
            env=image.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(process, port, Path(log.name))
            yield Server(process, port, Path(log.name))
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_ready(process: "subprocess.Popen[bytes]", port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited {process.returncode}:\n{log.read_text()}")
        try:
            check("127.0.0.1", port, timeout=0.5)
            return
        except HealthError:
            time.sleep(0.2)
    pytest.fail(f"no STUN answer within {START_TIMEOUT} s:\n{log.read_text()}")


def test_entrypoint_answers_stun_binding(server: Server) -> None:
    result = check("127.0.0.1", server.port, timeout=2)
    assert result.mapped_ip == "127.0.0.1"
    assert result.mapped_port > 0


def test_image_health_check_passes(image: Unpacked, server: Server) -> None:
    test = list(image.config["Healthcheck"]["Test"])
    assert test[0] == "CMD"
    done = subprocess.run(
        image.command([*test[1:], "--port", str(server.port)], _data_dir(image)),
        env=image.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("ok: 127.0.0.1:")


def test_image_health_check_fails_without_server(image: Unpacked) -> None:
    test = list(image.config["Healthcheck"]["Test"])
    port = _free_udp_port()
    done = subprocess.run(
        image.command([*test[1:], "--port", str(port), "--timeout", "1"], "/tmp"),
        env=image.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.decode().startswith("natkit: error: health:")


def test_root_filesystem_is_read_only_and_has_no_shell(
    image: Unpacked, server: Server
) -> None:
    probe = (
        "import os\n"
        "try:\n"
        "    open('/opt/natkit/probe', 'w')\n"
        "except OSError as exc:\n"
        "    print('ro', exc.errno)\n"
        "print('uid', os.getuid(), os.getgid(), os.getgroups())\n"
        "print('sh', os.path.lexists('/bin/sh'))\n"
    )
    python = str(image.config["Entrypoint"][0]).rsplit("/", 1)[0] + "/python"
    done = subprocess.run(
        image.command([python, "-I", "-c", probe], _data_dir(image)),
        env=image.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=True,
    )
    uid, gid = image.user
    assert done.stdout.decode().split("\n")[:3] == [
        "ro 30",  # EROFS
        f"uid {uid} {gid} []",
        "sh False",
    ]


def test_server_stops_on_sigterm(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(STOP_TIMEOUT) == 0
    assert "stopped" in server.log.read_text()


def test_buildah_reads_and_runs_the_archive(image: Unpacked, tmp_path: Path) -> None:
    """containers/image tooling accepts the archive (digests, config) and runs
    it with chroot isolation as the image's user; its storage is temporary."""
    buildah = _host_tool("buildah")
    if buildah is None:
        _skip_or_fail("buildah not found")
    assert buildah is not None
    archive = _archive()
    assert archive is not None
    store = tmp_path / "containers"
    base = [buildah, "--root", str(store / "root"), "--runroot", str(store / "run")]
    base += ["--storage-driver", "vfs"]
    name = f"natkit-smoke-{os.getpid()}"

    def buildah_run(*args: str) -> str:
        done = subprocess.run(
            [*base, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    buildah_run("from", "--quiet", "--name", name, f"oci-archive:{archive}")
    try:
        config = json.loads(buildah_run("inspect", "--type", "container", name))
        oci_config = config["OCIv1"]["config"]
        assert oci_config["User"] == image.config["User"]
        assert oci_config["Entrypoint"] == image.config["Entrypoint"]
        user = str(image.config["User"])
        version = buildah_run(
            "run",
            "--isolation",
            "chroot",
            "--user",
            user,
            name,
            "--",
            str(image.config["Entrypoint"][0]),
            "--version",
        )
        assert version.startswith("natkit, version ")
    finally:
        subprocess.run([*base, "rm", name], capture_output=True, check=False)
        subprocess.run(
            [*base, "rmi", "--all", "--force"], capture_output=True, check=False
        )
        shutil.rmtree(store, ignore_errors=True)
