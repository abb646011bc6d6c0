"""A bus that always comes back (issue 14.2), in process: nats-server killed with SIGKILL
for longer than the old 10-attempt reconnection window, then restarted on the same port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keyplane.bus import Message
from keyplane.bus.nats import NatsBus
from keyplane.bus.settings import BusSettings
from keyplane.errors import BusUnavailable
from keyplane.messages import ConfigAck, KmTelemetry
from keyplane.services import NatsServer
from tests.support.bus import harness_security, start_secured_nats
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_kms import wait_until

pytestmark = [pytest.mark.nats, pytest.mark.slow]

OLD_ATTEMPTS = 10  # nats-py's max_reconnect_attempts before this change: then it gave up
FAST = BusSettings(reconnect_backoff_base_s=0.02, reconnect_backoff_cap_s=0.2,
                   connect_timeout_s=5.0)
"""A short backoff cap, so 'more attempts than the old window' takes seconds, not 30 s."""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    srv = await asyncio.to_thread(start_secured_nats, tmp_path / "certs")
    try:
        yield srv
    finally:
        await asyncio.to_thread(srv.stop)


async def test_buses_reconnect_forever_and_requests_wait_out_the_outage(
        server: NatsServer) -> None:
    responder = await NatsBus.connect(server.url, security=harness_security(server),
                                      settings=FAST)
    requester = await NatsBus.connect(server.url, security=harness_security(server),
                                      settings=FAST)
    telemetry: list[Message] = []
    arrived = asyncio.Event()

    async def echo(_topic: str, msg: Message) -> Message:
        assert isinstance(msg, KmTelemetry)
        return ConfigAck(session_id="echo", node=msg.node, ok=True)

    async def record(_topic: str, msg: Message) -> None:
        telemetry.append(msg)
        arrived.set()

    try:
        await responder.subscribe("t.echo", echo)
        await responder.subscribe("t.feed", record)
        assert await requester.request("t.echo", KmTelemetry(node="before"), timeout_s=30.0)

        await asyncio.to_thread(server.kill)
        await wait_until(lambda: min(responder.failed_reconnects, requester.failed_reconnects)
                         > OLD_ATTEMPTS, timeout_s=120.0, what="more than 10 attempts each")
        assert not responder.connected and responder.failure is None
        back = asyncio.create_task(responder.wait_connected())  # the relay waits so (#14)
        # a request made during the outage waits (its own deadline), it does not fail
        pending = asyncio.create_task(requester.request("t.echo", KmTelemetry(node="during"),
                                                        timeout_s=120.0))
        # a publish is buffered, not refused (core NATS delivers it only if the subscriber
        # is back first: fire-and-forget is at most once, protocols above retry)
        await requester.publish("t.feed", KmTelemetry(node="buffered"))
        assert not pending.done()

        await asyncio.to_thread(server.restart)
        reply = await asyncio.wait_for(pending, DEADLINE_S)
        await asyncio.wait_for(back, DEADLINE_S)
        assert isinstance(reply, ConfigAck) and reply.node == "during"
        await requester.publish("t.feed", KmTelemetry(node="after"))
        async with asyncio.timeout(DEADLINE_S):
            while not any(m.node == "after" for m in telemetry):  # type: ignore[attr-defined]
                arrived.clear()
                await arrived.wait()  # the responder's subscriptions came back
        assert {m.node for m in telemetry} <= {"buffered", "after"}  # type: ignore[attr-defined]
        assert requester.connected and responder.connected
        assert requester.failure is None and responder.failure is None
    finally:
        await responder.close()
        await requester.close()


async def test_bus_gives_up_after_its_outage_bound(server: NatsServer) -> None:
    settings = FAST.model_copy(update={"max_outage_s": 1.0})
    bus = await NatsBus.connect(server.url, security=harness_security(server),
                                settings=settings)
    try:
        await asyncio.to_thread(server.kill)
        failure = await asyncio.wait_for(bus.wait_failure(), 120.0)
        assert isinstance(failure, BusUnavailable) and "1 s" in str(failure)
        with pytest.raises(BusUnavailable):  # a waiter for the bus is told, not left
            await bus.wait_connected()
        with pytest.raises(BusUnavailable):
            await bus.publish("t.x", KmTelemetry(node="late"))
    finally:
        await bus.close()


async def test_bus_waits_for_a_server_that_starts_late(tmp_path: Path) -> None:
    srv = await asyncio.to_thread(start_secured_nats, tmp_path / "certs")
    await asyncio.to_thread(srv.kill)  # its port and certificates are known; it is down
    settings = FAST.model_copy(update={"startup_timeout_s": 120.0})
    connecting = asyncio.create_task(NatsBus.connect(srv.url, security=harness_security(srv),
                                                     settings=settings))
    try:
        assert not connecting.done()
        await asyncio.to_thread(srv.restart)
        bus = await asyncio.wait_for(connecting, DEADLINE_S)
        assert bus.connected
        await bus.close()
    finally:
        connecting.cancel()
        await asyncio.to_thread(srv.stop)


class _SlowProxy:
    """A TCP relay to ``port`` that holds every chunk ``delay_s`` (each way): a handshake
    through it takes several times that, as a process starved of CPU would see it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.delay_s = 0.0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)  # the relay's slowness, not a wait
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            w.close()
            return
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_handshake_slower_than_the_attempt_bound_still_reconnects(
        server: NatsServer) -> None:
    """Attempts that time out lengthen the next one's bound (connect_timeout_cap_s): with a
    fixed bound below the handshake's time every attempt would time out until max_outage_s
    ended the process (a niced link worker on an overloaded machine)."""
    proxy = _SlowProxy(server.port)
    port = await proxy.start()
    settings = FAST.model_copy(update={"connect_timeout_s": 1.0, "connect_timeout_cap_s": 60.0})
    bus = await NatsBus.connect(f"tls://127.0.0.1:{port}", security=harness_security(server),
                                settings=settings)
    try:
        await asyncio.to_thread(server.kill)
        await wait_until(lambda: not bus.connected, timeout_s=DEADLINE_S, what="disconnected")
        proxy.delay_s = 1.5  # every attempt now needs well over 1 s
        await asyncio.to_thread(server.restart)
        await wait_until(lambda: bool(bus.outages), timeout_s=DEADLINE_S, what="reconnected")
        assert bus.connected and bus.timed_out_attempts == 0
        assert bus.failure is None
    finally:
        await bus.close()
        await proxy.close()
