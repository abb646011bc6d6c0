"""A keyplane network keyed by `keyplane device` processes over ETSI 014 with mutual TLS.

Two emulated QKD devices (one per link of the chain km0 - km1 - km2) run as their own
processes and serve ETSI 014; `keyplane run` takes every link key from them (the topology's
``source: {kind: etsi014, ...}``), never from its own emulation; an SAE pair at km0 and km2
then gets a key relayed through km1, identical at both SAEs, over the KMs' ETSI 014.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from keyplane.api.client import Etsi014Client, ServiceUnavailableError
from keyplane.config import parse_topology
from keyplane.events import EventType, read_jsonl
from tests.support.processes import start_keyplane, stop

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

READY_S = 180.0  # process start on a loaded machine (interpreter, imports, certificates)
KEYS_S = 120.0  # until the devices have produced key and the KMs hold it at both ends

CHAIN: dict[str, object] = {
    "version": 1,
    "name": "device-chain",
    "nodes": [{"id": "km0"}, {"id": "km1"}, {"id": "km2"}],
    "links": [{"endpoints": ["km0", "km1"], "length_km": 10, "protocol": "analytic"},
              {"endpoints": ["km1", "km2"], "length_km": 10, "protocol": "analytic"}],
    "users": [{"id": "alice", "certificate_subject": "CN=alice,O=keyplane-demo"},
              {"id": "bob", "certificate_subject": "CN=bob,O=keyplane-demo"}],
    "applications": [{"sae_id": "sae0", "owner": "alice", "node": "km0"},
                     {"sae_id": "sae2", "owner": "bob", "node": "km2"}],
}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("state")
    plain = state / "chain.yaml"
    plain.write_text(yaml.safe_dump(CHAIN))
    devices = []
    run = None
    try:
        for link in ("km0-km1", "km1-km2"):
            devices.append(start_keyplane(
                "device", "-t", str(plain), "--link", link, "-s", str(state),
                "--time-scale", "5", ready="ready", timeout_s=READY_S,
                log=state / f"device-{link}.log"))
        keyed = json.loads(json.dumps(CHAIN))
        for link in keyed["links"]:  # type: ignore[index, union-attr]
            link_id = "-".join(link["endpoints"])
            ends = json.loads((state / f"device-{link_id}.json").read_text())["ends"]
            link["source"] = {"kind": "etsi014", "keys_per_request": 16,
                              "poll_interval_s": 0.2,
                              "ends": {n: {"url": e["url"]} for n, e in ends.items()}}
        topo = state / "keyed.yaml"
        topo.write_text(yaml.safe_dump(keyed))
        parse_topology(topo.read_text())  # the keyed file is a valid topology
        run = start_keyplane("run", "-t", str(topo), "-s", str(state), ready="keyplane running",
                             timeout_s=READY_S, log=state / "run.log")
        yield state
    finally:
        codes = [stop(p) for p in ([run] if run else []) + devices]
        assert codes == [0] * len(codes)


def _until_keys(fn):  # type: ignore[no-untyped-def]
    """``fn()`` once the KMs hold device key (503 while the first blocks arrive)."""
    deadline = time.monotonic() + KEYS_S
    while True:
        try:
            return fn()
        except ServiceUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # polling another process, bounded by KEYS_S


def test_relayed_keys_from_devices_are_identical_at_both_saes(network: Path) -> None:
    with Etsi014Client.from_state(network, "sae0") as master, \
            Etsi014Client.from_state(network, "sae2") as slave:
        keys = _until_keys(lambda: master.enc_keys("sae2", number=4, size=256))
        got = slave.dec_keys("sae0", [k.key_id for k in keys])
    assert [(k.key_id, k.key) for k in got] == [(k.key_id, k.key) for k in keys]
    assert len({k.key for k in keys}) == 4 and all(len(k.key) == 32 for k in keys)
    events = read_jsonl(network / "events.jsonl")
    blocks = [e for e in events if e.type is EventType.link_block]
    # every link block of this network came from a device, none from keyplane's emulation
    assert blocks and all(e.data.get("source") == "etsi014" for e in blocks)
    assert {e.data["link"] for e in blocks} == {"km0-km1", "km1-km2"}
    relayed = [e for e in events if e.type is EventType.key_relayed]
    assert any(e.node == "km1" for e in relayed)


def test_each_device_serves_its_link_its_ends_and_its_etsi014_on_metrics(network: Path) -> None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    def series(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
            for s in fam.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    for link in ("km0-km1", "km1-km2"):
        ops = json.loads((network / f"device-{link}.json").read_text())["operations"]["ops"]
        a, b = link.split("-")

        def served(ops: str = ops, link: str = link, a: str = a, b: str = b) -> bool:
            s = series(ops)
            ok_014 = [labels for labels, n in s.get("keyplane_http_requests_total", {}).items()
                      if ("interface", "etsi014") in labels and ("status", "200") in labels
                      and n > 0]
            handed = s.get("keyplane_device_keys_delivered_total", {})
            return bool(ok_014) and all(
                handed.get((("link", link), ("node", n)), 0) > 0 for n in (a, b))

        _until(served)
        s = series(ops)
        assert s["keyplane_link_up"] == {(("link", link),): 1.0}
        assert s["keyplane_link_skr_bps"][(("link", link),)] > 0
        assert {labels for labels in s["keyplane_device_keys"]} == {
            (("kind", kind), ("link", link), ("node", n))
            for kind in ("stored", "unclaimed") for n in (a, b)}
        assert s["keyplane_process_info"] == {(("process", f"device-{link}"),): 1.0}
        # sampled every health interval (a scrape never waits on a check): the first sample
        # may predate the end of the start
        _until(functools.partial(lambda url: series(url).get("keyplane_ready") == {(): 1.0}, ops))
        assert "keyplane_store_up" not in s and "keyplane_bus_up" not in s  # it has neither
        assert (("interface", "etsi014"),) in s["keyplane_http_request_duration_seconds_count"]


def _until(pred) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + KEYS_S
    while not pred():
        assert time.monotonic() < deadline, "not within KEYS_S"
        time.sleep(0.2)  # polling another process, bounded by KEYS_S
