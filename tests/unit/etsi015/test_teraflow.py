"""An unmodified TeraFlowSDN managing a node: its QKD driver's requests, replayed for real.

``TfsQkdDriverReplay`` sends, with ``requests`` (the library TeraFlowSDN's driver uses, so
credentials in the URL and ``.netrc`` behave as they would there), the request shapes of
TeraFlowSDN's ``QKDDriver2`` / ``Tools2`` (src/device/service/drivers/qkd/, mirror
efidvir/teraflowsdn at 6dd22b6210e7b942a8a8d8def0b8fb7044b06de6; docs/interop.md): same URLs
with their trailing slashes, ``json=`` bodies, ``verify=False``, ``raise_for_status``. Its
parsing repeats, in our words, what the driver does with each answer, so a test failing here
means TeraFlowSDN would not read the node. The server is a real RESTCONF server on port 0.
"""

from __future__ import annotations

import asyncio
import base64
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from etsi015_support import assert_valid, with_subject
from urllib3.exceptions import InsecureRequestWarning

from keyplane.api.etsi015 import (
    DEFAULT_CONTROLLER_SUBJECT,
    ROOT_MEMBER,
    RestconfOptions,
    SdnAgent,
    create_agent_app,
    qkdl_id,
    qkdn_id,
    read_credentials,
    serve_teraflowsdn,
)
from keyplane.bus import MemoryBus
from keyplane.certs import Issued, ensure_network_certs
from keyplane.clock import RealClock
from keyplane.config import TeraflowSdnListener, Topology, parse_topology
from keyplane.errors import ConfigError
from keyplane.events import EventStream

USER, PASSWORD = "tfs", "s3cret-Pass"


class TfsQkdDriverReplay:
    """TeraFlowSDN's QKD driver, as far as the wire and its parsing go (see the module
    docstring). ``root`` is what the driver builds: ``http://<address>:<port>``."""

    def __init__(self, root: str, *, headers: dict[str, str] | None = None) -> None:
        self.root = root
        self.headers = headers or {}
        self.timeout = 120  # the driver's default settings['timeout']

    def _get(self, url: str) -> Any:
        r = requests.get(url, timeout=self.timeout, verify=False, headers=self.headers,
                         auth=None)
        r.raise_for_status()
        return r.json()

    # QKDDriver2.Connect / GetInitialConfig: GET the node, keep r.json()['qkd_node']
    def initial_config(self) -> list[tuple[str, Any]]:
        data = self._get(self.root + "/restconf/data/etsi-qkd-sdn-node:qkd_node")
        return [("qkd_node", data.get("qkd_node", {}))] if isinstance(data, dict) else []

    # Tools2.config_getter: every GET goes under ".../etsi-qkd-sdn-node:qkd_node/"
    def _url(self, tail: str) -> str:
        return f"{self.root}/restconf/data/etsi-qkd-sdn-node:qkd_node/{tail}"

    def interfaces(self) -> list[tuple[str, dict[str, Any]]]:
        """fetch_interfaces with RESOURCE_ENDPOINTS: an endpoint per interface whose
        qkdi_att_point has device and port, named "<device>:<port>"."""
        data = self._get(self._url("qkd_interfaces/"))
        found = data.get("qkd_interfaces")
        items = found.get("qkd_interface", []) if isinstance(found, dict) else \
            data.get("qkd_interface", [])
        out = []
        for item in items:
            point = item.get("qkdi_att_point", {})
            if "device" in point and "port" in point:
                out.append((f"/endpoints/endpoint[{point['device']}:{point['port']}]", point))
        return out

    def links(self) -> list[tuple[str, dict[str, Any]]]:
        """fetch_links: iterate r.json().get('qkd_links', []) and keep dict items whose
        qkdl_type is the bare 'PHYS' or 'VIRT'."""
        data = self._get(self._url("qkd_links/"))
        out = []
        for item in data.get("qkd_links", []):
            if isinstance(item, dict) and item.get("qkdl_type", "Direct") in ("PHYS", "VIRT"):
                out.append((f"/link[{item.get('qkdl_id')}]", item))
        return out

    def apps(self) -> list[tuple[str, dict[str, Any]]]:
        """fetch_apps: r.json().get('qkd_applications', {}).get('qkd_app', [])."""
        data = self._get(self._url("qkd_applications/"))
        return [(f"/app[{a['app_id']}]", a)
                for a in data.get("qkd_applications", {}).get("qkd_app", [])]

    def capabilities(self) -> Any:
        """fetch_capabilities: the whole answer."""
        return self._get(self._url("qkdn_capabilities/"))

    def node(self) -> Any:
        """fetch_node (2022-2024 form): r.json().get('qkd_node', {})."""
        return self._get(self._url("")).get("qkd_node", {})

    # Tools2.create_connectivity_link: POST {'qkd_links': {'qkd_link': [link]}} to qkd_links/
    def create_link(self, uuid: str, src: str, src_if: Any, dst: str, dst_if: Any,
                    prev_hop: str | None = None, next_hops: list[str] | None = None,
                    bandwidth: int | None = None) -> requests.Response:
        virtual = bool(prev_hop or next_hops)
        link: dict[str, Any] = {
            "qkdl_id": uuid, "qkdl_type": "etsi-qkd-node-types:" + ("VIRT" if virtual else "PHYS"),
            "qkdl_local": {"qkdn_id": src, "qkdi_id": src_if},
            "qkdl_remote": {"qkdn_id": dst, "qkdi_id": dst_if}}
        if virtual:
            link.update(virt_prev_hop=prev_hop, virt_next_hop=next_hops or [],
                        virt_bandwidth=bandwidth)
        return requests.post(self._url("qkd_links/"), json={"qkd_links": {"qkd_link": [link]}},
                             timeout=self.timeout, verify=False, auth=None, headers={})


