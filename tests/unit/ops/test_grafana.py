"""deploy/grafana/keyplane.json: import-ready, and every expression names a series keyplane exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from keyplane.bus import MemoryBus
from keyplane.ops import Ops
from keyplane.ops.network import HealthSampler, NetworkMetrics

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "keyplane.json"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                              "_created"), "gauge": ("",)}


def _exported() -> set[str]:
    """Every sample name a keyplane process's registry can produce."""
    ops = Ops("grafana-test")
    ops.add_readiness_check("bus", lambda: True)
    ops.add_readiness_check("store", lambda: True)
    NetworkMetrics(ops, MemoryBus())
    HealthSampler(ops)
    names = set()
    for family in ops.registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def _panels(doc: dict) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_dashboard_is_import_ready() -> None:
    doc = json.loads(DASHBOARD.read_text())
    (ds,) = doc["__inputs"]
    assert ds["pluginId"] == "prometheus" and ds["type"] == "datasource"
    panels = _panels(doc)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and doc["uid"] and doc["title"]
    for p in panels:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${" + ds["name"] + "}"
            assert p["targets"] and all(t["expr"] for t in p["targets"])


def test_every_expression_names_an_exported_series() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exported = _exported()
    used: set[str] = set()
    for p in _panels(doc):
        for t in p.get("targets", []):
            names = set(re.findall(r"\bkeyplane_[a-z0-9_]+\b", t["expr"]))
            assert names, t["expr"]
            used |= names
    assert used - exported == set()
    # the dashboard covers what issue 18 asks for: link, store, session, interface, health
    for needed in ("keyplane_link_skr_bps", "keyplane_link_qber", "keyplane_keystore_bits",
                   "keyplane_session_keys_per_second", "keyplane_session_queue_depth",
                   "keyplane_session_token_bucket_bits", "keyplane_http_requests_total",
                   "keyplane_bus_up", "keyplane_store_up"):
        assert needed in used
