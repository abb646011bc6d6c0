"""Kubernetes manifests for the distributed mode, rendered from a topology file.

``keyplane deploy kubernetes -t topo.yaml --certs DIR -o out/ --image IMG`` writes plain
manifests and a ``kustomization.yaml`` listing them (docs/deploy.md says why Kustomize and
not Helm: the topology file is the source of truth and only Python understands it; what an
operator wants to change per cluster, such as resources, storage class and image, is a
Kustomize patch on reviewable YAML):

* ``namespace.yaml``;
* ``config.yaml``: the topology (each node's ``address`` set to its Service's DNS name, which
  its certificate names) and nats-server's configuration (:mod:`keyplane.bus.natsconf`: TLS,
  client certificates of the keyplane CA, per-element permissions), as ConfigMaps: neither
  holds a secret;
* ``nats.yaml``, ``postgres.yaml`` (a StatefulSet with a PersistentVolumeClaim, its
  password from a Secret), ``controller.yaml`` and one ``node-<id>.yaml`` per node: each a
  workload and a Service, liveness on ``/healthz`` and readiness on ``/readyz`` (nats-server:
  its monitoring ``/healthz``; PostgreSQL: ``pg_isready``), requests and limits;
* ``secrets.yaml`` (mode 0600): every private key, certificate and key-encryption key, one
  Secret per element, so a pod mounts only its own (read-only, ``defaultMode`` 0400).

keyplane workloads are StatefulSets of one replica, never Deployments: a StatefulSet never
runs two pods of one ordinal at once, and two KMs of one node at once would hand out the
same link key twice. Their pods run as a non-root user with a read-only root file system;
an init container (``keyplane deploy install-credentials``) copies the mounted Secret into
the pod's memory-backed state folder as owner-only files, because the kubelet gives Secret
files to root, or to the pod's ``fsGroup`` with group read added, and keyplane refuses a
key-encryption key that anyone but its owner can read.

Rendering is pure (:func:`render`): topology, certificates folder and options in, documents
out; :func:`write_manifests` writes them.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field

from keyplane.config import Topology
from keyplane.errors import ConfigError
from keyplane.fileperms import ensure_private_dir, write_private

__all__ = [
    "KubernetesOptions",
    "Manifests",
    "Resources",
    "node_service_names",
    "render",
    "to_yaml",
    "write_manifests",
]

Document = dict[str, Any]
Port = Annotated[int, Field(ge=1, le=65535)]

STATE_DIR = "/var/lib/keyplane/state"
"""The state folder of a keyplane pod (in a memory-backed emptyDir)."""
CERTS_DIR = STATE_DIR + "/certs"
"""Where the init container lays the pod's credentials out (keyplane.certs layout)."""
SECRETS_MOUNT = "/etc/keyplane/secrets"
"""Where a keyplane pod's Secret is mounted read-only (the init container's source)."""
TOPOLOGY_FILE = "/etc/keyplane/topology/topology.yaml"
NATS_CERTS_DIR = "/etc/nats/certs"
NATS_CONFIG_DIR = "/etc/nats/config"
KEYPLANE_UID = 10001
"""The image's ``keyplane`` user (deploy/Dockerfile)."""
POSTGRES_UID = 70
"""The ``postgres`` user of the official Alpine PostgreSQL image."""
NATS_UID = 1000
"""Any non-root user: nats-server needs no privilege."""
RESERVED_NAMES = frozenset({"nats", "postgres", "keyplane-controller"})