def _quietly(job: Any) -> Any:
    """Run ``job`` as TeraFlowSDN does: ``verify=False`` makes urllib3 warn on HTTPS."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)
        return job()


@pytest.fixture(scope="module")
def certs(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return ensure_network_certs(topology, tmp_path_factory.mktemp("certs"))


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "tfs-users"
    path.write_text(f"# controllers allowed on the TeraFlowSDN listener\n{USER}:{PASSWORD}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests honours proxy variables (trust_env); the node is on loopback."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


async def _agent_with_listener(topology: Topology, certs: Issued, listener: TeraflowSdnListener
                               ) -> AsyncIterator[tuple[SdnAgent, str]]:
    clock = RealClock()
    async with MemoryBus() as bus, SdnAgent("km0", topology, bus, clock,
                                            EventStream(clock)) as agent:
        server = await serve_teraflowsdn(agent, listener, server_cert=certs.kms["km0"],
                                         ca_file=certs.ca.cert)
        assert server is not None
        try:
            yield agent, server.url
        finally:
            await server.close()


@pytest.fixture
async def plain(topology: Topology, certs: Issued, credentials: Path
                ) -> AsyncIterator[tuple[SdnAgent, str]]:
    listener = TeraflowSdnListener(ports={"km0": 0}, credentials_file=credentials,
                                   danger_plain_http=True)
    async for served in _agent_with_listener(topology, certs, listener):
        yield served


def _with_userinfo(url: str) -> str:
    """The driver's root when the device address is ``user:password@host``."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{USER}:{PASSWORD}@{rest}"


async def test_driver_reads_and_configures_a_node_with_credentials_in_its_address(
        plain: tuple[SdnAgent, str]) -> None:
    agent, url = plain
    assert url.startswith("http://")
    tfs = TfsQkdDriverReplay(_with_userinfo(url))
    (key, node), = await asyncio.to_thread(tfs.initial_config)
    assert key == "qkd_node" and node["qkdn_id"] == qkdn_id("km0")
    assert "keyplane-qkd-provenance" not in str(node)  # the plain ETSI model
    endpoints = await asyncio.to_thread(tfs.interfaces)
    assert [k for k, _ in endpoints] == [f"/endpoints/endpoint[km0:{i}]" for i in (1, 2, 3, 4, 5)]
    capabilities = await asyncio.to_thread(tfs.capabilities)
    assert capabilities["qkdn_capabilities"]["key_relay_mode_enable"] is True
    assert (await asyncio.to_thread(tfs.node))["qkdn_id"] == qkdn_id("km0")

    # SetConfig of a '/link' resource with virtual hops: create_connectivity_link
    uid = qkdl_id("session:tfs-1")
    r = await asyncio.to_thread(tfs.create_link, uid, qkdn_id("km0"), 2, qkdn_id("km3"), 1,
                                qkdn_id("km2"), [qkdn_id("km3")], 5000)
    assert r.status_code in {200, 201, 202, 204}, r.text
    assert uid in {e["qkdl_id"] for e in agent.datastore.document(0.0)[ROOT_MEMBER]
                   ["qkd_links"]["qkd_link"]}
    assert_valid(agent.datastore.document(0.0))
    apps = await asyncio.to_thread(tfs.apps)
    assert apps == []  # none yet: the controller's qkd_app entries come with sessions

    # fetch_links iterates the qkd_links container's member names and compares qkdl_type
    # with bare identities: it extracts no link from any answer that follows the model
    # (TeraFlowSDN's own mock node included). The answer is the model's:
    raw = await asyncio.to_thread(tfs._get, tfs._url("qkd_links/"))
    assert uid in {x["qkdl_id"] for x in raw["qkd_links"]["qkd_link"]}
    assert await asyncio.to_thread(tfs.links) == []


