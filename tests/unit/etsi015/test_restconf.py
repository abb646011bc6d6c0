"""The agent's RESTCONF API in process: reads, writes, errors, TeraFlowSDN-shaped requests."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from etsi015_support import assert_valid, with_subject

from keyplane.api.etsi015 import (
    DEFAULT_CONTROLLER_SUBJECT,
    ROOT_MEMBER,
    AgentSettings,
    SdnAgent,
    create_agent_app,
    qkdl_id,
    qkdn_id,
)
from keyplane.api.etsi015.model import identity
from keyplane.bus import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.events import EventStream
from keyplane.messages import LinkState

DATA = "/restconf/data/"
NODE = DATA + ROOT_MEMBER
LINKS = NODE + "/qkd_links"
APPS = NODE + "/qkd_applications"
VIRT_ID = qkdl_id("session:s-2-3")
APP_ID = "9b2f0f64-8d0e-4c39-a3b1-2b8f2b5d7a10"


def virt_entry(uid: str = VIRT_ID, **extra: Any) -> dict[str, Any]:
    entry = {"qkdl_id": uid, "qkdl_type": identity("VIRT"),
             "qkdl_local": {"qkdn_id": qkdn_id("km0")},
             "qkdl_remote": {"qkdn_id": qkdn_id("km3")},
             "virt_prev_hop": qkdn_id("km2"), "virt_next_hop": [qkdn_id("km3")],
             "virt_bandwidth": 5000}
    entry.update(extra)
    return entry


def app_entry(uid: str = APP_ID, **extra: Any) -> dict[str, Any]:
    entry = {"app_id": uid, "app_type": identity("CLIENT"),
             "server_app_id": "urn:keyplane:sae:sae2",
             "client_app_id": ["urn:keyplane:sae:sae3"], "app_priority": 3,
             "app_qos": {"max_bandwidth": 2000, "min_bandwidth": 100},
             "backing_qkdl_id": [VIRT_ID]}
    entry.update(extra)
    return entry


def assert_error(r: httpx.Response, status: int, tag: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/yang-data+json")
    (error,) = r.json()["ietf-restconf:errors"]["error"]
    assert error["error-tag"] == tag
    assert error["error-type"] in ("protocol", "application")
    assert error["error-message"]


async def whole(c: httpx.AsyncClient) -> dict[str, Any]:
    r = await c.get(NODE)
    assert r.status_code == 200
    return r.json()


# ---------------------------------------------------------------------------------- reads


async def test_get_whole_tree_is_valid_and_describes_the_node(controller_client, topology) -> None:
    r = await controller_client.get(NODE)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/yang-data+json")
    doc = r.json()
    assert_valid(doc)
    node = doc[ROOT_MEMBER]
    assert node["qkdn_id"] == qkdn_id("km0")
    assert node["qkdn_status"] == identity("OPERATING")
    links = node["qkd_links"]["qkd_link"]
    assert {x["qkdl_id"] for x in links} == {qkdl_id(x.link_id) for x in topology.links_of("km0")}
    assert len(node["qkd_interfaces"]["qkd_interface"]) == 5
    km1 = next(x for x in links if x["qkdl_id"] == qkdl_id("km0-km1"))
    assert km1["qkdl_remote"]["qkdn_id"] == qkdn_id("km1")
    assert km1["phys_channel_att"] == "3.000"  # 10 km * 0.2 dB/km + 1 dB insertion
    assert km1["qkdl_status"] == identity("PENDING")


async def test_get_datastore_root_returns_the_node(controller_client) -> None:
    r = await controller_client.get("/restconf/data")
    assert r.status_code == 200
    assert_valid(r.json())


@pytest.mark.parametrize("resource,member", [
    ("/qkdn_capabilities", "qkdn_capabilities"),
    ("/qkd_interfaces", "qkd_interfaces"),
    ("/qkd_links", "qkd_links"),
    ("/qkd_applications", "qkd_applications"),
    ("/qkd_interfaces/qkd_interface=2", "qkd_interface"),
    (f"/qkd_links/qkd_link={qkdl_id('km0-km1')}/qkdl_remote/qkdn_id", "qkdn_id"),
    ("/qkdn_capabilities/key_relay_mode_enable", "key_relay_mode_enable"),
])
async def test_get_subtrees_entries_and_leaves(controller_client, resource, member) -> None:
    r = await controller_client.get(NODE + resource)
    assert r.status_code == 200, r.text
    assert list(r.json()) == [f"etsi-qkd-sdn-node:{member}"]


async def test_get_list_entry_is_a_one_element_array(controller_client) -> None:
    r = await controller_client.get(NODE + "/qkd_interfaces/qkd_interface=2")
    (entry,) = r.json()["etsi-qkd-sdn-node:qkd_interface"]
    assert entry["qkdi_id"] == 2


async def test_get_content_config_and_nonconfig_split_the_tree(controller_client) -> None:
    config = (await controller_client.get(NODE, params={"content": "config"})).json()
    state = (await controller_client.get(NODE, params={"content": "nonconfig"})).json()
    assert "qkdn_status" not in config[ROOT_MEMBER]
    assert state[ROOT_MEMBER]["qkdn_status"] == identity("OPERATING")
    assert "qkdn_capabilities" not in state[ROOT_MEMBER]
    assert_valid(config)  # a complete configuration; the state part alone lacks qkdn_id


async def test_get_depth_limits_the_levels(controller_client) -> None:
    body = (await controller_client.get(NODE, params={"depth": "2"})).json()[ROOT_MEMBER]
    assert body["qkd_links"] == {} and body["qkdn_id"] == qkdn_id("km0")


async def test_restconf_root_and_yang_library_are_served(controller_client) -> None:
    root = (await controller_client.get("/restconf")).json()
    assert "ietf-restconf:restconf" in root
    lib = (await controller_client.get(DATA + "ietf-yang-library:modules-state")).json()
    names = {m["name"] for m in lib["ietf-yang-library:modules-state"]["module"]}
    assert {"etsi-qkd-sdn-node", "etsi-qkd-node-types"} <= names
    meta = await controller_client.get("/.well-known/host-meta")
    assert "rel='restconf'" in meta.text


# ---------------------------------------------------------------------------------- writes


async def test_post_strict_form_creates_virtual_link_with_location(controller_client) -> None:
    r = await controller_client.post(LINKS, json={"etsi-qkd-sdn-node:qkd_link": [virt_entry()]},
                                     headers={"content-type": "application/yang-data+json"})
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith(f"/qkd_links/qkd_link={VIRT_ID}")
    r = await controller_client.get(LINKS + f"/qkd_link={VIRT_ID}")
    (link,) = r.json()["etsi-qkd-sdn-node:qkd_link"]
    assert link["virt_next_hop"] == [qkdn_id("km3")] and link["virt_bandwidth"] == 5000
    doc = await whole(controller_client)
    assert_valid(doc)
    # the VIRT link reserves bandwidth on the PHYS links towards km2 and km3
    perf = {x["qkdl_id"]: x["qkdl_performance"] for x in doc[ROOT_MEMBER]["qkd_links"]["qkd_link"]}
    assert perf[qkdl_id("km0-km2")]["expected_consumption"] == 5000
    assert perf[qkdl_id("km0-km3")]["expected_consumption"] == 5000
    assert perf[qkdl_id("km0-km1")]["expected_consumption"] == 0


async def test_post_application_then_delete_it(controller_client) -> None:
    r = await controller_client.post(APPS, json={"etsi-qkd-sdn-node:qkd_app": [app_entry()]})
    assert r.status_code == 201, r.text
    (app,) = (await controller_client.get(APPS + f"/qkd_app={APP_ID}")).json()[
        "etsi-qkd-sdn-node:qkd_app"]
    assert app["app_status"] == identity("ON")
    assert app["creation_time"].endswith("Z")
    assert_valid(await whole(controller_client))
    r = await controller_client.delete(APPS + f"/qkd_app={APP_ID}")
    assert r.status_code == 204
    assert (await controller_client.get(APPS + f"/qkd_app={APP_ID}")).status_code == 404


async def test_put_creates_then_replaces_a_virtual_link(controller_client) -> None:
    url = LINKS + f"/qkd_link={VIRT_ID}"
    r = await controller_client.put(url, json={"etsi-qkd-sdn-node:qkd_link": [virt_entry()]})
    assert r.status_code == 201, r.text
    r = await controller_client.put(url, json={"etsi-qkd-sdn-node:qkd_link": [
        virt_entry(virt_bandwidth=7000)]})
    assert r.status_code == 204, r.text
    (link,) = (await controller_client.get(url)).json()["etsi-qkd-sdn-node:qkd_link"]
    assert link["virt_bandwidth"] == 7000


async def test_patch_merges_into_an_application(controller_client) -> None:
    await controller_client.post(APPS, json={"etsi-qkd-sdn-node:qkd_app": [app_entry()]})
    url = APPS + f"/qkd_app={APP_ID}"
    r = await controller_client.patch(url, json={"etsi-qkd-sdn-node:qkd_app": [
        {"app_id": APP_ID, "app_qos": {"max_bandwidth": 9000}}]})
    assert r.status_code == 204, r.text
    (app,) = (await controller_client.get(url)).json()["etsi-qkd-sdn-node:qkd_app"]
    assert app["app_qos"] == {"max_bandwidth": 9000, "min_bandwidth": 100}
    leaf = APPS + f"/qkd_app={APP_ID}/app_qos/ttl"
    r = await controller_client.put(leaf, json={"etsi-qkd-sdn-node:ttl": 30})
    assert r.status_code == 201
    assert (await controller_client.get(leaf)).json() == {"etsi-qkd-sdn-node:ttl": 30}


# ---------------------------------------------------------------------------------- errors


BAD_WRITES = [
    # (method, url, body or raw text, status, tag)
    ("POST", LINKS, "{not json", 400, "malformed-message"),
    ("POST", LINKS, "[1, 2]", 400, "malformed-message"),
    ("POST", LINKS, {"etsi-qkd-sdn-node:qkd_link": [virt_entry(virt_bandwidth=-1)]}, 400,
     "invalid-value"),
    ("POST", LINKS, {"etsi-qkd-sdn-node:qkd_link": [virt_entry(virt_bandwidth=2**32)]}, 400,
     "invalid-value"),
    ("POST", LINKS, {"etsi-qkd-sdn-node:qkd_link": [virt_entry(qkdl_id="not-a-uuid")]}, 400,
     "invalid-value"),
    ("POST", LINKS, {"etsi-qkd-sdn-node:qkd_link": [{"qkdl_id": VIRT_ID,
                                                     "qkdl_type": "etsi-qkd-node-types:QBER"}]},
     400, "invalid-value"),
    ("POST", LINKS, {"etsi-qkd-sdn-node:qkd_link": [virt_entry(phys_channel_att="3.000")]}, 400,
     "unknown-element"),
    ("POST", LINKS, {"etsi-qkd-sdn-node:qkd_link": [virt_entry(bogus=1)]}, 400, "unknown-element"),
    ("POST", LINKS, {"etsi-qkd-sdn-node:qkd_link": [{"qkdl_type": "etsi-qkd-node-types:VIRT"}]}, 400,
     "missing-element"),
    ("POST", LINKS, {"etsi-qkd-sdn-node:qkd_link": [virt_entry(qkdl_performance={"skr": 5})]}, 400,
     "unknown-element"),
    ("POST", LINKS, {"other-module:qkd_link": [virt_entry()]}, 400, "unknown-element"),
    ("POST", LINKS, {"etsi-qkd-sdn-node:qkd_link": [virt_entry(qkdl_id=qkdl_id("km0-km1"))]}, 409,
     "data-exists"),
    ("POST", DATA + "etsi-qkd-sdn-node:qkd_node/nothing", {"a": 1}, 404, "invalid-value"),
    ("POST", LINKS + f"/qkd_link={qkdl_id('km9-km8')}", {"qkdl_enable": False}, 404, "invalid-value"),
    ("DELETE", LINKS + f"/qkd_link={qkdl_id('nope')}", None, 404, "invalid-value"),
    ("DELETE", LINKS + f"/qkd_link={qkdl_id('km0-km1')}", None, 405, "operation-not-supported"),
    ("DELETE", NODE + "/qkd_interfaces/qkd_interface=1", None, 405, "operation-not-supported"),
    ("PATCH", NODE, {"etsi-qkd-sdn-node:qkd_node": {"qkdn_id": qkdn_id("km9")}}, 405,
     "operation-not-supported"),
    ("PUT", NODE + "/qkdn_status", {"etsi-qkd-sdn-node:qkdn_status": "etsi-qkd-node-types:DOWN"},
     405, "operation-not-supported"),
    ("PUT", LINKS + f"/qkd_link={VIRT_ID}", {"etsi-qkd-sdn-node:qkd_link": [
        virt_entry(qkdl_id=qkdl_id("other"))]}, 400, "invalid-value"),
    ("PUT", LINKS + f"/qkd_link={VIRT_ID}", {"etsi-qkd-sdn-node:qkd_app": [virt_entry()]}, 400,
     "unknown-element"),
    ("PUT", DATA, {"etsi-qkd-sdn-node:qkd_node": {}}, 405, "operation-not-supported"),
    ("DELETE", DATA, None, 405, "operation-not-supported"),
]


@pytest.mark.parametrize("method,url,body,status,tag", BAD_WRITES)
async def test_bad_write_answers_restconf_error_and_changes_nothing(
        controller_client, method, url, body, status, tag) -> None:
    before = await whole(controller_client)
    kwargs: dict[str, Any] = {}
    if isinstance(body, str):
        kwargs = {"content": body, "headers": {"content-type": "application/yang-data+json"}}
    elif body is not None:
        kwargs = {"json": body}
    r = await controller_client.request(method, url, **kwargs)
    assert_error(r, status, tag)
    assert await whole(controller_client) == before


@pytest.mark.parametrize("url,status,tag", [
    (DATA + "etsi-qkd-sdn-node:qkd_node/unknown", 404, "invalid-value"),
    (DATA + "nomodule:thing", 404, "invalid-value"),
    (LINKS + f"/qkd_link={qkdl_id('absent')}", 404, "invalid-value"),
    (LINKS + "/qkd_link=a,b", 400, "invalid-value"),
    (NODE + "/qkd_interfaces/qkd_interface=notanumber", 400, "invalid-value"),
    ("/restconf/nothing", 404, "invalid-value"),
])
async def test_bad_read_paths_answer_restconf_errors(controller_client, url, status, tag) -> None:
    assert_error(await controller_client.get(url), status, tag)


async def test_unsupported_query_parameter_is_invalid_value(controller_client) -> None:
    assert_error(await controller_client.get(NODE, params={"with-defaults": "report-all"}),
                 400, "invalid-value")
    assert_error(await controller_client.get(NODE, params={"depth": "0"}), 400, "invalid-value")
    assert_error(await controller_client.get(NODE + "?depth=2&depth=3"), 400, "invalid-value")


async def test_get_fields_selects_nodes_and_keeps_list_keys(controller_client) -> None:
    r = await controller_client.get(NODE, params={
        "fields": "qkdn_id;qkd_links/qkd_link(qkdl_type;qkdl_local/qkdn_id)"})
    assert r.status_code == 200, r.text
    body = r.json()[ROOT_MEMBER]
    assert set(body) == {"qkdn_id", "qkd_links"}
    links = body["qkd_links"]["qkd_link"]
    full = (await controller_client.get(LINKS)).json()["etsi-qkd-sdn-node:qkd_links"]
    assert len(links) == len(full["qkd_link"]) > 0
    for link in links:  # the key stays, so each entry is still named
        assert set(link) == {"qkdl_id", "qkdl_type", "qkdl_local"}
        assert set(link["qkdl_local"]) == {"qkdn_id"}
    assert all("qkdl_remote" in link for link in full["qkd_link"])  # what was left out
    # relative to the target resource; a module-qualified identifier is accepted too
    r = await controller_client.get(NODE + "/qkd_interfaces",
                                    params={"fields": "etsi-qkd-sdn-node:qkd_interface"})
    assert r.json()["etsi-qkd-sdn-node:qkd_interfaces"]["qkd_interface"]
    same = (await controller_client.get(LINKS, params={"fields": "qkd_link"})).json()
    assert same == {"etsi-qkd-sdn-node:qkd_links": full}


@pytest.mark.parametrize("expr", ["", "qkdn_id;", "qkd_links/(qkd_link)", "qkd_links(qkd_link",
                                  "qkdn_id)", "nothing_here", "qkd_links/qkd_link(no_leaf)",
                                  "other-module:qkdn_id"])
async def test_get_bad_fields_expression_is_invalid_value(controller_client, expr) -> None:
    assert_error(await controller_client.get(NODE, params={"fields": expr}), 400,
                 "invalid-value")


async def test_post_twice_is_data_exists_and_second_body_is_ignored(controller_client) -> None:
    body = {"etsi-qkd-sdn-node:qkd_link": [virt_entry()]}
    assert (await controller_client.post(LINKS, json=body)).status_code == 201
    before = await whole(controller_client)
    body2 = {"etsi-qkd-sdn-node:qkd_link": [virt_entry(virt_bandwidth=1)]}
    assert_error(await controller_client.post(LINKS, json=body2), 409, "data-exists")
    assert await whole(controller_client) == before


async def test_xml_media_type_is_refused(controller_client) -> None:
    r = await controller_client.post(LINKS, content="<qkd_link/>",
                                     headers={"content-type": "application/yang-data+xml"})
    assert_error(r, 415, "invalid-value")
    r = await controller_client.get(NODE, headers={"accept": "application/yang-data+xml"})
    assert_error(r, 406, "invalid-value")


async def test_writes_need_the_controller_certificate(agent) -> None:
    for subject in (None, "CN=alice,O=keyplane-demo"):
        app = with_subject(create_agent_app(agent), subject)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="https://km0") as c:
            assert (await c.get(NODE)).status_code == 200
            r = await c.post(LINKS, json={"etsi-qkd-sdn-node:qkd_link": [virt_entry()]})
            assert_error(r, 403, "access-denied")
            assert_error(await c.delete(LINKS + f"/qkd_link={VIRT_ID}"), 403, "access-denied")


async def test_controller_subject_is_configurable(topology: Topology, clock: VirtualClock) -> None:
    settings = AgentSettings(controller_subjects=frozenset({"CN=orchestrator,O=x"}))
    async with MemoryBus() as bus, SdnAgent("km1", topology, bus, clock, EventStream(clock),
                                            settings=settings) as agent:
        body = {"etsi-qkd-sdn-node:qkd_app": [app_entry()]}
        for subject, status in ((DEFAULT_CONTROLLER_SUBJECT, 403), ("CN=orchestrator,O=x", 201)):
            app = with_subject(create_agent_app(agent), subject)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="https://km1") as c:
                assert (await c.post(APPS, json=body)).status_code == status


# ---------------------------------------------------------------------------------- TeraFlowSDN


def tfs_virtual_link_body() -> dict[str, Any]:
    """Exactly what TeraFlowSDN's QKD driver (create_connectivity_link) posts."""
    link = {"qkdl_id": VIRT_ID, "qkdl_type": "etsi-qkd-node-types:VIRT",
            "qkdl_local": {"qkdn_id": qkdn_id("km0"), "qkdi_id": 2},
            "qkdl_remote": {"qkdn_id": qkdn_id("km3"), "qkdi_id": 1},
            "virt_prev_hop": qkdn_id("km2"), "virt_next_hop": [qkdn_id("km3")],
            "virt_bandwidth": 5000}
    return {"qkd_links": {"qkd_link": [link]}}