class Resources(BaseModel):
    """CPU and memory requests and limits of one container (Kubernetes quantities)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_request: str = "100m"
    memory_request: str = "256Mi"
    cpu_limit: str = "1"
    memory_limit: str = "1Gi"

    def spec(self) -> Document:
        """The container's ``resources`` member."""
        return {"requests": {"cpu": self.cpu_request, "memory": self.memory_request},
                "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit}}


class KubernetesOptions(BaseModel):
    """What the rendered manifests need beyond the topology and the certificates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str
    """The keyplane image (deploy/Dockerfile), e.g. ``registry.example.org/keyplane:0.1.0``."""
    namespace: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
                         ] = "keyplane"
    image_pull_policy: str = "IfNotPresent"
    nats_image: str = "nats:2.10-alpine"
    postgres_image: str = "postgres:16-alpine"
    postgres_storage: str = "1Gi"
    """Size of PostgreSQL's PersistentVolumeClaim."""
    storage_class: str | None = None
    """StorageClass of that claim (None: the cluster's default)."""
    etsi014_port: Port = 8443
    """Each node's ETSI 014 server (ETSI 004 under ``/etsi004``)."""
    etsi015_port: Port = 8444
    """Each node's ETSI 015 agent."""
    northbound_port: Port = 8445
    """The controller's ETSI 015 northbound RESTCONF server."""
    ops_port: Port = 9100
    """``/healthz``, ``/readyz`` and ``/metrics`` of every keyplane process (plain HTTP)."""
    nats_port: Port = 4222
    nats_monitor_port: Port = 8222
    postgres_port: Port = 5432
    node_resources: Resources = Resources(cpu_request="250m", memory_request="384Mi",
                                          cpu_limit="2", memory_limit="1536Mi")
    controller_resources: Resources = Resources()
    nats_resources: Resources = Resources(cpu_request="50m", memory_request="64Mi",
                                          cpu_limit="1", memory_limit="256Mi")
    postgres_resources: Resources = Resources(cpu_request="100m", memory_request="256Mi",
                                              cpu_limit="1", memory_limit="1Gi")
    init_resources: Resources = Resources(cpu_request="10m", memory_request="64Mi",
                                          cpu_limit="500m", memory_limit="128Mi")

    def dns(self, service: str) -> str:
        """A Service's DNS name, resolvable from any namespace of the cluster."""
        return f"{service}.{self.namespace}.svc"


@dataclass
class Manifests:
    """Rendered documents by file name (``secrets.yaml`` holds every Secret)."""

    files: dict[str, list[Document]] = field(default_factory=dict)
    topology: Topology | None = None
    """The topology as deployed (node addresses set to their Services' DNS names)."""

    def documents(self) -> list[Document]:
        """Every document, in file order."""
        return [d for docs in self.files.values() for d in docs]


def _label(text: str) -> str:
    """``text`` as a DNS-1035 label (lower case, ``-``, starts with a letter)."""
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not s or not s[0].isalpha():
        s = "n-" + s
    return s[:63].rstrip("-")


def node_service_names(topology: Topology) -> dict[str, str]:
    """Each node's Service (and workload) name: its id as a DNS label.

    Raises:
        ConfigError: two nodes map to one name, or a node to a reserved one.
    """
    names: dict[str, str] = {}
    seen: dict[str, str] = {}
    for n in topology.nodes:
        name = _label(n.id)
        if name in RESERVED_NAMES:
            raise ConfigError(f"node {n.id!r}: its Service name {name!r} is reserved")
        if name in seen:
            raise ConfigError(f"nodes {seen[name]!r} and {n.id!r} both map to the Service "
                              f"name {name!r}: rename one")
        seen[name] = n.id
        names[n.id] = name
    return names


def _labels(component: str, topology: Topology, **extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "keyplane", "app.kubernetes.io/part-of": "keyplane",
            "app.kubernetes.io/instance": _label(topology.name),
            "app.kubernetes.io/component": component, **extra}


def _meta(name: str, opts: KubernetesOptions, labels: dict[str, str]) -> Document:
    return {"name": name, "namespace": opts.namespace, "labels": labels}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _secret(name: str, opts: KubernetesOptions, labels: dict[str, str],
            files: dict[str, Path | bytes]) -> Document:
    data = {k: _b64(v if isinstance(v, bytes) else v.read_bytes())
            for k, v in sorted(files.items())}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, opts, labels),
            "type": "Opaque", "immutable": False, "data": data}


