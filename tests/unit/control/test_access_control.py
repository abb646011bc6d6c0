"""Access Control against the user database (SQLite and PostgreSQL via ``db``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keyplane.bus import Bus, MemoryBus, topics
from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.control import AccessControl, RefusalReason
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import AuthRequest, AuthResponse
from keyplane.store import Database
from keyplane.store.topology import load_topology_into
from tests.support.deadlines import DEADLINE_S


@pytest.fixture
async def access(topology: Topology, db: Database, clock: VirtualClock,
                 events: EventStream) -> AsyncIterator[tuple[Bus, AccessControl]]:
    await load_topology_into(db, topology)
    async with MemoryBus() as bus, AccessControl(bus, db, clock, events) as ac:
        yield bus, ac


def _req(identity: str, sae: str = "sae_a", peer: str | None = "sae_d", node: str = "a",
         method: str = "certificate") -> AuthRequest:
    return AuthRequest(node=node, sae_id=sae, peer_sae_id=peer, identity=identity,
                       method=method)  # type: ignore[arg-type]


async def _ask(bus: Bus, req: AuthRequest) -> AuthResponse:
    reply = await bus.request(topics.ACCESS, req, timeout_s=DEADLINE_S)
    assert isinstance(reply, AuthResponse)
    return reply


async def test_access_certificate_subject_of_the_owner_is_accepted(
        access: tuple[Bus, AccessControl], sink: MemorySink) -> None:
    bus, _ = access
    reply = await _ask(bus, _req("CN=alice,O=test"))
    assert reply == AuthResponse(ok=True, user_id="alice")
    assert sink.of_type(EventType.authenticated)[0].data["user"] == "alice"


async def test_access_token_is_checked_by_digest_and_never_reported(
        access: tuple[Bus, AccessControl], sink: MemorySink) -> None:
    bus, _ = access
    assert (await _ask(bus, _req("alice-secret-token", method="token"))).ok
    refused = await _ask(bus, _req("wrong-token", method="token"))
    assert refused == AuthResponse(ok=False, reason="unknown_identity")
    dumped = "".join(e.model_dump_json() for e in sink.events)
    assert "alice-secret-token" not in dumped and "wrong-token" not in dumped


@pytest.mark.parametrize(("req", "reason"), [
    (_req("CN=mallory,O=test"), RefusalReason.unknown_identity),
    (_req("CN=alice,O=test", sae="sae_x"), RefusalReason.unknown_sae),
    (_req("CN=alice,O=test", sae="sae_d", node="d", peer="sae_a"), RefusalReason.sae_not_owned),
    (_req("CN=alice,O=test", node="b"), RefusalReason.sae_not_at_node),
    (_req("CN=alice,O=test", peer="sae_zz"), RefusalReason.unknown_peer),
    (_req("CN=dave,O=test", sae="sae_d", node="d", peer="sae_c"),
     RefusalReason.peer_not_allowed),
])
async def test_access_refusal_carries_its_reason_in_reply_and_event(
        access: tuple[Bus, AccessControl], sink: MemorySink, req: AuthRequest,
        reason: RefusalReason) -> None:
    bus, _ = access
    reply = await _ask(bus, req)
    assert reply == AuthResponse(ok=False, reason=reason.value)
    (event,) = sink.of_type(EventType.auth_refused)
    assert event.data["reason"] == reason.value and event.node == req.node


async def test_access_peer_may_be_omitted_for_a_status_query(
        access: tuple[Bus, AccessControl]) -> None:
    bus, _ = access
    assert (await _ask(bus, _req("CN=carol,O=test", sae="sae_c", node="c", peer=None))).ok
