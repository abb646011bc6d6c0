"""Wire messages round-trip the codec; the link CLI drives a runner over real NATS;
the public surface stays curated."""

from __future__ import annotations

import numpy as np
import pytest
from tests.support.bus import harness_security
from typer.testing import CliRunner

import keyplane.physical as physical
from keyplane.bus.codec import decode, encode
from keyplane.clock import RealClock
from keyplane.config import PostProcessing, QuantumLink
from keyplane.physical import LinkCommand, LinkRunner, MemoryKeySink
from keyplane.physical.bits import pack, unpack
from keyplane.physical.cli import app, send_command
from keyplane.physical.wire import CascadeQuery, QuantumFrame, decode_i32, encode_i32
from keyplane.services import NatsServer


def test_public_surface_names_exist() -> None:
    for name in physical.__all__:
        assert hasattr(physical, name), name
    assert sorted(physical.__all__) == physical.__all__


def test_quantum_frame_roundtrips_packed_bits_as_base64() -> None:
    rng = np.random.default_rng(20)
    bits = rng.integers(0, 2, 1001, dtype=np.uint8)
    msg = QuantumFrame(link_id="a-b", frame_id=3, n_pulses=10, detections=1001,
                       bases=pack(bits), bits=pack(bits ^ 1))
    back = decode(encode(msg))
    assert isinstance(back, QuantumFrame)
    assert np.array_equal(unpack(back.bases, 1001), bits)
    assert "bits=" not in repr(back)


def test_cascade_query_roundtrips_ranges() -> None:
    starts = np.array([0, 7, 1 << 20], dtype=np.int64)
    msg = CascadeQuery(link_id="a-b", block_id=1, round=2, seed=b"\x01" * 16, new_pass=(1, 64),
                       passes=bytes([0, 1, 1]), starts=encode_i32(starts), ends=encode_i32(starts))
    back = decode(encode(msg))
    assert isinstance(back, CascadeQuery)
    assert np.array_equal(decode_i32(back.starts), starts) and back.new_pass == (1, 64)


@pytest.mark.nats
async def test_link_cli_cuts_a_link_over_nats(nats_server: NatsServer) -> None:
    from keyplane.bus.nats import NatsBus

    bus = await NatsBus.connect(nats_server.url, security=harness_security(nats_server))
    link = QuantumLink(endpoints=("a", "b"), length_km=10.0,
                       postprocessing=PostProcessing(block_size_bits=50_000))
    runner = LinkRunner(link, clock=RealClock(), seed=21, alice_sink=MemoryKeySink(),
                        bob_sink=MemoryKeySink(), bus=bus, frame_duration_s=0.01)
    async with runner:
        reply = await send_command(nats_server.url, LinkCommand(link_id="a-b", action="cut"),
                                   security=harness_security(nats_server))
        assert reply.ok and reply.state == "down" and runner.physics.cut
        reply = await send_command(nats_server.url,
                                   LinkCommand(link_id="a-b", action="eve", position_km=2.0,
                                               fraction=0.5),
                                   security=harness_security(nats_server))
        assert reply.eavesdropper_fraction == 0.5
    await bus.close()


@pytest.mark.nats
def test_link_cli_reports_no_responder(nats_server: NatsServer) -> None:
    # as the operator, with its credential from the server's certificates
    result = CliRunner().invoke(app, ["--certs", str(nats_server.certs_dir), "restore", "nope",
                                      "--bus", nats_server.url, "--timeout", "0.5"])
    assert result.exit_code == 1
    assert "no responders" in result.output or "no reply" in result.output
