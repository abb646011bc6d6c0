"""``keyplane deploy kubernetes``: the paper's network rendered, every document checked
against the Kubernetes schemas (kubernetes-validate, offline), and what the manifests must
guarantee: probes, resources, Secrets only in Secrets, one pod one credential, names that
the certificates carry, the secured nats-server configuration."""

from __future__ import annotations

import base64
import stat
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from typer.testing import CliRunner

from keyplane.bus.natsconf import render_nats_config
from keyplane.certs import ensure_network_certs
from keyplane.cli import app
from keyplane.config import Topology, load_topology
from keyplane.deploy import KubernetesOptions, node_service_names, render, write_manifests
from keyplane.deploy.kubernetes import NATS_CERTS_DIR
from keyplane.errors import ConfigError
from keyplane.services import find_nats_server

PAPER = load_topology("paper_poc")
OPTS = KubernetesOptions(image="registry.example.org/keyplane:0.1.0", namespace="qkd")
# the oldest Kubernetes release still commonly served, and the newest schemas bundled
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Doc]]:
    """The paper's network rendered once with the CLI; (out dir, certs dir, documents)."""
    base = tmp_path_factory.mktemp("k8s")
    out, certs = base / "out", base / "certs"
    res = CliRunner().invoke(app, ["deploy", "kubernetes", "-t", "paper_poc", "--certs",
                                   str(certs), "-o", str(out), "--image", OPTS.image,
                                   "--namespace", OPTS.namespace])
    assert res.exit_code == 0, res.output
    docs = []
    for f in sorted(out.glob("*.yaml")):
        if f.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
    return out, certs, docs


def _of(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def test_every_document_validates_against_the_kubernetes_schemas(
        rendered: tuple[Path, Path, list[Doc]]) -> None:
    _, _, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert kinds == {"Namespace", "ConfigMap", "Secret", "Service", "StatefulSet"}
    for version in K8S_VERSIONS:
        for d in docs:
            kubernetes_validate.validate(d, version, strict=True)  # raises on any error


def test_a_schema_error_is_caught(rendered: tuple[Path, Path, list[Doc]]) -> None:
    """The check above can fail: an unknown member in a container is refused."""
    _, _, docs = rendered
    sts = dict(_of(docs, "StatefulSet")["km0"])
    broken = yaml.safe_load(yaml.safe_dump(sts))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_file_and_files_are_private(
        rendered: tuple[Path, Path, list[Doc]]) -> None:
    out, _, _ = rendered
    kust = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    files = {f.name for f in out.iterdir()} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    assert {"namespace.yaml", "config.yaml", "nats.yaml", "postgres.yaml", "controller.yaml",
            "secrets.yaml"} | {f"node-{n.id}.yaml" for n in PAPER.nodes} == files
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


def test_one_workload_and_service_per_node_advertising_its_service_name(
        rendered: tuple[Path, Path, list[Doc]]) -> None:
    _, _, docs = rendered
    sts, svcs = _of(docs, "StatefulSet"), _of(docs, "Service")
    assert set(sts) == {"nats", "postgres", "keyplane-controller"} | {n.id for n in PAPER.nodes}
    for n in PAPER.nodes:
        w = sts[n.id]
        assert w["spec"]["replicas"] == 1  # never two KMs of one node at once
        c = _pod(w)["containers"][0]
        args = c["args"]
        assert args[:3] == ["node", "--id", n.id]
        assert args[args.index("--advertise-host") + 1] == f"{n.id}.qkd.svc"
        assert args[args.index("--bind-host") + 1] == "0.0.0.0"
        assert args[args.index("--bus") + 1] == "tls://nats.qkd.svc:4222"
        db = args[args.index("--db") + 1]
        assert db == "postgresql+asyncpg://keyplane@postgres.qkd.svc:5432/keyplane"
        ports = {p["name"]: p["port"] for p in svcs[n.id]["spec"]["ports"]}
        assert ports == {"etsi014": OPTS.etsi014_port, "etsi015": OPTS.etsi015_port,
                         "ops": OPTS.ops_port}
        assert args[args.index("--etsi014-port") + 1] == str(OPTS.etsi014_port)
        assert args[args.index("--etsi015-port") + 1] == str(OPTS.etsi015_port)
        assert args[args.index("--ops") + 1] == f"0.0.0.0:{OPTS.ops_port}"
        # the Service selects exactly this node's pod
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in svcs[n.id]["spec"]["selector"].items())
        assert svcs[n.id]["spec"]["selector"]["keyplane.io/node"] == n.id
    ctl = _pod(sts["keyplane-controller"])["containers"][0]["args"]
    assert ctl[0] == "controller"
    assert ctl[ctl.index("--advertise-host") + 1] == "keyplane-controller.qkd.svc"


