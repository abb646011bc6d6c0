"""The network's Prometheus series, folded from the messages elements publish on the bus."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.deadlines import DEADLINE_S

from keyplane.bus import MemoryBus, topics
from keyplane.messages import (
    KmTelemetry,
    LinkAlarm,
    LinkState,
    LinkTelemetry,
    StreamTelemetry,
)
from keyplane.ops import Ops
from keyplane.ops.network import SERIES, HealthSampler, NetworkMetrics


def _samples(ops: Ops) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(ops.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _value(ops: Ops, name: str, **labels: str) -> float | None:
    return _samples(ops).get((name, tuple(sorted(labels.items()))))


async def test_series_follow_link_km_and_alarm_messages() -> None:
    ops = Ops("test")
    m = NetworkMetrics(ops, MemoryBus())
    m.on_link_telemetry(LinkTelemetry(link_id="km0-km1", node="km0", block_id=1,
                                      secret_bits=4000, skr_bps=12_000.0, qber=0.02, t=1.0))
    m.on_link_telemetry(LinkTelemetry(link_id="km0-km1", node="km0", block_id=2,
                                      secret_bits=1000, skr_bps=3_000.0, qber=0.03, t=2.0))
    assert _value(ops, "keyplane_link_skr_bps", link="km0-km1") == 3000.0
    assert _value(ops, "keyplane_link_qber", link="km0-km1") == 0.03
    assert _value(ops, "keyplane_link_secret_bits_total", link="km0-km1") == 5000.0
    assert _value(ops, "keyplane_link_up", link="km0-km1") == 1.0
    # a state report carries the last rate; a window of aborted blocks has rate 0
    m.on_link_telemetry(LinkTelemetry(link_id="km0-km1", node="km0", state=LinkState.down,
                                      skr_bps=3000.0))
    assert _value(ops, "keyplane_link_up", link="km0-km1") == 0.0
    assert _value(ops, "keyplane_link_skr_bps", link="km0-km1") == 3000.0
    m.on_link_telemetry(LinkTelemetry(link_id="km0-km1", node="km0", block_id=3,
                                      skr_bps=0.0, qber=0.26))
    assert _value(ops, "keyplane_link_skr_bps", link="km0-km1") == 0.0
    # before any figure, a state report sets no rate
    m.on_link_telemetry(LinkTelemetry(link_id="km4-km5", node="km4", state=LinkState.down))
    assert _value(ops, "keyplane_link_skr_bps", link="km4-km5") is None

    fig = StreamTelemetry(pending_requests=2, bucket_bits=512.0, bucket_size_bits=1024,
                          keys_delivered=5, keys_per_s=0.5)
    m.on_km_telemetry(KmTelemetry(node="km0", buffer_bits={"km0-km1": 8192},
                                  sessions={"km0-km1": 1}, queued_requests=3,
                                  streams={"s-1": fig}))
    m.on_km_telemetry(KmTelemetry(node="km0", buffer_bits={"km0-km1": 4096},
                                  sessions={"km0-km1": 1}, queued_requests=0,
                                  streams={"s-1": fig.model_copy(update={"keys_delivered": 8})}))
    assert _value(ops, "keyplane_keystore_bits", node="km0", link="km0-km1") == 4096
    assert _value(ops, "keyplane_link_sessions", node="km0", link="km0-km1") == 1
    assert _value(ops, "keyplane_km_queue_depth", node="km0") == 0
    s1 = {"node": "km0", "session": "s-1"}
    assert _value(ops, "keyplane_session_keys_delivered_total", **s1) == 8
    assert _value(ops, "keyplane_session_keys_per_second", **s1) == 0.5
    assert _value(ops, "keyplane_session_queue_depth", **s1) == 2
    assert _value(ops, "keyplane_session_token_bucket_bits", **s1) == 512.0
    assert _value(ops, "keyplane_session_token_bucket_size_bits", **s1) == 1024
    # the session ended: its series go, the KM's stay
    m.on_km_telemetry(KmTelemetry(node="km0", buffer_bits={"km0-km1": 4096}))
    names = {name for name, labels in _samples(ops) if ("session", "s-1") in labels}
    assert names == set()

    m.on_alarm(LinkAlarm(link_id="km4-km5", kind="qber_high", qber=0.25, active=["qber_high"]))
    m.on_alarm(LinkAlarm(link_id="km4-km5", kind="key_rate_collapse",
                         active=["key_rate_collapse", "qber_high"]))
    assert _value(ops, "keyplane_link_alarm", link="km4-km5", kind="qber_high") == 1.0
    m.on_alarm(LinkAlarm(link_id="km4-km5", kind="cleared"))
    assert _value(ops, "keyplane_link_alarm", link="km4-km5", kind="qber_high") == 0.0
    assert _value(ops, "keyplane_link_alarm", link="km4-km5", kind="key_rate_collapse") == 0.0
    # a missed message: the next one's active kinds say what the link holds now
    m.on_alarm(LinkAlarm(link_id="km4-km5", kind="key_rate_collapse",
                         active=["eavesdropper_suspected", "key_rate_collapse"]))
    assert _value(ops, "keyplane_link_alarm", link="km4-km5",
                  kind="eavesdropper_suspected") == 1.0
    m.on_alarm(LinkAlarm(link_id="km4-km5", kind="link_down", active=["link_down"]))
    assert _value(ops, "keyplane_link_alarm", link="km4-km5", kind="link_down") == 1.0
    assert _value(ops, "keyplane_link_alarm", link="km4-km5",
                  kind="eavesdropper_suspected") == 0.0
    assert _value(ops, "keyplane_link_alarm", link="km4-km5", kind="key_rate_collapse") == 0.0


def test_a_session_that_never_had_a_key_also_loses_its_series_when_it_ends() -> None:
    ops = Ops("test")
    m = NetworkMetrics(ops, MemoryBus())
    waiting = StreamTelemetry(pending_requests=1, bucket_bits=0.0, bucket_size_bits=1024)
    m.on_km_telemetry(KmTelemetry(node="km4", streams={"s-2": waiting}))
    assert _value(ops, "keyplane_session_queue_depth", node="km4", session="s-2") == 1
    m.on_km_telemetry(KmTelemetry(node="km4"))
    assert not any(("session", "s-2") in labels for _, labels in _samples(ops))


async def test_a_node_process_exports_only_its_own_links_and_km() -> None:
    bus = MemoryBus()
    ops = Ops("node-km4")
    m = NetworkMetrics(ops, bus, links=["km4-km5", "km0-km4"], nodes=["km4"])
    await m.start()
    try:
        for lid in ("km4-km5", "km0-km1"):
            await bus.publish(topics.link_telemetry(lid), LinkTelemetry(
                link_id=lid, node="x", block_id=1, secret_bits=8, skr_bps=8.0, qber=0.01))
        for node in ("km4", "km0"):
            await bus.publish(topics.km_telemetry(node), KmTelemetry(
                node=node, buffer_bits={"km0-km4": 64}))
        await bus.publish(topics.alarm("km0-km1"), LinkAlarm(link_id="km0-km1", kind="link_down"))
        async with asyncio.timeout(DEADLINE_S):
            while _value(ops, "keyplane_keystore_bits", node="km4", link="km0-km4") is None \
                    or _value(ops, "keyplane_link_skr_bps", link="km4-km5") is None:
                await asyncio.sleep(0.01)  # poll interval; the timeout above bounds it
        seen = _samples(ops)
        assert not any(("link", "km0-km1") in labels for _, labels in seen)
        assert not any(("node", "km0") in labels for _, labels in seen)
    finally:
        await m.close()
        await bus.close()


async def test_health_series_sample_the_readiness_checks() -> None:
    ops = Ops("test")
    store_ok = True
    ops.add_readiness_check("bus", lambda: True)
    ops.add_readiness_check("store", lambda: store_ok)
    health = HealthSampler(ops, interval_s=3600.0)
    await health.sample()
    assert _value(ops, "keyplane_bus_up") == 1.0 and _value(ops, "keyplane_ready") == 1.0
    store_ok = False
    await health.sample()
    assert _value(ops, "keyplane_store_up") == 0.0 and _value(ops, "keyplane_ready") == 0.0
    assert _value(ops, "keyplane_bus_up") == 1.0


async def test_health_series_exist_only_for_the_checks_a_process_has() -> None:
    ops = Ops("device-km0-km1")  # a device without --bus: no bus, no database
    ops.add_readiness_check("device", lambda: True)
    health = HealthSampler(ops, interval_s=3600.0)
    await health.sample()
    names = {name for name, _ in _samples(ops)}
    assert "keyplane_ready" in names
    assert not names & {"keyplane_bus_up", "keyplane_store_up"}


def test_every_series_is_documented_in_operations_md() -> None:
    from pathlib import Path

    from keyplane.device.metrics import DEVICE_SERIES

    doc = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    missing = [name for name in [*SERIES, *DEVICE_SERIES] if name not in doc]
    assert missing == []
