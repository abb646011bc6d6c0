"""The rendered pods, run as local processes: what ``keyplane deploy kubernetes`` puts in
each pod is enough, and no more is needed.

For the controller and each node, the pod's Secret is laid out as the kubelet mounts it
(items of its projected volume, group-readable, behind ``..data``), the init container's
command copies it, and the container's own arguments start the process, with only what
cannot exist off-cluster changed: file paths, loopback addresses and free ports instead of
Service names and pinned ports, the test's PostgreSQL database. nats-server runs the
rendered configuration with the ``nats-tls`` Secret. Each process thus holds only its own
private keys and KEK; an ETSI 014 key then goes from an SAE on one node to an SAE on the
other, with the applications' ``sae-*`` Secrets.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyplane.api.client import ApiError, Etsi014Client
from keyplane.config import load_topology
from keyplane.deploy import KubernetesOptions, render, write_manifests
from keyplane.deploy.kubernetes import CERTS_DIR, NATS_CERTS_DIR, SECRETS_MOUNT, STATE_DIR
from keyplane.services import NatsServer, PostgresServer, free_port
from tests.support.deadlines import DEADLINE_S
from tests.support.processes import ROOT, keyplane_env, start_keyplane, stop

pytestmark = [pytest.mark.multiprocess, pytest.mark.nats, pytest.mark.postgres,
              pytest.mark.slow]

TOPOLOGY = """
name: pods
nodes: [{id: km0}, {id: km1}]
links: [{endpoints: [km0, km1], length_km: 5}]
users:
  - id: alice
    certificate_subject: "CN=alice,O=keyplane-demo"
    sla: {max_sessions: 2, max_bps: 100000, min_bps: 0, priority: 3, idle_timeout_s: 60,
          allowed_peers: [sae1]}
  - id: bob
    certificate_subject: "CN=bob,O=keyplane-demo"
    sla: {max_sessions: 2, max_bps: 100000, min_bps: 0, priority: 3, idle_timeout_s: 60,
          allowed_peers: [sae0]}
applications:
  - {sae_id: sae0, owner: alice, node: km0}
  - {sae_id: sae1, owner: bob, node: km1}
