"""`keyplane run` as a real process; SAEs use the SDK over HTTPS with mutual TLS.

Everything is real here: the emulated BB84 links, the KMs and their relay, the control plane,
the ETSI 014/004 servers and the client SDK.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyplane.api.client import (
    BadRequestError,
    Etsi004Client,
    Etsi004StatusError,
    Etsi014Client,
    UnauthorizedError,
)
from keyplane.events import EventType, read_jsonl
from keyplane.services import free_port
from tests.support.deadlines import DEADLINE_S
from tests.support.processes import log_tail, start_keyplane, stop

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


OPS_PORT = free_port()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("state")
    proc = start_keyplane("run", "-t", str(ROOT / "examples" / "paper_poc.yaml"), "-s",
                          str(state), "--ops", f"127.0.0.1:{OPS_PORT}",
                          ready="keyplane running", log=state / "run.log")
    try:
        yield state
    finally:
        assert stop(proc) == 0, log_tail(proc)


def _retry(fn, timeout_s: float = DEADLINE_S):  # type: ignore[no-untyped-def]
    """Call ``fn`` until the KMs have link key (503 / status 2 while the links warm up;
    status 6 when none came within the request's timeout on a loaded machine)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except (Etsi004StatusError, Exception) as exc:
            if time.monotonic() > deadline or ("503" not in repr(exc) and \
                    getattr(exc, "status", None) not in (2, 6)):
                raise
            time.sleep(0.1)  # retry pace of a deadline-bounded retry


def test_run_relayed_014_keys_reach_only_the_named_slave_once(running: Path) -> None:
    with Etsi014Client.from_state(running, "sae2") as master, \
            Etsi014Client.from_state(running, "sae3") as slave, \
            Etsi014Client.from_state(running, "sae1") as other:
        keys = _retry(lambda: master.enc_keys("sae3", number=3, size=256))
        assert len(keys) == 3 and all(len(k.key) == 32 for k in keys)
        got = slave.dec_keys("sae2", [k.key_id for k in keys])
        assert [(k.key_id, k.key) for k in got] == [(k.key_id, k.key) for k in keys]
        with pytest.raises(BadRequestError):
            slave.dec_keys("sae2", [keys[0].key_id])  # each key once
        with pytest.raises(UnauthorizedError):
            other.dec_keys("sae2", [keys[1].key_id])  # not entitled
        status = master.status("sae3")
        assert status.source_KME_ID == "km2" and status.target_KME_ID == "km3"
    # the relayed keys crossed KM0 one-time-padded, and KM0 handed none to an application
    events = read_jsonl(running / "events.jsonl")
    ids = {k.key_id for k in keys}
    relayed = [e for e in events if e.type is EventType.key_relayed
               and ids & set(e.data.get("key_ids", []))]
    assert {e.node for e in relayed} >= {"km0"}
    delivered = [e for e in events if e.type is EventType.key_delivered
                 and ids & set(e.data.get("key_ids", []))]
    assert delivered and "km0" not in {e.node for e in delivered}


def test_run_004_stream_gives_both_ends_the_same_chunks(running: Path) -> None:
    sid = str(uuid.uuid4())
    with Etsi004Client.from_state(running, "sae4") as a, \
            Etsi004Client.from_state(running, "sae5") as b:
        import threading

        opened: dict[str, object] = {}
        t = threading.Thread(target=lambda: opened.update(b=b.open_connect("sae5", "sae4",
                                                                            key_stream_id=sid)))
        t.start()
        opened["a"] = a.open_connect("sae4", "sae5", key_stream_id=sid)
        t.join(30)
        assert opened["a"].key_stream_id == opened["b"].key_stream_id == sid  # type: ignore[attr-defined]
        for i in range(3):
            ka = _retry(lambda i=i: a.get_key(sid, i))
            kb = _retry(lambda i=i: b.get_key(sid, i))
            assert ka.key == kb.key and len(ka.key) > 0
        a.close_stream(sid)
        b.close_stream(sid)


def test_run_014_provenance_is_reported_and_can_be_required(running: Path) -> None:
    with Etsi014Client.from_state(running, "sae2") as master:
        keys = _retry(lambda: master.enc_keys(
            "sae3", number=1, extension_mandatory=[{"keyplane_provenance": "qkd-only"}]))
        hops = keys[0].extension["keyplane_provenance"]  # type: ignore[index]
        assert [h["source"] for h in hops] == ["qkd", "qkd"]  # two QKD hops via KM0
        # the user's SLA is qkd-only: a demand for combined QKD+PQC hops cannot be met
        with pytest.raises(BadRequestError) as exc:
            master.enc_keys("sae3", number=1,
                            extension_mandatory=[{"keyplane_provenance": "qkd-and-pqc"}])
        assert "extension_mandatory" in str(exc.value)
        with pytest.raises(BadRequestError):
            master.enc_keys("sae3", number=1, extension_mandatory=[{"acme_route": "direct"}])


def test_run_serves_health_readiness_and_metrics(running: Path) -> None:
    import httpx

    base = f"http://127.0.0.1:{OPS_PORT}"
    with Etsi014Client.from_state(running, "sae4") as sae4:
        _retry(lambda: sae4.status("sae5"))
    with httpx.Client(base_url=base, timeout=30.0) as c:
        assert c.get("/healthz").json()["status"] == "alive"
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"bus": "ok", "network": "ok", "store": "ok"}
        metrics = c.get("/metrics").text
    assert 'keyplane_process_info{process="run"} 1.0' in metrics
    assert 'keyplane_http_requests_total{interface="etsi014",method="GET",status="200"}' \
        in metrics