def _cert_names(path: Path) -> set[str]:
    """The DNS names and IP addresses a certificate's SAN extension lists."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


def _require_names(cert: Path, names: Iterable[str], remove: str) -> None:
    missing = sorted(set(names) - _cert_names(cert))
    if missing:
        raise ConfigError(f"{cert} does not name {', '.join(missing)}, which clients will "
                          f"connect to: remove {remove} and render again to issue it anew "
                          f"(same CA and subject)")


def _probe(path: str, port: int, *, period_s: int = 10, failures: int = 6) -> Document:
    """An HTTP probe with bounds for a loaded node: 5 s per answer, a minute of failures."""
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period_s,
            "timeoutSeconds": 5, "failureThreshold": failures}


def _container_security() -> Document:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}


def _pod_security(uid: int) -> Document:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _service(name: str, opts: KubernetesOptions, labels: dict[str, str],
             selector: dict[str, str], ports: dict[str, int], *,
             headless: bool = False) -> Document:
    spec: Document = {"selector": selector,
                      "ports": [{"name": pname, "port": port, "targetPort": pname,
                                 "protocol": "TCP"} for pname, port in ports.items()]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, opts, labels),
            "spec": spec}


def _statefulset(name: str, opts: KubernetesOptions, labels: dict[str, str],
                 selector: dict[str, str], pod: Document,
                 claims: list[Document] | None = None) -> Document:
    spec: Document = {"serviceName": name, "replicas": 1, "selector": {"matchLabels": selector},
                      "podManagementPolicy": "Parallel",
                      "template": {"metadata": {"labels": labels}, "spec": pod}}
    if claims:
        spec["volumeClaimTemplates"] = claims
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": _meta(name, opts, labels), "spec": spec}


def _postgres_password(certs_dir: Path) -> bytes:
    """PostgreSQL's password, made once beside the certificates: PostgreSQL takes it only
    when it initialises its volume, so rendering again must not change it."""
    path = certs_dir / "postgres" / "password"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32))
    return path.read_bytes().strip()


def _keyplane_pod(opts: KubernetesOptions, *, secret: str, items: list[tuple[str, str]],
                  signers: list[str], args: list[str], ports: dict[str, int],
                  resources: Resources) -> Document:
    """A keyplane pod: the init container lays the Secret out as owner-only files in the
    memory-backed state folder, then the process runs as the image's non-root user."""
    mounts_init = [{"name": "credentials", "mountPath": SECRETS_MOUNT, "readOnly": True},
                   {"name": "state", "mountPath": "/var/lib/keyplane"}]
    mounts = [{"name": "state", "mountPath": "/var/lib/keyplane"},
              {"name": "topology", "mountPath": str(Path(TOPOLOGY_FILE).parent),
               "readOnly": True},
              {"name": "tmp", "mountPath": "/tmp"}]
    env = [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {
               "name": "postgres-credentials", "key": "password"}}},
           {"name": "PYTHONUNBUFFERED", "value": "1"}]
    return {
        "securityContext": _pod_security(KEYPLANE_UID),
        "automountServiceAccountToken": False,
        # ProcessSettings.shutdown_timeout_s (25 s) ends the process before the SIGKILL
        "terminationGracePeriodSeconds": 30,
        "initContainers": [{
            "name": "install-credentials", "image": opts.image,
            "imagePullPolicy": opts.image_pull_policy,
            "args": ["deploy", "install-credentials", "--from", SECRETS_MOUNT,
                     "--to", CERTS_DIR],
            "volumeMounts": mounts_init, "resources": opts.init_resources.spec(),
            "securityContext": _container_security()}],
        "containers": [{
            "name": "keyplane", "image": opts.image, "imagePullPolicy": opts.image_pull_policy,
            "args": args, "env": env,
            "ports": [{"name": pname, "containerPort": port, "protocol": "TCP"}
                      for pname, port in ports.items()],
            "livenessProbe": _probe("/healthz", opts.ops_port),
            "readinessProbe": _probe("/readyz", opts.ops_port, period_s=5),
            "resources": resources.spec(), "volumeMounts": mounts,
            "securityContext": _container_security()}],
        "volumes": [
            # the element's own Secret and the public signing certificates, laid out as
            # keyplane.certs does (a Secret's keys cannot hold '/')
            {"name": "credentials", "projected": {"defaultMode": 0o400, "sources": [
                {"secret": {"name": secret,
                            "items": [{"key": k, "path": p} for k, p in items]}},
                {"secret": {"name": "keyplane-signing-certs",
                            "items": [{"key": f, "path": f"sign/{f}"} for f in signers]}}]}},
            {"name": "state", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "topology", "configMap": {"name": "keyplane-topology"}}],
    }


