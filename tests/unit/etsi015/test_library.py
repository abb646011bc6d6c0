"""The YANG library (RFC 8525 / RFC 7895) and module download (RFC 8040 §3.7), and the plain
ETSI model for clients that do not want keyplane's augment."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from etsi015_support import with_subject
from yangson import DataModel
from yangson.enumerations import ContentType, ValidationScope
from yangson.exceptions import YangsonException

from keyplane.api.etsi015 import (
    DEFAULT_CONTROLLER_SUBJECT,
    ROOT_MEMBER,
    AgentSettings,
    RestconfOptions,
    SdnAgent,
    create_agent_app,
    qkdl_id,
    qkdn_id,
)
from keyplane.api.etsi015.model import YANG_DIR, patch_when_conditions
from keyplane.config import Topology

PROV = "keyplane-qkd-provenance"
SESSION = "9b2f0f64-8d0e-4c39-a3b1-2b8f2b5d7a10"


async def _client(agent: SdnAgent, options: RestconfOptions | None = None
                  ) -> AsyncIterator[httpx.AsyncClient]:
    app = with_subject(create_agent_app(agent, options), DEFAULT_CONTROLLER_SUBJECT)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://km0:8443") as c:
        yield c


@pytest.fixture
async def full(agent: SdnAgent) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(agent):
        yield c


@pytest.fixture
async def plain(agent: SdnAgent) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(agent, RestconfOptions(keyplane_augment=False)):
        yield c


def _library_model(modules: dict[str, str], directory: Path) -> DataModel:
    """A yangson model of ``modules`` (name → revision) read from ``directory``."""
    library = {"ietf-yang-library:modules-state": {"module-set-id": "test", "module": [
        {"name": name, "revision": revision, "conformance-type": "implement",
         "namespace": re.search(r'namespace\s+"([^"]+)"',
                                (directory / f"{name}.yang").read_text()).group(1)}
        for name, revision in modules.items()]}}
    return DataModel(json.dumps(library), [str(directory)])


async def test_yang_library_is_rfc8525_and_valid(full: httpx.AsyncClient) -> None:
    r = await full.get("/restconf/yang-library-version")
    assert r.json() == {"ietf-restconf:yang-library-version": "2019-01-04"}
    r = await full.get("/restconf/data/ietf-yang-library:yang-library")
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "application/yang-data+json")
    doc = r.json()
    model = _library_model({"ietf-yang-library": "2019-01-04", "ietf-datastores": "2018-02-14",
                            "ietf-yang-types": "2013-07-15", "ietf-inet-types": "2013-07-15"},
                           YANG_DIR)
    model.from_raw(doc).validate(ValidationScope.all, ContentType.all)
    (module_set,) = doc["ietf-yang-library:yang-library"]["module-set"]
    implemented = {m["name"] for m in module_set["module"]}
    assert {"etsi-qkd-sdn-node", "etsi-qkd-node-types", PROV, "ietf-yang-library",
            "ietf-restconf-monitoring"} <= implemented
    assert {m["name"] for m in module_set["import-only-module"]} == {
        "ietf-yang-types", "ietf-inet-types", "ietf-datastores"}
    for m in module_set["module"] + module_set["import-only-module"]:
        assert m["location"] == [f"https://km0:8443/restconf/yang/{m['name']}@{m['revision']}"]


async def test_every_module_downloads_and_a_client_can_build_the_model_from_them(
        full: httpx.AsyncClient, agent: SdnAgent, tmp_path: Path) -> None:
    agent.datastore.set_hybrid_policy(SESSION, "either")  # the augment's state shows up
    state = (await full.get("/restconf/data/ietf-yang-library:modules-state")).json()
    modules = state["ietf-yang-library:modules-state"]["module"]
    for m in modules:
        r = await full.get(m["schema"].removeprefix("https://km0:8443"))
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/yang")
        assert re.search(rf"^module {re.escape(m['name'])} {{", r.text, re.M)
        assert f'revision "{m["revision"]}"' in r.text or f"revision {m['revision']}" in r.text
        assert r.text == (YANG_DIR / f"{m['name']}.yang").read_text()  # published text
        text = patch_when_conditions(r.text) if m["name"] == "etsi-qkd-sdn-node" else r.text
        (tmp_path / f"{m['name']}.yang").write_text(text)
    wanted = {m["name"]: m["revision"] for m in modules
              if not m["name"].startswith(("ietf-yang-library", "ietf-restconf", "ietf-data"))}
    model = _library_model(wanted, tmp_path)
    body = {"etsi-qkd-sdn-node:qkd_app": [{"app_id": SESSION, "server_app_id": "urn:x:a",
                                            "app_qos": {"max_bandwidth": 10}}]}
    assert (await full.post(f"/restconf/data/{ROOT_MEMBER}/qkd_applications",
                            json=body)).status_code == 201
    document = (await full.get(f"/restconf/data/{ROOT_MEMBER}")).json()
    assert PROV in json.dumps(document)
    model.from_raw(document).validate(ValidationScope.all, ContentType.all)  # every module the node uses came from the node


@pytest.mark.parametrize("path", ["/restconf/yang/etsi-qkd-sdn-node@1999-01-01",
                                  "/restconf/yang/no-such-module", "/restconf/yang/ietf-restconf"])
async def test_unknown_module_is_a_restconf_404(full: httpx.AsyncClient, path: str) -> None:
    r = await full.get(path)
    assert r.status_code == 404
    assert r.json()["ietf-restconf:errors"]["error"][0]["error-tag"] == "invalid-value"


async def test_plain_etsi_model_has_no_trace_of_the_augment(
        plain: httpx.AsyncClient, full: httpx.AsyncClient, agent: SdnAgent,
        tmp_path: Path) -> None:
    body = {"etsi-qkd-sdn-node:qkd_app": [{"app_id": SESSION, "server_app_id": "urn:x:a"}]}
    assert (await full.post(f"/restconf/data/{ROOT_MEMBER}/qkd_applications",
                            json=body)).status_code == 201
    agent.datastore.set_hybrid_policy(SESSION, "either")
    vlink = {"etsi-qkd-sdn-node:qkd_link": [{
        "qkdl_id": qkdl_id("v"), "qkdl_type": "etsi-qkd-node-types:VIRT",
        "virt_prev_hop": qkdn_id("km2"), "virt_next_hop": [qkdn_id("km3")]}]}
    assert (await full.post(f"/restconf/data/{ROOT_MEMBER}/qkd_links",
                            json=vlink)).status_code == 201
    agent.datastore.record_hop_source(qkdl_id("v"), "km0->km3", "pqc")
    assert PROV in (await full.get(f"/restconf/data/{ROOT_MEMBER}")).text

    lib = (await plain.get("/restconf/data/ietf-yang-library:yang-library")).json()
    assert PROV not in json.dumps(lib)
    assert (await plain.get(f"/restconf/yang/{PROV}@2026-11-24")).status_code == 404
    whole = (await plain.get(f"/restconf/data/{ROOT_MEMBER}")).json()
    assert PROV not in json.dumps(whole)
    app_path = f"/restconf/data/{ROOT_MEMBER}/qkd_applications/qkd_app={SESSION}"
    assert PROV not in (await plain.get(app_path)).text
    assert (await plain.get(f"{app_path}/{PROV}:provenance")).status_code == 404
    r = await plain.get(app_path, params={"fields": f"{PROV}:provenance"})
    assert r.status_code == 400
    # the plain answer validates against the ETSI modules alone (no keyplane module)
    for name in ("etsi-qkd-sdn-node", "etsi-qkd-node-types", "ietf-yang-types",
                 "ietf-inet-types"):
        text = (YANG_DIR / f"{name}.yang").read_text()
        (tmp_path / f"{name}.yang").write_text(
            patch_when_conditions(text) if name == "etsi-qkd-sdn-node" else text)
    etsi_only = _library_model({"etsi-qkd-sdn-node": "2022-01-30",
                                "etsi-qkd-node-types": "2022-01-30",
                                "ietf-yang-types": "2013-07-15",
                                "ietf-inet-types": "2013-07-15"}, tmp_path)
    etsi_only.from_raw(whole).validate(ValidationScope.all, ContentType.all)
    with pytest.raises(YangsonException, match=f"{PROV}:provenance"):
        etsi_only.from_raw((await full.get(f"/restconf/data/{ROOT_MEMBER}")).json()).validate(
            ValidationScope.all, ContentType.all)


def test_settings_choose_the_plain_model_per_deployment(topology: Topology) -> None:
    from keyplane.config import Etsi015Settings

    settings = AgentSettings.from_config(Etsi015Settings(keyplane_augment=False,
                                                         unqualified_top_member=True))
    assert settings == AgentSettings(keyplane_augment=False, unqualified_top_member=True)
    assert AgentSettings.from_config(topology.etsi015) == AgentSettings()


async def test_agent_settings_drive_the_default_listener(topology: Topology, memory_bus: Any,
                                                         clock: Any) -> None:
    from keyplane.events import EventStream

    settings = AgentSettings(keyplane_augment=False)
    async with SdnAgent("km0", topology, memory_bus, clock, EventStream(clock),
                        settings=settings) as agent:
        async for c in _client(agent):
            lib = (await c.get("/restconf/data/ietf-yang-library:modules-state")).json()
            assert PROV not in json.dumps(lib)