@pytest.mark.parametrize("unqualified", [False, True])
async def test_teraflow_driver_shaped_requests_succeed(topology, clock, unqualified) -> None:
    settings = AgentSettings(unqualified_top_member=unqualified)
    async with MemoryBus() as bus, SdnAgent("km0", topology, bus, clock, EventStream(clock),
                                            settings=settings) as agent:
        app = with_subject(create_agent_app(agent), DEFAULT_CONTROLLER_SUBJECT)
        # TFS uses `requests` with json=...: Content-Type application/json, trailing slashes
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="https://km0") as c:
            root = "/restconf/data/etsi-qkd-sdn-node:qkd_node/"
            r = await c.post(root + "qkd_links/", content=json.dumps(tfs_virtual_link_body()),
                             headers={"content-type": "application/json"})
            assert r.status_code in {200, 201, 202, 204}, r.text
            got = {}
            for resource in ("", "qkd_interfaces/", "qkd_links/", "qkd_applications/",
                             "qkdn_capabilities/"):
                r = await c.get(root + resource)
                assert r.status_code == 200, r.text
                got[resource] = r.json()
        prefix = "" if unqualified else "etsi-qkd-sdn-node:"
        # the parsing lines of TFS's config_getter, with the member names this mode serves
        interfaces = got["qkd_interfaces/"][prefix + "qkd_interfaces"]["qkd_interface"]
        assert all({"device", "port"} <= set(i["qkdi_att_point"]) for i in interfaces)
        links = got["qkd_links/"][prefix + "qkd_links"]["qkd_link"]
        assert VIRT_ID in {x["qkdl_id"] for x in links}
        node = got[""][prefix + "qkd_node"]
        assert node["qkdn_id"] == qkdn_id("km0")
        assert got["qkdn_capabilities/"][prefix + "qkdn_capabilities"]["key_relay_mode_enable"]
        assert_valid({ROOT_MEMBER: node})


async def test_teraflow_post_with_existing_link_is_data_exists(controller_client) -> None:
    url = "/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_links/"
    assert (await controller_client.post(url, json=tfs_virtual_link_body())).status_code == 201
    assert_error(await controller_client.post(url, json=tfs_virtual_link_body()), 409,
                 "data-exists")


# ---------------------------------------------------------------------------------- live data


async def test_live_performance_appears_in_get(agent, controller_client) -> None:
    agent.datastore.apply_telemetry("km0-km1", state=LinkState.up, skr_bps=4321.4, qber=0.0312,
                                    wall_s=agent.clock.wall())
    r = await controller_client.get(LINKS + f"/qkd_link={qkdl_id('km0-km1')}/qkdl_performance")
    perf = r.json()["etsi-qkd-sdn-node:qkdl_performance"]
    assert perf["skr"] == 4321 and perf["eskr"] == 4321
    assert perf["phys_perf"] == [{"perf_type": identity("QBER"), "value": "0.031"}]
    assert_valid(await whole(controller_client))