"""

Doc = dict[str, Any]


def _docs(out: Path) -> list[Doc]:
    docs: list[Doc] = []
    for f in sorted(out.glob("*.yaml")):
        if f.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def _named(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _mount_projected(volume: Doc, secrets: dict[str, Doc], root: Path) -> None:
    """Lay a projected Secret volume out as the kubelet does (group-readable files behind
    ``..data`` under an fsGroup)."""
    stamp = root / "..2026_12_04_00_00_00.1"
    for source in volume["projected"]["sources"]:
        data = secrets[source["secret"]["name"]]["data"]
        for item in source["secret"]["items"]:
            p = stamp / item["path"]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(base64.b64decode(data[item["key"]]))
            p.chmod(0o440)
    (root / "..data").symlink_to(stamp.name)
    for top in {p.name for p in stamp.iterdir()}:
        (root / top).symlink_to(Path("..data") / top)


def _localise(args: list[str], values: dict[str, str]) -> list[str]:
    """``args`` with the value after each flag in ``values`` replaced."""
    out = list(args)
    for flag, value in values.items():
        out[out.index(flag) + 1] = value
    return out


def test_rendered_pods_start_with_their_own_credentials_and_deliver_a_key(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(TOPOLOGY)
    out = tmp_path / "k8s"
    write_manifests(render(load_topology(topo_file), tmp_path / "pki",
                           KubernetesOptions(image="keyplane:test", namespace="t")), out)
    docs = _docs(out)
    secrets, sts = _named(docs, "Secret"), _named(docs, "StatefulSet")
    config = _named(docs, "ConfigMap")
    deployed = tmp_path / "deployed-topology.yaml"
    deployed.write_text(config["keyplane-topology"]["data"]["topology.yaml"])

    # nats-server: the rendered configuration, its Secret, a loopback port
    nats_dir = tmp_path / "nats"
    tls = secrets["nats-tls"]["data"]
    vol = next(v for v in sts["nats"]["spec"]["template"]["spec"]["volumes"]
               if v["name"] == "tls")
    for item in vol["secret"]["items"]:
        (nats_dir / "certs" / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (nats_dir / "certs" / item["path"]).write_bytes(base64.b64decode(tls[item["key"]]))
    port = free_port()
    conf = config["nats-config"]["data"]["nats.conf"]
    conf = conf.replace(NATS_CERTS_DIR, str(nats_dir / "certs"))
    conf = conf.replace('listen: "0.0.0.0:4222"', f'listen: "127.0.0.1:{port}"')
    conf = conf.replace("\nhttp: 8222\n", f"\nhttp: 127.0.0.1:{free_port()}\n")
    (nats_dir / "nats.conf").write_text(conf)
    nats = NatsServer.start(port, config=nats_dir / "nats.conf", certs_dir=nats_dir / "certs",
                            log=nats_dir / "nats.log")
    db_url = postgres_server.create_database("t_" + uuid.uuid4().hex[:12])
    procs: list[subprocess.Popen[str]] = []
    urls: dict[str, str] = {}
    try:
        for name, ready in [("keyplane-controller", "controller ready"),
                            ("km0", "node km0 ready"), ("km1", "node km1 ready")]:
            pod = sts[name]["spec"]["template"]["spec"]
            root = tmp_path / name
            state = root / "var-lib-keyplane" / "state"
            secret_mount = root / "secrets"
            secret_mount.mkdir(parents=True)
            _mount_projected(next(v for v in pod["volumes"] if v["name"] == "credentials"),
                             secrets, secret_mount)
            init = pod["initContainers"][0]["args"]
            assert init[init.index("--from") + 1] == SECRETS_MOUNT
            assert init[init.index("--to") + 1] == CERTS_DIR
            res = subprocess.run(
                [sys.executable, "-m", "keyplane",
                 *_localise(init, {"--from": str(secret_mount), "--to": str(state / "certs")})],
                capture_output=True, text=True, env=keyplane_env(), cwd=ROOT,
                timeout=DEADLINE_S)
            assert res.returncode == 0, res.stderr
            assert not (state / "certs" / "ca.key").exists()
            args = pod["containers"][0]["args"]
            assert args[args.index("-s") + 1] == STATE_DIR
            local = {"-t": str(deployed), "--bus": nats.url, "--db": db_url,
                     "-s": str(state), "--bind-host": "127.0.0.1",
                     "--advertise-host": "localhost", "--ops": "127.0.0.1:0"}
            if name == "keyplane-controller":
                local["--northbound-port"] = "0"
            else:
                # a free port for ETSI 014, learnt for the SAE below
                urls[name] = f"https://localhost:{(api := free_port())}"
                local |= {"--etsi014-port": str(api), "--etsi015-port": "0",
                          "--kek": str(state / "certs" / "km" / f"{name}.kek")}
            procs.append(start_keyplane(*_localise(args, local), ready=ready,
                                        log=root / "process.log"))

        # an application on each node, with only its own Secret
        def sae(sae_id: str, node: str) -> Etsi014Client:
            d = tmp_path / sae_id
            d.mkdir()
            for k, v in secrets[f"sae-{sae_id}-credentials"]["data"].items():
                (d / k).write_bytes(base64.b64decode(v))
            return Etsi014Client(urls[node], cert=d / "sae.pem", key=d / "sae.key",
                                 ca=d / "ca.pem", sae_id=sae_id, timeout_s=60.0)

        with sae("sae0", "km0") as master, sae("sae1", "km1") as slave:
            deadline = time.monotonic() + DEADLINE_S
            while True:  # until the link has made key and Admission Control knows the pair
                try:
                    keys = master.enc_keys("sae1", number=1, size=256)
                    break
                except ApiError as exc:
                    if exc.status_code != 503 or time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)  # an application's retry pace, not a synchronisation
            got = slave.dec_keys("sae0", [keys[0].key_id])
        assert got[0].key == keys[0].key and len(got[0].key) == 32
    finally:
        for p in reversed(procs):
            stop(p)
        nats.stop()
