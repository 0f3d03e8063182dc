"""The lab's topology and life cycle: addresses, rules, teardown in every case.

The first tests need no root (address plan, specs, rulesets, state files);
the rest build real namespaces and check that nothing is left behind: after a
normal exit, an exception in the ``with`` block, a failure half-way through
the build, SIGTERM, Ctrl-C, and a crash (found by ``Lab.cleanup_stale``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.lab import nat_rules, topology
from natkit.lab.nat_rules import NatSpec, NatType, RouterPlan, ruleset
from natkit.lab.netns import LabError
from natkit.lab.topology import Lab, LabState, plan_hosts

from .conftest import client, host_links, netns_names, prefix, start_server

PLAN = RouterPlan(
    wan_if="wan",
    lan_if="lan",
    wan_ip="203.0.113.101",
    lan_cidr="10.1.0.0/24",
    host_ip="10.1.0.2",
)


# --- no root needed ------------------------------------------------------------


def test_address_plan() -> None:
    hosts = plan_hosts("nk-1-", [NatSpec.of("open"), NatSpec.of("symmetric")])

    assert [h.netns for h in hosts] == ["nk-1-h1", "nk-1-h2"]
    assert [h.router_netns for h in hosts] == ["nk-1-r1", "nk-1-r2"]
    assert (hosts[0].ip, hosts[0].lan_cidr) == ("198.51.100.10", "198.51.100.8/29")
    assert hosts[0].public_ip == "198.51.100.10"
    assert (hosts[1].ip, hosts[1].gateway) == ("10.2.0.2", "10.2.0.1")
    assert hosts[1].router_wan_ip == "203.0.113.102"
    assert hosts[1].public_ip == "203.0.113.102"


@pytest.mark.parametrize("taken", ["203.0.113.7/24", "198.51.100.0/25", "203.0.0.0/8"])
def test_public_range_collision_refuses(taken: str) -> None:
    with pytest.raises(LabError, match="refusing to start"):
        plan_hosts("nk-1-", [NatSpec.of("full-cone")], [taken])


def test_private_collision_skips_subnet() -> None:
    specs = [NatSpec.of("full-cone"), NatSpec.of("symmetric")]
    hosts = plan_hosts("nk-1-", specs, ["10.1.0.0/16", "0.0.0.0/0", "127.0.0.1/8"])
    assert [h.lan_cidr for h in hosts] == ["10.2.0.0/24", "10.3.0.0/24"]


def test_bad_specs() -> None:
    with pytest.raises(LabError, match="unknown NAT type 'cone'"):
        NatSpec.of("cone")
    with pytest.raises(LabError, match="udp_timeout"):
        NatSpec(type=NatType.OPEN, udp_timeout=0)
    with pytest.raises(LabError, match="loss_percent"):
        NatSpec(type=NatType.OPEN, loss_percent=101)
    with pytest.raises(LabError, match="1..30 NATs"):
        plan_hosts("nk-1-", [])
    with pytest.raises(LabError, match="bad lab prefix"):
        Lab(["open"], name_prefix="Bad Prefix")


def test_rulesets_drop_and_never_reject() -> None:
    for nat in NatType:
        text = ruleset(NatSpec(type=nat), PLAN)
        assert "reject" not in text
        assert "chain input" in text and "policy drop" in text
    assert "fully-random" in ruleset(NatSpec.of("symmetric"), PLAN)
    assert "snat" not in ruleset(NatSpec.of("open"), PLAN)
    full = ruleset(NatSpec(type=NatType.FULL_CONE, udp_timeout=9), PLAN)
    assert "udp dport @mapped dnat to 10.1.0.2" in full and "timeout 9s" in full
    restricted = ruleset(NatSpec.of("restricted-cone"), PLAN)
    assert "ip saddr . udp dport @peers dnat" in restricted
    assert "dnat" not in ruleset(NatSpec.of("port-restricted-cone"), PLAN)


def test_expected_behaviours() -> None:
    assert NatType.OPEN.mapping is None
    assert NatType.SYMMETRIC.mapping is nat_rules.Behaviour.ADDRESS_AND_PORT_DEPENDENT
    assert NatType.RESTRICTED_CONE.filtering is nat_rules.Behaviour.ADDRESS_DEPENDENT
    assert NatType.FULL_CONE.port_allocation is nat_rules.PortAllocation.PRESERVING
    assert NatType.SYMMETRIC.port_allocation is nat_rules.PortAllocation.RANDOM


def test_state_round_trip() -> None:
    spec = NatSpec(type=NatType.RESTRICTED_CONE, udp_timeout=5, delay_ms=20)
    state = LabState(
        prefix="nk-1-",
        pid=1,
        detached=True,
        created=1.5,
        internet="nk-1-inet",
        namespaces=("nk-1-inet", "nk-1-r1", "nk-1-h1"),
        hosts=plan_hosts("nk-1-", [spec]),
    )
    assert LabState.from_json(state.to_json()) == state
    with pytest.raises(LabError, match="lab state version"):
        LabState.from_json("{}")
    with pytest.raises(LabError, match="bad lab state"):
        LabState.from_json('{"version": 1}')


# --- real namespaces -------------------------------------------------------------


def own_namespaces() -> list[str]:
    """Namespaces of this test process's labs (other runs may have their own)."""
    return [n for n in netns_names() if n.startswith(f"nk-{os.getpid()}-")]