def test_every_container_has_probes_and_bounded_resources(
        rendered: tuple[Path, Path, list[Doc]]) -> None:
    _, _, docs = rendered
    for name, w in _of(docs, "StatefulSet").items():
        pod = _pod(w)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            res = c["resources"]
            assert set(res["requests"]) == {"cpu", "memory"}, name
            assert set(res["limits"]) == {"cpu", "memory"}, name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        for c in pod["containers"]:
            assert "livenessProbe" in c and "readinessProbe" in c, name
        if name in ("nats", "postgres"):
            continue
        c = pod["containers"][0]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": OPTS.ops_port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": OPTS.ops_port}
        assert _pod(w)["securityContext"]["runAsUser"] == 10001


def _secret_files(docs: list[Doc]) -> dict[str, dict[str, bytes]]:
    return {name: {k: base64.b64decode(v) for k, v in d["data"].items()}
            for name, d in _of(docs, "Secret").items()}


def test_secrets_only_in_secrets_mounted_read_only_0400(
        rendered: tuple[Path, Path, list[Doc]]) -> None:
    _, certs, docs = rendered
    secrets = _secret_files(docs)
    secret_values = [v for files in secrets.values() for k, v in files.items()
                     if k.endswith((".key", ".kek")) or k == "password"]
    assert len(secret_values) > 3 * len(PAPER.nodes)
    for name, cm in _of(docs, "ConfigMap").items():
        text = yaml.safe_dump(cm)
        assert "PRIVATE KEY" not in text, name
        for value in secret_values:
            assert value.decode(errors="replace").strip() not in text, name
    password = (certs / "postgres" / "password").read_bytes().strip()
    assert secrets["postgres-credentials"]["password"] == password
    for name, w in _of(docs, "StatefulSet").items():
        pod = _pod(w)
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            for e in c.get("env", []):  # a secret only by reference, never a literal
                assert "value" not in e or e["name"] not in ("PGPASSWORD",
                                                             "POSTGRES_PASSWORD")
            assert not any(password.decode() in str(a) for a in c.get("args", []))
        secret_vols = {v["name"] for v in pod.get("volumes", [])
                       if "secret" in v or "projected" in v}
        for v in pod.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["defaultMode"] == 0o400, name
            if "projected" in v:
                assert v["projected"]["defaultMode"] == 0o400, name
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            for m in c.get("volumeMounts", []):
                if m["name"] in secret_vols:
                    assert m["readOnly"] is True, (name, m)


def test_each_pod_mounts_only_its_own_private_keys(
        rendered: tuple[Path, Path, list[Doc]]) -> None:
    _, certs, docs = rendered
    secrets = _secret_files(docs)
    # the shared Secret holds public signing certificates only
    assert secrets["keyplane-signing-certs"]
    assert all(b"PRIVATE" not in v and k.endswith(".pem")
               for k, v in secrets["keyplane-signing-certs"].items())
    sts = _of(docs, "StatefulSet")
    for n in PAPER.nodes:
        vol = next(v for v in _pod(sts[n.id])["volumes"] if v["name"] == "credentials")
        sources = [s["secret"]["name"] for s in vol["projected"]["sources"]]
        assert sources == [f"keyplane-{n.id}-credentials", "keyplane-signing-certs"]
        own = secrets[f"keyplane-{n.id}-credentials"]
        assert own["km.key"] == (certs / "km" / f"{n.id}.key").read_bytes()
        assert own["km.kek"] == (certs / "km" / f"{n.id}.kek").read_bytes()
        assert own["sign.key"] == (certs / "sign" / f"km.{n.id}.key").read_bytes()
        assert "ca.key" not in own
        paths = {i["path"] for i in vol["projected"]["sources"][0]["secret"]["items"]}
        assert paths == {"ca.pem", f"km/{n.id}.pem", f"km/{n.id}.key", f"km/{n.id}.kek",
                         f"sign/km.{n.id}.key"}
    assert not any((certs / "ca.key").read_bytes() in v
                   for files in secrets.values() for v in files.values())


