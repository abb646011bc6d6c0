"""The keyplane-qkd-provenance augment: model, KM events → datastore, RESTCONF reads and writes."""

from __future__ import annotations

import copy
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from etsi015_support import assert_valid

from keyplane.api.etsi015 import (
    PROVENANCE_MEMBER,
    KmEventFeed,
    QkdApplication,
    SdnAgent,
    VirtualLink,
    YangInvalid,
    app_id,
    qkdl_id,
    qkdn_id,
    validate_node,
)
from keyplane.api.etsi015.model import ROOT_MEMBER, YANG_DIR, identity
from keyplane.events import EventType
from keyplane.keymanager.hybrid import count_provenance, hop_record

DATA = "/restconf/data/"
APPS = DATA + ROOT_MEMBER + "/qkd_applications"
SESSION = "5d0c6f4e-2a7b-4c19-9e0f-1b2c3d4e5f60"
APP = app_id(SESSION)
APP_URL = APPS + f"/qkd_app={APP}"
PROV_URL = APP_URL + "/" + PROVENANCE_MEMBER
VIRT = qkdl_id(f"session:{SESSION}")

# keys relayed km2 -> km0 (this node, km0, is the destination): the first two crossed
# km2->km0 on QKD, the third fell back to ML-KEM, the fourth was combined
KEY_PROVENANCE = [
    [hop_record("km3", "km2", "qkd"), hop_record("km2", "km0", "qkd")],
    [hop_record("km3", "km2", "qkd"), hop_record("km2", "km0", "qkd")],
    [hop_record("km3", "km2", "qkd"), hop_record("km2", "km0", "pqc")],
    [hop_record("km3", "km2", "qkd"), hop_record("km2", "km0", "combined")],
]


def km_event(agent: SdnAgent, kind: EventType, *, node: str = "km0", element: str = "km",
             session: str = SESSION, **data: Any) -> None:
    """Emit an event as node ``node``'s KM does."""
    agent.events.emit(kind, element, node=node, session=session, **data)


def deliver(agent: SdnAgent, provenances: list[list[dict[str, str]]], **kw: Any) -> None:
    """A ``key_delivered`` event as KeyManager._deliver emits it (256-bit keys)."""
    km_event(agent, EventType.key_delivered, bits=256 * len(provenances),
             key_count=len(provenances), provenance_counts=count_provenance(provenances), **kw)


@pytest.fixture
def fed_agent(agent: SdnAgent) -> SdnAgent:
    """The km0 agent, fed by its KM's events (as NodeRuntime wires it)."""
    feed = KmEventFeed(agent)
    agent.events.add_sink(feed)
    return agent


async def register_app(agent: SdnAgent) -> None:
    await agent.register_application(QkdApplication(
        APP, "urn:keyplane:sae:sae3", ("urn:keyplane:sae:sae0",), remote_qkdn_id=qkdn_id("km3"),
        backing_qkdl_ids=(VIRT,)))


def provenance_of(doc: dict[str, Any]) -> dict[str, Any]:
    (app,) = doc["etsi-qkd-sdn-node:qkd_app"]
    return app[PROVENANCE_MEMBER]


# ---------------------------------------------------------------------------------- model