def _common_args(opts: KubernetesOptions) -> list[str]:
    return ["-t", TOPOLOGY_FILE,
            "--bus", f"tls://{opts.dns('nats')}:{opts.nats_port}",
            # no password in the URL: asyncpg reads PGPASSWORD (from a Secret)
            "--db", f"postgresql+asyncpg://keyplane@{opts.dns('postgres')}:"
                    f"{opts.postgres_port}/keyplane",
            "-s", STATE_DIR, "--bind-host", "0.0.0.0", "--ops", f"0.0.0.0:{opts.ops_port}"]


def _signing_certs(certs_dir: Path) -> dict[str, Path]:
    """Every element's public signing certificate (``sign/*.pem``) by file name: receivers
    check signatures against them (keyplane.bus.auth)."""
    return {p.name: p for p in sorted((certs_dir / "sign").glob("*.pem"))}


def render(topology: Topology, certs_dir: Path, opts: KubernetesOptions) -> Manifests:
    """Render the manifests of ``topology`` with the credentials under ``certs_dir``.

    Missing certificates are issued first (:func:`keyplane.certs.ensure_network_certs`,
    with the Services' DNS names in their SANs); existing ones must already name them.

    Raises:
        ConfigError: a Service name clash, or an existing certificate without the DNS name
            clients will use.
    """
    from keyplane.bus.natsconf import render_nats_config
    from keyplane.certs import ensure_network_certs

    names = node_service_names(topology)
    deployed = topology.model_copy(update={"nodes": [
        n.model_copy(update={"address": opts.dns(names[n.id])}) for n in topology.nodes]})
    nats_names = ("nats", opts.dns("nats"))
    issued = ensure_network_certs(deployed, certs_dir, bus_hosts=nats_names)
    for n in deployed.nodes:
        _require_names(issued.kms[n.id].cert, [n.address],
                       f"km/{n.id}.pem and km/{n.id}.key (the KEK stays)")
    assert issued.nats_server is not None
    _require_names(issued.nats_server.cert, nats_names, "nats/server.pem and nats/server.key")

    out = Manifests(topology=deployed)
    out.files["namespace.yaml"] = [{
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": opts.namespace, "labels": {
            "app.kubernetes.io/part-of": "keyplane",
            # the pods below meet the restricted Pod Security Standard
            "pod-security.kubernetes.io/enforce": "restricted"}}}]
    topo_yaml = yaml.safe_dump(deployed.model_dump(mode="json", exclude_defaults=True),
                               sort_keys=False)
    nats_conf = render_nats_config(deployed, NATS_CERTS_DIR, host="0.0.0.0",
                                   port=opts.nats_port)
    # probes only: the monitoring port is not in the Service
    nats_conf += f"\nhttp: {opts.nats_monitor_port}\n"
    out.files["config.yaml"] = [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": _meta("keyplane-topology", opts, _labels("config", topology)),
         "data": {"topology.yaml": topo_yaml}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": _meta("nats-config", opts, _labels("nats", topology)),
         "data": {"nats.conf": nats_conf}}]
    out.files["nats.yaml"] = _nats(topology, opts)
    out.files["postgres.yaml"] = _postgres(topology, opts)
    signers = sorted(_signing_certs(certs_dir))
    out.files["controller.yaml"] = _controller(topology, opts, signers)
    for n in deployed.nodes:
        out.files[f"node-{names[n.id]}.yaml"] = _node(topology, opts, n.id, names[n.id],
                                                      signers, certs_dir)
    out.files["secrets.yaml"] = _secrets(topology, deployed, certs_dir, opts, names)
    return out