def test_topology_and_certificates_name_the_services(
        rendered: tuple[Path, Path, list[Doc]], tmp_path: Path) -> None:
    _, certs, docs = rendered
    cms = _of(docs, "ConfigMap")
    f = tmp_path / "topology.yaml"
    f.write_text(cms["keyplane-topology"]["data"]["topology.yaml"])
    deployed = load_topology(f)
    assert [n.id for n in deployed.nodes] == [n.id for n in PAPER.nodes]
    assert deployed.links == PAPER.links and deployed.applications == PAPER.applications
    for n in deployed.nodes:
        assert n.address == f"{n.id}.qkd.svc"
        cert = x509.load_pem_x509_certificate((certs / "km" / f"{n.id}.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert n.address in san.get_values_for_type(x509.DNSName)
    nats_cert = x509.load_pem_x509_certificate((certs / "nats" / "server.pem").read_bytes())
    san = nats_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "nats.qkd.svc" in san.get_values_for_type(x509.DNSName)


def test_nats_runs_the_bus_engineers_secured_configuration(
        rendered: tuple[Path, Path, list[Doc]], tmp_path: Path) -> None:
    """The ConfigMap is keyplane.bus.natsconf's text (plus the monitoring port for the
    probes), and nats-server accepts it with the certificates the Secret carries."""
    _, _, docs = rendered
    conf = _of(docs, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    deployed_file = tmp_path / "topology.yaml"
    deployed_file.write_text(_of(docs, "ConfigMap")["keyplane-topology"]["data"]
                             ["topology.yaml"])
    deployed = load_topology(deployed_file)
    assert conf == render_nats_config(deployed, NATS_CERTS_DIR, host="0.0.0.0",
                                      port=OPTS.nats_port) + f"\nhttp: {OPTS.nats_monitor_port}\n"
    assert "verify_and_map: true" in conf
    # lay the nats-tls Secret out as its volume would and let nats-server check the config
    tls = _secret_files(docs)["nats-tls"]
    sts = _of(docs, "StatefulSet")["nats"]
    vol = next(v for v in _pod(sts)["volumes"] if v["name"] == "tls")
    root = tmp_path / "nats-certs"
    for item in vol["secret"]["items"]:
        (root / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (root / item["path"]).write_bytes(tls[item["key"]])
    local = tmp_path / "nats.conf"
    local.write_text(conf.replace(NATS_CERTS_DIR, str(root)))
    res = subprocess.run([find_nats_server(), "-t", "-c", str(local)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_postgres_keeps_its_data_and_password(rendered: tuple[Path, Path, list[Doc]],
                                              tmp_path: Path) -> None:
    out, certs, docs = rendered
    pg = _of(docs, "StatefulSet")["postgres"]
    claims = pg["spec"]["volumeClaimTemplates"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == OPTS.postgres_storage
    env = {e["name"]: e for e in _pod(pg)["containers"][0]["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "postgres-credentials", "key": "password"}
    # rendering again (same certs folder) changes nothing: same password, same documents
    again = render(PAPER, certs, OPTS)
    write_manifests(again, tmp_path / "again")
    for f in out.iterdir():
        assert (tmp_path / "again" / f.name).read_text() == f.read_text(), f.name


def test_an_existing_certificate_without_the_service_name_is_refused(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ensure_network_certs(PAPER, certs)  # issued for 127.0.0.1 only, as `keyplane certs` did
    with pytest.raises(ConfigError, match=r"km0\.pem does not name km0\.qkd\.svc"):
        render(PAPER, certs, OPTS)
    res = CliRunner().invoke(app, ["deploy", "kubernetes", "-t", "paper_poc", "--certs",
                                   str(certs), "-o", str(tmp_path / "out"), "--image", "x"])
    assert res.exit_code == 2 and "does not name" in res.output
    assert not (tmp_path / "out").exists()


def test_node_ids_become_dns_labels_and_clashes_are_refused() -> None:
    topo = Topology.model_validate({"name": "Odd_Names", "nodes": [
        {"id": "KM_0"}, {"id": "9x"}, {"id": "b"}]})
    assert node_service_names(topo) == {"KM_0": "km-0", "9x": "n-9x", "b": "b"}
    clash = Topology.model_validate({"name": "c", "nodes": [{"id": "km-0"}, {"id": "KM_0"}]})
    with pytest.raises(ConfigError, match="both map"):
        node_service_names(clash)
    reserved = Topology.model_validate({"name": "c", "nodes": [{"id": "nats"}]})
    with pytest.raises(ConfigError, match="reserved"):
        node_service_names(reserved)


def test_bad_options_are_refused_with_exit_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["deploy", "kubernetes", "-t", "paper_poc", "--certs",
                                   str(tmp_path / "c"), "-o", str(tmp_path / "o"),
                                   "--image", "x", "--namespace", "Not_A_Namespace"])
    assert res.exit_code == 2 and "namespace" in res.output
    assert not (tmp_path / "o").exists()


def test_a_kek_rotation_gives_the_node_its_old_kek_beside_the_new(tmp_path: Path) -> None:
    certs = tmp_path / "pki"
    render(PAPER, certs, OPTS)
    old = (certs / "km" / "km1.kek").read_bytes()
    (certs / "km" / "km1.kek").rename(certs / "km" / "km1.kek.old")
    docs = render(PAPER, certs, OPTS).documents()
    secrets = _secret_files(docs)
    assert secrets["keyplane-km1-credentials"]["km.kek.old"] == old
    assert secrets["keyplane-km1-credentials"]["km.kek"] not in (old, b"")
    assert "km.kek.old" not in secrets["keyplane-km2-credentials"]
    sts = _of(docs, "StatefulSet")
    args = _pod(sts["km1"])["containers"][0]["args"]
    assert args[args.index("--kek-retired") + 1] == (
        "/var/lib/keyplane/state/certs/km/km1.kek.old")
    assert "--kek-retired" not in _pod(sts["km2"])["containers"][0]["args"]
    vol = next(v for v in _pod(sts["km1"])["volumes"] if v["name"] == "credentials")
    paths = {i["path"] for i in vol["projected"]["sources"][0]["secret"]["items"]}
    assert "km/km1.kek.old" in paths