def minimal(app_extra: dict[str, Any] | None = None,
            link_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    n1, n2 = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
    return {ROOT_MEMBER: {
        "qkdn_id": n1,
        "qkd_applications": {"qkd_app": [{"app_id": APP, **(app_extra or {})}]},
        "qkd_links": {"qkd_link": [{"qkdl_id": VIRT, "qkdl_type": identity("VIRT"),
                                    "virt_prev_hop": n1, "virt_next_hop": [n2],
                                    **(link_extra or {})}]}}}


GOOD = {"hybrid_policy": "either", "hop": [
    {"hop": "km2->km0", "qkd_keys": "2", "pqc_keys": "1", "combined_keys": "0",
     "last_source": "pqc"}]}


def test_module_is_in_the_yang_library_and_accepts_the_augment() -> None:
    assert (YANG_DIR / "keyplane-qkd-provenance.yang").is_file()
    validate_node(minimal({PROVENANCE_MEMBER: GOOD}, {PROVENANCE_MEMBER: {
        "hop": [{"hop": "km0->km3", "last_source": "combined"}]}}))


@pytest.mark.parametrize("mutate", [
    lambda p: p.update(hybrid_policy="pqc-only"),
    lambda p: p["hop"][0].update(qkd_keys=2),  # RFC 7951: uint64 is a JSON string
    lambda p: p["hop"][0].update(pqc_keys="-1"),
    lambda p: p["hop"][0].update(last_source="quantum"),
    lambda p: p["hop"][0].update(hop="km2 km0"),
    lambda p: p["hop"].append(dict(p["hop"][0])),  # duplicate key
    lambda p: p.update(bogus=1),
], ids=["policy", "uint64-number", "negative", "source", "hop-name", "duplicate", "unknown"])
def test_model_refuses_malformed_provenance(mutate: Any) -> None:
    bad = copy.deepcopy(GOOD)
    mutate(bad)
    with pytest.raises(YangInvalid):
        validate_node(minimal({PROVENANCE_MEMBER: bad}))


def test_model_allows_link_provenance_on_virt_links_only() -> None:
    doc = minimal(link_extra={PROVENANCE_MEMBER: {"hop": [{"hop": "km0->km3",
                                                            "last_source": "qkd"}]}})
    doc[ROOT_MEMBER]["qkd_links"]["qkd_link"][0]["qkdl_type"] = identity("PHYS")
    del doc[ROOT_MEMBER]["qkd_links"]["qkd_link"][0]["virt_prev_hop"]
    del doc[ROOT_MEMBER]["qkd_links"]["qkd_link"][0]["virt_next_hop"]
    with pytest.raises(YangInvalid):
        validate_node(doc)


def test_model_provenance_is_state_not_configuration() -> None:
    with pytest.raises(YangInvalid) as err:
        validate_node(minimal({PROVENANCE_MEMBER: GOOD}), config_only=True)
    assert err.value.tag == "unknown-element"


# ---------------------------------------------------------------------------------- feed


async def test_mixed_provenance_shows_in_get_of_the_qkd_app(fed_agent: SdnAgent,
                                                            controller_client) -> None:
    km_event(fed_agent, EventType.configured, role="destination", epoch=0,
             hybrid_policy="either")
    await register_app(fed_agent)
    deliver(fed_agent, KEY_PROVENANCE)
    r = await controller_client.get(APP_URL)
    assert r.status_code == 200, r.text
    assert provenance_of(r.json()) == {"hybrid_policy": "either",
                                       "exposed_to": ["km3", "km2", "km0"], "hop": [
        {"hop": "km3->km2", "qkd_keys": "4", "pqc_keys": "0", "combined_keys": "0",
         "last_source": "qkd"},
        {"hop": "km2->km0", "qkd_keys": "2", "pqc_keys": "1", "combined_keys": "1",
         "last_source": "combined"}]}
    # app_statistics still counts the bits of the same event
    assert fed_agent.datastore._apps[APP].period_bits == 4 * 256
    whole = (await controller_client.get(DATA + ROOT_MEMBER)).json()
    assert_valid(whole)


async def test_counters_accumulate_and_last_source_follows_the_last_key(
        fed_agent: SdnAgent, controller_client) -> None:
    await register_app(fed_agent)
    deliver(fed_agent, KEY_PROVENANCE[:1])
    deliver(fed_agent, [KEY_PROVENANCE[2], KEY_PROVENANCE[0]])  # pqc, then qkd again
    hop = provenance_of((await controller_client.get(APP_URL)).json())["hop"][1]
    assert hop == {"hop": "km2->km0", "qkd_keys": "2", "pqc_keys": "1", "combined_keys": "0",
                   "last_source": "qkd"}
    # one hop's leaf, by its key in the URI ("->" percent-encoded by the client)
    leaf = await controller_client.get(PROV_URL + "/hop=" + quote("km2->km0", safe="")
                                       + "/pqc_keys")
    assert leaf.json() == {"keyplane-qkd-provenance:pqc_keys": "1"}


async def test_provenance_before_the_qkd_app_exists_is_kept_for_it(
        fed_agent: SdnAgent, controller_client) -> None:
    """The controller creates the qkd_app off the critical path: keys may come first."""
    km_event(fed_agent, EventType.configured, role="source", epoch=0,
             hybrid_policy="at-least-qkd")
    deliver(fed_agent, KEY_PROVENANCE[:2])
    assert (await controller_client.get(APP_URL)).status_code == 404
    await register_app(fed_agent)
    prov = provenance_of((await controller_client.get(APP_URL)).json())
    assert prov["hybrid_policy"] == "at-least-qkd"
    assert [h["qkd_keys"] for h in prov["hop"]] == ["2", "2"]
    # a reroute re-creates the entry; the session's counters survive it
    await fed_agent.remove_application(APP)
    await register_app(fed_agent)
    assert provenance_of((await controller_client.get(APP_URL)).json()) == prov


async def test_events_of_other_nodes_elements_and_epochs_are_ignored(
        fed_agent: SdnAgent, controller_client) -> None:
    await register_app(fed_agent)
    km_event(fed_agent, EventType.configured, role="source", hybrid_policy="either")
    deliver(fed_agent, KEY_PROVENANCE[:1], node="km3")
    deliver(fed_agent, KEY_PROVENANCE[:1], element="admission")
    km_event(fed_agent, EventType.configured, node="km3", hybrid_policy="qkd-only")
    km_event(fed_agent, EventType.session_deleted, epoch=0, scope="epoch")  # a reroute
    assert provenance_of((await controller_client.get(APP_URL)).json()) == {
        "hybrid_policy": "either"}


async def test_session_end_drops_its_provenance(fed_agent: SdnAgent, controller_client) -> None:
    await register_app(fed_agent)
    km_event(fed_agent, EventType.configured, role="source", hybrid_policy="either")
    deliver(fed_agent, KEY_PROVENANCE)
    km_event(fed_agent, EventType.session_closed, reason="close")
    (app,) = (await controller_client.get(APP_URL)).json()["etsi-qkd-sdn-node:qkd_app"]
    assert PROVENANCE_MEMBER not in app
    assert fed_agent.datastore._provenance == {}


async def test_malformed_event_is_skipped_not_raised(fed_agent: SdnAgent,
                                                     controller_client) -> None:
    await register_app(fed_agent)
    km_event(fed_agent, EventType.configured, role="source", hybrid_policy="pqc-only")
    km_event(fed_agent, EventType.key_delivered, bits=256,
             provenance_counts=[
                 {"hop": "km2->km0", "key_count": {"qkd": "x"}, "last_source": "qkd"},
                 {"hop": "km2->km0", "key_count": {"laser": 1}, "last_source": "qkd"},
                 {"hop": "km2->km0", "key_count": {"qkd": 1}, "last_source": "laser"},
                 {"hop": "km2 km0", "key_count": {"qkd": 1}, "last_source": "qkd"},
                 "not-a-mapping"])
    (app,) = (await controller_client.get(APP_URL)).json()["etsi-qkd-sdn-node:qkd_app"]
    assert PROVENANCE_MEMBER not in app


async def test_virtual_link_shows_the_last_source_this_node_sent_on(
        fed_agent: SdnAgent, controller_client) -> None:
    km_event(fed_agent, EventType.key_relayed, hop="km0->km3", hop_source="qkd", key_count=2)
    km_event(fed_agent, EventType.key_relayed, hop="km0->km3", hop_source="pqc", key_count=1)
    await fed_agent.register_virtual_link(VirtualLink(VIRT, qkdn_id("km3"), qkdn_id("km2"),
                                                      (qkdn_id("km3"),), 1000))
    r = await controller_client.get(DATA + ROOT_MEMBER + f"/qkd_links/qkd_link={VIRT}/"
                                    + PROVENANCE_MEMBER)
    assert r.json() == {PROVENANCE_MEMBER: {"hop": [{"hop": "km0->km3",
                                                     "last_source": "pqc"}]}}
    # the PHYS links get none (the augment's when-condition)
    links = (await controller_client.get(DATA + ROOT_MEMBER + "/qkd_links")).json()
    with_prov = [x["qkdl_id"] for x in links["etsi-qkd-sdn-node:qkd_links"]["qkd_link"]
                 if PROVENANCE_MEMBER in x]
    assert with_prov == [VIRT]


async def test_content_config_leaves_provenance_out(fed_agent: SdnAgent,
                                                    controller_client) -> None:
    await register_app(fed_agent)
    deliver(fed_agent, KEY_PROVENANCE)
    config = (await controller_client.get(APP_URL, params={"content": "config"})).json()
    (app,) = config["etsi-qkd-sdn-node:qkd_app"]
    assert PROVENANCE_MEMBER not in app
    state = (await controller_client.get(APP_URL, params={"content": "nonconfig"})).json()
    (app,) = state["etsi-qkd-sdn-node:qkd_app"]
    assert app[PROVENANCE_MEMBER]["hop"][0]["hop"] == "km3->km2"


# ---------------------------------------------------------------------------------- writes


PROV_BODY = {PROVENANCE_MEMBER: {"hybrid_policy": "qkd-only"}}
WRITES = [
    ("PUT", PROV_URL, PROV_BODY, 405, "operation-not-supported"),
    ("PATCH", PROV_URL, PROV_BODY, 405, "operation-not-supported"),
    ("DELETE", PROV_URL, None, 405, "operation-not-supported"),
    ("POST", PROV_URL, {"keyplane-qkd-provenance:hop": [{"hop": "km2->km0"}]}, 405,
     "operation-not-supported"),
    ("POST", APP_URL, PROV_BODY, 405, "operation-not-supported"),
    ("PUT", PROV_URL + "/hybrid_policy", {"keyplane-qkd-provenance:hybrid_policy": "qkd-only"},
     405, "operation-not-supported"),
    ("PATCH", APP_URL, {"etsi-qkd-sdn-node:qkd_app": [{"app_id": APP, **PROV_BODY}]}, 400,
     "unknown-element"),
    ("PUT", APP_URL, {"etsi-qkd-sdn-node:qkd_app": [{"app_id": APP, **PROV_BODY}]}, 400,
     "unknown-element"),
    ("POST", APPS, {"etsi-qkd-sdn-node:qkd_app": [
        {"app_id": str(uuid.UUID(int=9)), **PROV_BODY}]}, 400, "unknown-element"),
]


@pytest.mark.parametrize("method,url,body,status,tag", WRITES,
                         ids=[f"{m}-{u.rsplit('/', 1)[-1][:24]}-{s}" for m, u, _, s, _ in WRITES])
async def test_write_of_provenance_is_refused_and_changes_nothing(
        fed_agent: SdnAgent, controller_client: httpx.AsyncClient, method: str, url: str,
        body: Any, status: int, tag: str) -> None:
    await register_app(fed_agent)
    km_event(fed_agent, EventType.configured, role="source", hybrid_policy="either")
    deliver(fed_agent, KEY_PROVENANCE)
    before = (await controller_client.get(DATA + ROOT_MEMBER)).json()
    r = await controller_client.request(method, url, **({"json": body} if body else {}))
    assert r.status_code == status, r.text
    (error,) = r.json()["ietf-restconf:errors"]["error"]
    assert error["error-tag"] == tag
    assert (await controller_client.get(DATA + ROOT_MEMBER)).json() == before