@pytest.fixture
def clean_host() -> Iterator[None]:
    """Assert that the test leaves the namespaces and host links as it found them."""
    ns_before, links_before = own_namespaces(), host_links()
    yield
    assert own_namespaces() == ns_before
    assert host_links() == links_before


def lab_namespaces(pfx: str) -> list[str]:
    return [n for n in netns_names() if n.startswith(pfx)]


@pytest.mark.root
def test_topology_and_teardown(clean_host: None, lab_state_dir: Path) -> None:
    pfx = prefix("topo")
    with Lab([NatType.OPEN, NatType.SYMMETRIC], name_prefix=pfx) as lab:
        assert sorted(lab_namespaces(pfx)) == sorted(lab.namespaces)
        assert len(lab.namespaces) == 5
        assert (lab_state_dir / f"{pfx}.json").exists()

        # addresses where the plan says, nothing in the host namespace
        addrs = lab.exec("inet", ["ip", "-o", "-4", "addr", "show", "br0"]).stdout
        for ip in ("203.0.113.1/", *(f"{s}/" for s in lab.server_ips)):
            assert ip in addrs
        eth0 = lab.exec(lab.hosts[1], ["ip", "-o", "-4", "addr", "show", "eth0"])
        assert f"{lab.hosts[1].ip}/24" in eth0.stdout
        assert not any(link.startswith(("wan", "lan", "br0")) for link in host_links())

        # both hosts reach the internet, and the open host reaches the NATed one
        start_server(lab)
        assert client(lab, lab.hosts[0], "mapping")["seen"][0][0] == lab.hosts[0].ip
        assert client(lab, lab.hosts[1], "mapping")["seen"][0][0] == "203.0.113.102"
    assert lab_namespaces(pfx) == []
    assert not (lab_state_dir / f"{pfx}.json").exists()
    assert not lab.is_up
    lab.teardown()  # idempotent


@pytest.mark.root
def test_exception_in_block_tears_down(clean_host: None) -> None:
    pfx = prefix("exc")
    with pytest.raises(RuntimeError, match="boom"):
        with Lab([NatType.FULL_CONE], name_prefix=pfx) as lab:
            lab.popen("h1", ["sleep", "30"])
            raise RuntimeError("boom")
    assert lab_namespaces(pfx) == []