def _nats(topology: Topology, opts: KubernetesOptions) -> list[Document]:
    labels = _labels("nats", topology)
    selector = {"app.kubernetes.io/instance": labels["app.kubernetes.io/instance"],
                "app.kubernetes.io/component": "nats"}
    pod: Document = {
        "securityContext": _pod_security(NATS_UID),
        "automountServiceAccountToken": False,
        "containers": [{
            "name": "nats", "image": opts.nats_image,
            "imagePullPolicy": opts.image_pull_policy,
            "command": ["nats-server", "--config", f"{NATS_CONFIG_DIR}/nats.conf"],
            "ports": [{"name": "client", "containerPort": opts.nats_port, "protocol": "TCP"},
                      {"name": "monitor", "containerPort": opts.nats_monitor_port,
                       "protocol": "TCP"}],
            "livenessProbe": _probe("/healthz", opts.nats_monitor_port),
            "readinessProbe": _probe("/healthz", opts.nats_monitor_port, period_s=5),
            "resources": opts.nats_resources.spec(),
            "volumeMounts": [
                {"name": "config", "mountPath": NATS_CONFIG_DIR, "readOnly": True},
                {"name": "tls", "mountPath": NATS_CERTS_DIR, "readOnly": True}],
            "securityContext": _container_security()}],
        "volumes": [
            {"name": "config", "configMap": {"name": "nats-config"}},
            {"name": "tls", "secret": {"secretName": "nats-tls", "defaultMode": 0o400,
                                       "items": [{"key": "ca.pem", "path": "ca.pem"},
                                                 {"key": "server.pem",
                                                  "path": "nats/server.pem"},
                                                 {"key": "server.key",
                                                  "path": "nats/server.key"}]}}],
    }
    return [_service("nats", opts, labels, selector, {"client": opts.nats_port}),
            _statefulset("nats", opts, labels, selector, pod)]


def _postgres(topology: Topology, opts: KubernetesOptions) -> list[Document]:
    labels = _labels("postgres", topology)
    selector = {"app.kubernetes.io/instance": labels["app.kubernetes.io/instance"],
                "app.kubernetes.io/component": "postgres"}
    ready = {"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", "keyplane",
                                  "-d", "keyplane"]},
             "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6}
    security = _container_security()
    security["readOnlyRootFilesystem"] = False  # the image's entrypoint writes /var/run
    pod: Document = {
        "securityContext": _pod_security(POSTGRES_UID),
        "automountServiceAccountToken": False,
        "containers": [{
            "name": "postgres", "image": opts.postgres_image,
            "imagePullPolicy": opts.image_pull_policy,
            "env": [{"name": "POSTGRES_USER", "value": "keyplane"},
                    {"name": "POSTGRES_DB", "value": "keyplane"},
                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                    {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {
                        "name": "postgres-credentials", "key": "password"}}}],
            "ports": [{"name": "postgres", "containerPort": opts.postgres_port,
                       "protocol": "TCP"}],
            "livenessProbe": ready, "readinessProbe": {**ready, "periodSeconds": 5},
            "resources": opts.postgres_resources.spec(),
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
            "securityContext": security}],
    }
    claim: Document = {"metadata": {"name": "data", "labels": labels},
                       "spec": {"accessModes": ["ReadWriteOnce"],
                                "resources": {"requests": {"storage": opts.postgres_storage}}}}
    if opts.storage_class is not None:
        claim["spec"]["storageClassName"] = opts.storage_class
    return [_service("postgres", opts, labels, selector, {"postgres": opts.postgres_port}),
            _statefulset("postgres", opts, labels, selector, pod, [claim])]


def _controller(topology: Topology, opts: KubernetesOptions, signers: list[str]
                ) -> list[Document]:
    labels = _labels("controller", topology)
    selector = {"app.kubernetes.io/instance": labels["app.kubernetes.io/instance"],
                "app.kubernetes.io/component": "controller"}
    name = "keyplane-controller"
    ports = {"northbound": opts.northbound_port, "ops": opts.ops_port}
    items = [("ca.pem", "ca.pem"), ("controller.pem", "controller.pem"),
             ("controller.key", "controller.key"),
             ("sign.key", "sign/control.sdn-controller.key")]
    pod = _keyplane_pod(
        opts, secret=f"{name}-credentials", items=items, signers=signers,
        args=["controller", *_common_args(opts), "--advertise-host", opts.dns(name),
              "--northbound-port", str(opts.northbound_port)],
        ports=ports, resources=opts.controller_resources)
    return [_service(name, opts, labels, selector, ports),
            _statefulset(name, opts, labels, selector, pod)]