async def test_a_phys_link_the_driver_posts_is_refused_and_changes_nothing(
        plain: tuple[SdnAgent, str]) -> None:
    agent, url = plain
    tfs = TfsQkdDriverReplay(_with_userinfo(url))
    before = agent.datastore.document(0.0)
    r = await asyncio.to_thread(tfs.create_link, qkdl_id("tfs-phys"), qkdn_id("km0"), 1,
                                qkdn_id("km1"), 1)
    assert r.status_code == 400
    (error,) = r.json()["ietf-restconf:errors"]["error"]
    assert error["error-tag"] == "invalid-value" and "PHYS" in error["error-message"]
    with pytest.raises(requests.HTTPError):
        r.raise_for_status()  # the driver records the exception for that resource
    assert agent.datastore.document(0.0) == before


async def test_credentials_from_netrc_work_too(plain: tuple[SdnAgent, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = plain
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    tfs = TfsQkdDriverReplay(url)
    (_, node), = await asyncio.to_thread(tfs.initial_config)
    assert node["qkdn_id"] == qkdn_id("km0")


@pytest.mark.parametrize("userinfo", [None, f"{USER}:wrong", f"nobody:{PASSWORD}"])
async def test_without_valid_credentials_nothing_is_read_or_written(
        plain: tuple[SdnAgent, str], userinfo: str | None) -> None:
    agent, url = plain
    root = url if userinfo is None else url.replace("://", f"://{userinfo}@")
    before = agent.datastore.document(0.0)
    for method, path, body in (("GET", "", None), ("GET", "/restconf/yang-library-version", None),
                               ("POST", "/qkd_links/", {"qkd_links": {"qkd_link": []}})):
        target = path if path.startswith("/restconf/y") else \
            f"/restconf/data/etsi-qkd-sdn-node:qkd_node{path}"
        r = await asyncio.to_thread(requests.request, method, root + target, json=body,
                                    timeout=30)
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"].startswith("Basic realm=")
        (error,) = r.json()["ietf-restconf:errors"]["error"]
        assert error["error-tag"] == "access-denied"
    assert agent.datastore.document(0.0) == before


async def test_https_listener_for_a_driver_with_one_qkd_api_url(
        topology: Topology, certs: Issued, credentials: Path) -> None:
    """Without danger_plain_http the listener is HTTPS (QKD_API_URL=https://…: the driver
    does not verify the server, and presents no certificate)."""
    listener = TeraflowSdnListener(ports={"km0": 0}, credentials_file=credentials)
    async for _, url in _agent_with_listener(topology, certs, listener):
        assert url.startswith("https://")
        tfs = TfsQkdDriverReplay(_with_userinfo(url))
        (_, node), = await asyncio.to_thread(_quietly, tfs.initial_config)
        assert node["qkdn_id"] == qkdn_id("km0")
        with pytest.raises(requests.ConnectionError):  # plain HTTP is not answered
            await asyncio.to_thread(requests.get, _with_userinfo(url.replace("https", "http"))
                                    + "/restconf", timeout=30)


async def test_the_certificate_listener_is_not_weakened(agent: SdnAgent) -> None:
    """Basic credentials mean nothing on the default listener: writes need the controller
    certificate, as before."""
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    body = {"etsi-qkd-sdn-node:qkd_link": [{
        "qkdl_id": qkdl_id("x"), "qkdl_type": "etsi-qkd-node-types:VIRT",
        "virt_prev_hop": qkdn_id("km2"), "virt_next_hop": [qkdn_id("km3")]}]}
    for subject, status in ((None, 403), ("CN=sae0,OU=app,O=keyplane", 403),
                            (DEFAULT_CONTROLLER_SUBJECT, 201)):
        app = with_subject(create_agent_app(agent), subject)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="https://km0") as c:
            r = await c.post(f"/restconf/data/{ROOT_MEMBER}/qkd_links", json=body,
                             headers={"Authorization": f"Basic {token}"})
            assert r.status_code == status, r.text


async def test_basic_listener_options_in_process(agent: SdnAgent) -> None:
    options = RestconfOptions(unqualified_top_member=True, keyplane_augment=False,
                              basic_users={USER: PASSWORD})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(
            app=create_agent_app(agent, options)), base_url="http://km0") as c:
        assert (await c.get(f"/restconf/data/{ROOT_MEMBER}")).status_code == 401
        r = await c.get(f"/restconf/data/{ROOT_MEMBER}", auth=(USER, PASSWORD))
        assert r.status_code == 200 and set(r.json()) == {"qkd_node"}
        r = await c.get("/restconf/data", auth=(USER, "x" + PASSWORD))
        assert r.status_code == 401