@pytest.mark.root
def test_failed_build_tears_down(
    clean_host: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = nat_rules.apply_nat
    calls: list[str] = []

    def fail_second(router: str, spec: NatSpec, plan: RouterPlan) -> None:
        calls.append(router)
        if len(calls) == 2:
            raise LabError("injected failure")
        real(router, spec, plan)

    monkeypatch.setattr(nat_rules, "apply_nat", fail_second)
    pfx = prefix("fail")
    with pytest.raises(LabError, match="injected failure"):
        Lab([NatType.FULL_CONE, NatType.SYMMETRIC], name_prefix=pfx).up()
    assert lab_namespaces(pfx) == []


@pytest.mark.root
def test_prefix_in_use_is_refused(clean_host: None) -> None:
    pfx = prefix("busy")
    with Lab([NatType.OPEN], name_prefix=pfx):
        with pytest.raises(LabError, match="in use"):
            Lab([NatType.OPEN], name_prefix=pfx).up()
        assert len(lab_namespaces(pfx)) == 3
    assert lab_namespaces(pfx) == []


@pytest.mark.root
def test_two_labs_side_by_side(clean_host: None) -> None:
    with Lab([NatType.SYMMETRIC], name_prefix=prefix("a")) as one:
        with Lab([NatType.SYMMETRIC], name_prefix=prefix("b")) as two:
            assert set(one.namespaces).isdisjoint(two.namespaces)
            start_server(two)
            assert client(two, two.hosts[0], "mapping")["seen"]


LAB_PROCESS = r"""
import sys, time
from natkit.lab.topology import Lab
lab = Lab(["port-restricted-cone"], name_prefix=sys.argv[1])
if sys.argv[2] == "detach":
    lab.up()
    lab.detach()
    print("up", flush=True)
    sys.exit(0)
with lab:
    print("up", flush=True)
    time.sleep(30)
"""


def lab_process(pfx: str, mode: str) -> subprocess.Popen[str]:
    """Start a separate Python process that builds a lab and says "up"."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAB_PROCESS, pfx, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=Lab.python_env(),
    )
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 20.0)
    line = proc.stdout.readline() if readable else ""
    if line.strip() != "up":
        proc.kill()
        pytest.fail(f"lab process did not come up: {proc.communicate()[1]}")
    return proc


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_tears_down(clean_host: None, sig: signal.Signals) -> None:
    pfx = prefix(f"sig{int(sig)}")
    proc = lab_process(pfx, "hold")
    assert len(lab_namespaces(pfx)) == 3

    proc.send_signal(sig)
    proc.communicate(timeout=20)

    assert proc.returncode != 0
    assert lab_namespaces(pfx) == []


@pytest.mark.root
def test_cleanup_stale_after_crash(clean_host: None, lab_state_dir: Path) -> None:
    pfx = prefix("crash")
    proc = lab_process(pfx, "hold")
    proc.kill()  # SIGKILL: no chance to clean up
    proc.communicate(timeout=10)
    assert len(lab_namespaces(pfx)) == 3
    assert (lab_state_dir / f"{pfx}.json").exists()

    removed = Lab.cleanup_stale()

    assert {f"{pfx}{n}" for n in ("inet", "r1", "h1")} <= set(removed)
    assert lab_namespaces(pfx) == []
    assert not (lab_state_dir / f"{pfx}.json").exists()


@pytest.mark.root
def test_cleanup_stale_without_state_file(clean_host: None) -> None:
    """A bare nk-<dead pid>-... namespace (no state file) is stale too."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"nk-{dead.pid}-orphan"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        Lab.cleanup_stale()  # (a concurrent test run may remove it first)
        assert name not in netns_names()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.mark.root
def test_detach_attach_down(clean_host: None) -> None:
    """``lab up`` in one process, ``exec`` and ``lab down`` from another."""
    pfx = prefix("det")
    proc = lab_process(pfx, "detach")
    proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert len(lab_namespaces(pfx)) == 3
    removed = Lab.cleanup_stale()  # detached labs are not stale
    assert not [n for n in removed if n.startswith(pfx)]
    assert len(lab_namespaces(pfx)) == 3

    labs = {state.prefix: state for state in Lab.list_labs()}
    assert labs[pfx].detached

    lab = Lab.attach(pfx)
    out = lab.exec(lab.hosts[0], ["ip", "-o", "-4", "addr", "show", "eth0"]).stdout
    assert lab.hosts[0].ip in out

    assert Lab.down(pfx) is True
    assert Lab.down(pfx) is False
    assert lab_namespaces(pfx) == []


@pytest.mark.root
def test_state_file_lists_namespaces_before_build(
    clean_host: None, lab_state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash during the build still leaves a state file naming every namespace."""
    seen: list[dict[str, object]] = []
    real = topology.Lab._build

    def spy(self: Lab) -> None:
        seen.append(json.loads((lab_state_dir / f"{self.prefix}.json").read_text()))
        real(self)

    monkeypatch.setattr(topology.Lab, "_build", spy)
    with Lab([NatType.OPEN], name_prefix=prefix("st")) as lab:
        pass
    assert seen and seen[0]["namespaces"] == list(lab.namespaces)
    assert seen[0]["pid"] == os.getpid()
