"""deploy/k8s: Pod Security "restricted", ports that agree, egress walls.

Offline schema validation with kubernetes-validate (it bundles the Kubernetes
JSON schemas), the security fields asserted one by one, the relay range the
same in the config, the pod, the Service and the NetworkPolicy.
"""

import ipaddress
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from natkit.server.config import load_config

yaml = pytest.importorskip("yaml")

K8S = Path(__file__).parent.parent / "deploy" / "k8s"
DIGEST = "sha256:" + "ab" * 32
PLACEHOLDER = "IMAGE-DIGEST-PLACEHOLDER"
#: where deploy/image installs natkit (the image's PATH has its bin/)
NATKIT = "/opt/natkit/bin/natkit"


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec()["containers"]
    assert len(containers) == 1
    return containers[0]


def server_config() -> Any:
    text = one("ConfigMap")["data"]["natkit.toml"]
    return load_config(environ={}, overrides=tomllib.loads(text))


def relay_ports() -> set[int]:
    relay = server_config().relay_ports
    return set(range(relay.low, relay.high + 1))


# --- the files -------------------------------------------------------------------


def test_kinds_and_namespace() -> None:
    kinds = sorted(d["kind"] for d in documents())
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Service",
        "ServiceAccount",
    ]
    for doc in documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "natkit", doc["kind"]


def test_schemas_strict_offline() -> None:
    validator = pytest.importorskip("kubernetes_validate")
    version = validator.latest_version()
    for doc in documents():
        validator.validate(doc, version, strict=True)


# --- Pod Security "restricted" ------------------------------------------------


def test_namespace_enforces_restricted() -> None:
    labels = one("Namespace")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_pod_security_context() -> None:
    spec = pod_spec()
    context = spec["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host, False)


def test_container_security_context() -> None:
    context = container()["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in context["capabilities"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not context.get("privileged", False)


def test_writable_paths_are_volumes() -> None:
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    data_dir = str(server_config().data_dir)
    assert data_dir == "/var/lib/natkit"
    assert "persistentVolumeClaim" in volumes[mounts[data_dir]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    claim = volumes[mounts[data_dir]]["persistentVolumeClaim"]["claimName"]
    assert claim == one("PersistentVolumeClaim")["metadata"]["name"]


def test_probes_and_resources() -> None:
    spec = container()
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert spec[probe]["exec"]["command"] == [NATKIT, "health"], probe
    resources = spec["resources"]
    for key in ("cpu", "memory"):
        assert key in resources["requests"] and key in resources["limits"]


def test_command_serves_the_configmaps_config() -> None:
    command = container()["command"]
    assert command[:3] == [NATKIT, "serve", "--config"]
    assert "args" not in container()
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    assert Path(command[3]).parent == Path(mounts["config"])


# --- the image, by digest only ------------------------------------------------------


def test_image_by_digest_placeholder() -> None:
    spec = container()
    assert spec["image"] == f"natkit@sha256:{PLACEHOLDER}"
    env = {e["name"]: e["value"] for e in spec["env"]}
    assert env["NATKIT_IMAGE_DIGEST"] == f"sha256:{PLACEHOLDER}"


def test_render_fills_in_the_digest(tmp_path: Path) -> None:
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    out = tmp_path / "k8s"
    done = subprocess.run(
        ["sh", str(K8S / "render.sh"), DIGEST, "registry.example/natkit", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rendered = {p.name: p.read_text() for p in out.glob("*.yaml")}
    assert set(rendered) == {p.name for p in K8S.glob("*.yaml")}
    assert not any(PLACEHOLDER in text for text in rendered.values())
    deployment = yaml.safe_load(rendered["40-deployment.yaml"])
    spec = deployment["spec"]["template"]["spec"]["containers"][0]
    assert spec["image"] == f"registry.example/natkit@{DIGEST}"
    assert {"name": "NATKIT_IMAGE_DIGEST", "value": DIGEST} in spec["env"]


def test_render_reads_a_digest_file(tmp_path: Path) -> None:
    digest_file = tmp_path / "natkit-0.1.0.oci.digest"
    digest_file.write_text(DIGEST + "\n")
    out = tmp_path / "k8s"
    done = subprocess.run(
        ["sh", str(K8S / "render.sh"), str(digest_file), "natkit", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"natkit@{DIGEST}" in (out / "40-deployment.yaml").read_text()


@pytest.mark.parametrize("digest", ["", "sha256:abc", "latest", "sha256:" + "G" * 64])
def test_render_refuses_a_bad_digest(tmp_path: Path, digest: str) -> None:
    done = subprocess.run(
        ["sh", str(K8S / "render.sh"), digest, "natkit", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1


# --- ports: config, pod, Service, NetworkPolicy agree ------------------------------


def service_ports() -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for p in one("Service")["spec"]["ports"]}


def test_service_ports() -> None:
    expected = {("UDP", 3478), ("TCP", 3478), ("TCP", 5349)}
    expected |= {("UDP", port) for port in relay_ports()}
    assert service_ports() == expected
    assert len(relay_ports()) == 10
    assert one("Service")["spec"]["externalTrafficPolicy"] == "Local"


def test_container_ports_match_the_service() -> None:
    ports = {(p["protocol"], p["containerPort"]) for p in container()["ports"]}
    assert ports == service_ports()


def test_listeners_match_the_service() -> None:
    listeners = {
        ("UDP" if str(a.transport) == "udp" else "TCP", a.port)
        for a in server_config().listeners()
    }
    assert listeners == {("UDP", 3478), ("TCP", 3478), ("TCP", 5349)}


def test_ingress_only_the_service_ports() -> None:
    policy = one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    allowed: set[tuple[str, int]] = set()
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            last = port.get("endPort", port["port"])
            allowed |= {(port["protocol"], p) for p in range(port["port"], last + 1)}
    assert allowed == service_ports()


DENIED = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "::ffff:0:0/96",
]


def egress_blocks() -> list[dict[str, Any]]:
    rules = one("NetworkPolicy")["spec"]["egress"]
    assert len(rules) == 1 and "ports" not in rules[0]
    return [peer["ipBlock"] for peer in rules[0]["to"]]


@pytest.mark.parametrize("cidr", DENIED)
def test_egress_denies_private_and_metadata_ranges(cidr: str) -> None:
    network = ipaddress.ip_network(cidr)
    excepted = [
        ipaddress.ip_network(e)
        for block in egress_blocks()
        for e in block.get("except", [])
    ]
    assert any(
        network.version == e.version and network.subnet_of(e)  # type: ignore[arg-type]
        for e in excepted
    ), cidr


def test_egress_allows_the_internet() -> None:
    cidrs = {b["cidr"] for b in egress_blocks()}
    assert cidrs == {"0.0.0.0/0", "::/0"}
    for block in egress_blocks():
        whole = ipaddress.ip_network(block["cidr"])
        for cidr in block["except"]:
            assert ipaddress.ip_network(cidr).subnet_of(whole)  # type: ignore[arg-type]
    metadata = ipaddress.ip_address("169.254.169.254")
    public = ipaddress.ip_address("198.51.99.1")
    excepted = [ipaddress.ip_network(e) for e in egress_blocks()[0]["except"]]
    assert any(metadata in e for e in excepted)
    assert not any(public in e for e in excepted)