def test_credentials_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "users"
    for text, problem in (("", "no user"), ("tfs\n", "user:password"), ("tfs:\n", "user:password"),
                          ("a:1\na:2\n", "twice")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=problem):
            read_credentials(path)
    with pytest.raises(ConfigError):
        read_credentials(tmp_path / "missing")
    path.write_text("# comment\n\na:b:c\n")
    assert read_credentials(path) == {"a": "b:c"}


def test_topology_selects_the_compatibility_per_deployment(topology: Topology) -> None:
    text = """
nodes: [{id: a}, {id: b}]
links: [{endpoints: [a, b], length_km: 10}]
etsi015:
  unqualified_top_member: true
  keyplane_augment: false
  teraflowsdn: {ports: {a: 8470}, credentials_file: tfs-users, danger_plain_http: true}
"""
    topo = parse_topology(text)
    assert topo.etsi015.unqualified_top_member and not topo.etsi015.keyplane_augment
    assert topo.etsi015.teraflowsdn is not None and topo.etsi015.teraflowsdn.ports == {"a": 8470}
    with pytest.raises(ConfigError, match="unknown node 'zz'"):
        parse_topology(text.replace("{a: 8470}", "{zz: 1}"))
    assert not topology.etsi015.unqualified_top_member  # off unless asked for


async def test_a_deployment_turns_it_on_in_the_topology(topology: Topology, tmp_path: Path,
                                                         credentials: Path) -> None:
    """``keyplane node``/``run`` read etsi015 from the topology: the node serves the
    compatibility on its mTLS listener and opens the TeraFlowSDN listener, whose URL is in
    endpoints.json."""
    import json

    from keyplane.certs import client_ssl_context
    from keyplane.cli import _with_etsi015
    from keyplane.runtime import ControlRuntime, NodeRuntime, RuntimeContext
    from keyplane.store import Database, sqlite_url

    settings = topology.etsi015.model_copy(update={"teraflowsdn": TeraflowSdnListener(
        ports={"km1": 0}, credentials_file=credentials, danger_plain_http=True)})
    topo = _with_etsi015(topology.model_copy(update={"etsi015": settings}), True)
    assert topo.etsi015.unqualified_top_member and not topology.etsi015.unqualified_top_member
    bus = MemoryBus()
    db = await Database.open(sqlite_url(tmp_path / "runtime.db"))
    clock = RealClock()
    ctx = RuntimeContext(topology=topo, bus=bus, db=db, clock=clock, events=EventStream(clock),
                         state_dir=tmp_path / "state")
    try:
        async with ControlRuntime(ctx), NodeRuntime(ctx, "km1") as node:
            urls = json.loads((ctx.state_dir / "endpoints.json").read_text())["kms"]["km1"]
            assert urls["etsi015_teraflowsdn"] == node.endpoints["etsi015_teraflowsdn"]
            tfs = TfsQkdDriverReplay(_with_userinfo(urls["etsi015_teraflowsdn"]))
            (_, got), = await asyncio.to_thread(tfs.initial_config)
            assert got["qkdn_id"] == qkdn_id("km1")
            certs = ctx.ensure_certs()
            async with httpx.AsyncClient(verify=client_ssl_context(
                    certs.controller, certs.ca.cert)) as c:
                r = await c.get(f"{urls['etsi015']}/restconf/data/{ROOT_MEMBER}")
            assert set(r.json()) == {"qkd_node"}  # the topology's choice, on mTLS too
    finally:
        await bus.close()
        await db.close()