def _node(topology: Topology, opts: KubernetesOptions, node: str, name: str,
          signers: list[str], certs_dir: Path) -> list[Document]:
    labels = _labels("node", topology, **{"keyplane.io/node": name})
    selector = {"app.kubernetes.io/instance": labels["app.kubernetes.io/instance"],
                "app.kubernetes.io/component": "node", "keyplane.io/node": name}
    ports = {"etsi014": opts.etsi014_port, "etsi015": opts.etsi015_port, "ops": opts.ops_port}
    items = [("ca.pem", "ca.pem"), ("km.pem", f"km/{node}.pem"), ("km.key", f"km/{node}.key"),
             ("km.kek", f"km/{node}.kek"), ("sign.key", f"sign/km.{node}.key")]
    retired: list[str] = []
    if (certs_dir / "km" / f"{node}.kek.old").exists():  # a KEK rotation under way
        items.append(("km.kek.old", f"km/{node}.kek.old"))
        retired = ["--kek-retired", f"{CERTS_DIR}/km/{node}.kek.old"]
    pod = _keyplane_pod(
        opts, secret=f"keyplane-{name}-credentials", items=items, signers=signers,
        args=["node", "--id", node, *_common_args(opts), "--advertise-host", opts.dns(name),
              "--etsi014-port", str(opts.etsi014_port),
              "--etsi015-port", str(opts.etsi015_port),
              "--kek", f"{CERTS_DIR}/km/{node}.kek", *retired],
        ports=ports, resources=opts.node_resources)
    return [_service(name, opts, labels, selector, ports),
            _statefulset(name, opts, labels, selector, pod)]


def _secrets(topology: Topology, deployed: Topology, certs_dir: Path,
             opts: KubernetesOptions, names: dict[str, str]) -> list[Document]:
    from keyplane.certs import ensure_network_certs

    issued = ensure_network_certs(deployed, certs_dir)
    ca = issued.ca.cert
    docs = [
        _secret("keyplane-signing-certs", opts, _labels("credentials", topology),
                dict(_signing_certs(certs_dir))),
        _secret("postgres-credentials", opts, _labels("postgres", topology),
                {"password": _postgres_password(certs_dir)}),
    ]
    assert issued.nats_server is not None
    docs.append(_secret("nats-tls", opts, _labels("nats", topology),
                        {"ca.pem": ca, "server.pem": issued.nats_server.cert,
                         "server.key": issued.nats_server.key}))
    sign = issued.signing
    ctl = sign["control.sdn-controller"]
    docs.append(_secret("keyplane-controller-credentials", opts,
                        _labels("controller", topology),
                        {"ca.pem": ca, "controller.pem": issued.controller.cert,
                         "controller.key": issued.controller.key, "sign.key": ctl.key}))
    for n in deployed.nodes:
        km, s = issued.kms[n.id], sign[f"km.{n.id}"]
        files: dict[str, Path | bytes] = {"ca.pem": ca, "km.pem": km.cert, "km.key": km.key,
                                          "km.kek": issued.keks[n.id], "sign.key": s.key}
        old = certs_dir / "km" / f"{n.id}.kek.old"
        if old.exists():
            files["km.kek.old"] = old
        docs.append(_secret(f"keyplane-{names[n.id]}-credentials", opts,
                            _labels("node", topology, **{"keyplane.io/node": names[n.id]}),
                            files))
    for app in deployed.applications:
        sae = issued.saes[app.sae_id]
        docs.append(_secret(f"sae-{_label(app.sae_id)}-credentials", opts,
                            _labels("application", topology),
                            {"ca.pem": ca, "sae.pem": sae.cert, "sae.key": sae.key}))
    return docs


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people and kubectl: no anchors, multi-line text as ``|`` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(docs: Iterable[Document]) -> str:
    """The documents as one multi-document YAML text."""
    return "".join("---\n" + yaml.dump(d, Dumper=_Dumper, sort_keys=False) for d in docs)


def write_manifests(manifests: Manifests, out_dir: Path) -> list[Path]:
    """Write every file and a ``kustomization.yaml`` listing them; return their paths.

    Everything is written owner-only (``secrets.yaml`` holds private keys and KEKs).
    """
    ensure_private_dir(out_dir)
    written = []
    for fname, docs in manifests.files.items():
        written.append(write_private(out_dir / fname, to_yaml(docs)))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": list(manifests.files),
    }
    written.append(write_private(out_dir / "kustomization.yaml",
                                 "# generated by `keyplane deploy kubernetes`; docs/deploy.md\n"
                                 + yaml.safe_dump(kustomization, sort_keys=False)))
    return written
