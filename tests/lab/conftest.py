"""Fixtures of the NAT lab tests: root/netns check, state directory, UDP tools.

Tests marked ``root`` are skipped, with the reason, when the process is not
root or cannot create a network namespace. The UDP tools are small Python
programs run inside the lab's namespaces with ``lab.exec``/``lab.popen``;
they talk only to the lab's own addresses.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit.lab.topology import Lab, LabHost

#: Ports of the UDP test server (on both server addresses).
PORTS = (3478, 3479)


@functools.cache
def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None if it can."""
    if sys.platform != "linux":
        return "the NAT lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces)"
    for tool in ("ip", "nft", "iptables", "sysctl", "conntrack"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs '{tool}' (not installed)"
    name = f"nk-{os.getpid()}-probe"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if add.returncode != 0:
        return f"'ip netns add' does not work here: {add.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip this directory's ``root`` tests, with the reason, where the lab can't run.

    (The hook sees every collected item, so it picks out its own directory.)
    """
    here = Path(__file__).parent
    reason = None
    for item in items:
        if item.get_closest_marker("root") is None or here not in item.path.parents:
            continue
        reason = reason or lab_unavailable()
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def lab_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private state directory, so tests never see other labs' state files."""
    path = tmp_path_factory.mktemp("lab-state")
    old = os.environ.get("NATKIT_LAB_STATE_DIR")
    os.environ["NATKIT_LAB_STATE_DIR"] = str(path)
    yield path
    if old is None:
        del os.environ["NATKIT_LAB_STATE_DIR"]
    else:
        os.environ["NATKIT_LAB_STATE_DIR"] = old


def prefix(tag: str) -> str:
    """A lab prefix unique to this test process and test (``nk-<pid>-<tag>-``)."""
    return f"nk-{os.getpid()}-{tag}-"


# The server: sockets on both server IPs x both ports. Requests are JSON:
#   {"op": "echo", "later": [s, ...]}  answer {"seen": [ip, port]} now and
#                                       again after each delay, same socket
#   {"op": "probe", "to": [ip, port]}  send {"from": [ip, port]} to "to" from
#                                       each other socket, then {"done": true}
#                                       from this socket after 0.2 s
SERVER = r"""
import heapq, json, select, socket, sys, time
ips, ports = sys.argv[1].split(","), [int(p) for p in sys.argv[2].split(",")]
socks = []
for ip in ips:
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, port))
        socks.append(s)
print("ready", flush=True)
timers = []
def send(s, msg, addr):
    s.sendto(json.dumps(msg).encode(), addr)
while True:
    wait = max(0.0, timers[0][0] - time.monotonic()) if timers else None
    for s in select.select(socks, [], [], wait)[0]:
        data, addr = s.recvfrom(2048)
        req = json.loads(data)
        if req["op"] == "echo":
            send(s, {"seen": list(addr)}, addr)
            for delay in req.get("later", []):
                heapq.heappush(timers, (time.monotonic() + delay, id(s), s, addr))
        elif req["op"] == "probe":
            to = tuple(req["to"])
            for other in socks:
                if other is not s:
                    send(other, {"from": list(other.getsockname())}, to)
            heapq.heappush(timers, (time.monotonic() + 0.2, -1, s, addr))
    while timers and timers[0][0] <= time.monotonic():
        _, tag, s, addr = heapq.heappop(timers)
        send(s, {"done": True} if tag == -1 else {"late": list(addr)}, addr)
"""

# The client: runs one scenario and prints one JSON line.
CLIENT = r"""
import json, socket, sys, time
scenario, s1, s2 = sys.argv[1], sys.argv[2], sys.argv[3]
P, Q = 3478, 3479
def sock():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    return s
def ask(s, dest, **req):
    s.settimeout(2.0)
    s.sendto(json.dumps({"op": "echo", **req}).encode(), dest)
    while True:
        data, src = s.recvfrom(2048)
        msg = json.loads(data)
        if "seen" in msg and src == dest:
            return msg["seen"]
def collect(s, until, stop_on_done=True):
    got = []
    while time.monotonic() < until:
        s.settimeout(max(0.01, until - time.monotonic()))
        try:
            data, src = s.recvfrom(2048)
        except socket.timeout:
            break
        msg = json.loads(data)
        got.append({"src": list(src), **msg})
        if stop_on_done and msg.get("done"):
            break
    return got
out = {}
if scenario == "mapping":
    s = sock()
    out["local"] = s.getsockname()[1]
    out["seen"] = [ask(s, d) for d in ((s1, P), (s2, P), (s1, Q))]
elif scenario == "filtering":
    s = sock()
    out["local"] = s.getsockname()[1]
    seen = ask(s, (s1, P))
    out["seen"] = seen
    s.sendto(json.dumps({"op": "probe", "to": seen}).encode(), (s1, P))
    got = collect(s, time.monotonic() + 3.0)
    out["from"] = [m["src"] for m in got if "from" in m]
    out["done"] = any(m.get("done") for m in got)
elif scenario == "timeout":
    short, long_ = float(sys.argv[4]), float(sys.argv[5])
    a, b = sock(), sock()
    ask(a, (s1, P), later=[short])
    ask(b, (s1, P), later=[long_])
    end = time.monotonic() + long_ + 1.0
    out["short"] = any("late" in m for m in collect(a, time.monotonic() + short + 1.0))
    out["long"] = any("late" in m for m in collect(b, end))
elif scenario == "rtt":
    s = sock()
    rtts = []
    for _ in range(int(sys.argv[4])):
        t = time.monotonic()
        ask(s, (s1, P))
        rtts.append((time.monotonic() - t) * 1000.0)
    out["rtt_ms"] = rtts
elif scenario == "loss":
    s = sock()
    n = int(sys.argv[4])
    for i in range(n):
        s.sendto(json.dumps({"op": "echo"}).encode(), (s1, P))
        time.sleep(0.002)
    out["replies"] = len(collect(s, time.monotonic() + 1.0, stop_on_done=False))
    out["sent"] = n
print(json.dumps(out), flush=True)
"""


def start_server(lab: Lab) -> subprocess.Popen[str]:
    """Start the UDP test server in the internet namespace; wait until bound."""
    argv = [sys.executable, "-c", SERVER, ",".join(lab.server_ips)]
    proc = lab.popen(
        "inet",
        [*argv, ",".join(str(p) for p in PORTS)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 10.0)
    line = proc.stdout.readline() if readable else ""
    if line.strip() != "ready":
        proc.kill()
        pytest.fail(f"UDP test server did not start: {proc.communicate()[1]}")
    return proc


def client(lab: Lab, host: LabHost, scenario: str, *args: object) -> dict[str, Any]:
    """Run one client scenario on ``host``; return its JSON result."""
    s1, s2 = lab.server_ips
    argv = [sys.executable, "-c", CLIENT, scenario, s1, s2, *map(str, args)]
    proc = lab.exec(host, argv, timeout=30)
    if proc.returncode != 0:
        pytest.fail(f"client {scenario} on {host.name} failed: {proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def host_links() -> list[str]:
    """Names of the host namespace's links."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def netns_names() -> list[str]:
    """Names of all network namespaces."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return sorted(line.split()[0] for line in out.stdout.splitlines() if line)
