"""End-to-end message authentication in the bus envelope layer (keyplane.bus.auth).

Real certificates from ``ensure_network_certs`` (Ed25519 signing keys certified by the
keyplane CA); no bus needed: the envelope functions are the unit.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import keyplane
from keyplane.bus import decode, encode
from keyplane.bus.auth import (
    POLICY,
    MessageAuth,
    Signer,
    TrustStore,
    reply_binding,
    split_signature,
    topic_binding,
)
from keyplane.bus.codec import registry
from keyplane.certs import CONTROLLER_ID, ensure_network_certs, signing_paths
from keyplane.errors import ConfigError, MessageRejected
from keyplane.keymanager.wire import LinkBlocksHeld
from keyplane.messages import (
    AuthResponse,
    HopRole,
    KeepAlive,
    LinkTelemetry,
    SessionClose,
    SessionConfig,
)
from tests.support.bus import SMALL_TOPOLOGY

TOPIC = "keyplane.km.km2.config"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("auth") / "certs"
    ensure_network_certs(SMALL_TOPOLOGY, d)
    return d


def _auth(certs: Path, role: str, element_id: str) -> MessageAuth:
    p = signing_paths(certs, role, element_id)
    return MessageAuth(Signer.load(p.cert, p.key), TrustStore(certs / "ca.pem", certs))


def _config(node: str = "km2") -> SessionConfig:
    return SessionConfig(session_id="s1", node=node, role=HopRole.intermediate, prev_km="km1",
                         next_km="km3", source_sae="a", destination_sae="b",
                         bucket_size_bits=256, token_rate_bps=1000.0, idle_timeout_s=10.0)


def test_signed_session_config_from_the_control_plane_is_accepted(certs: Path) -> None:
    control, km2 = _auth(certs, "control", CONTROLLER_ID), _auth(certs, "km", "km2")
    data = control.seal(_config(), topic_binding(TOPIC))
    msg, by = km2.open(data, topic_binding(TOPIC))
    assert msg == _config() and by == f"control.{CONTROLLER_ID}"
    # a receiver without the check still reads the message (the signature is one more member)
    assert decode(data) == _config()


def test_unsigned_session_config_is_rejected(certs: Path) -> None:
    km2 = _auth(certs, "km", "km2")
    with pytest.raises(MessageRejected, match="not signed"):
        km2.open(encode(_config()), topic_binding(TOPIC))


def test_session_config_signed_by_a_km_is_rejected_for_its_role(certs: Path) -> None:
    km1, km2 = _auth(certs, "km", "km1"), _auth(certs, "km", "km2")
    with pytest.raises(MessageRejected, match="a km may not send it"):
        km2.open(km1.seal(_config(), topic_binding(TOPIC)), topic_binding(TOPIC))


def test_tampered_body_fails_the_signature(certs: Path) -> None:
    control, km2 = _auth(certs, "control", CONTROLLER_ID), _auth(certs, "km", "km2")
    data = control.seal(_config(), topic_binding(TOPIC))
    forged = data.replace(b'"next_km":"km3"', b'"next_km":"km1"')
    assert forged != data
    with pytest.raises(MessageRejected, match="bad signature"):
        km2.open(forged, topic_binding(TOPIC))


def test_signed_message_replayed_to_another_topic_is_rejected(certs: Path) -> None:
    control, km3 = _auth(certs, "control", CONTROLLER_ID), _auth(certs, "km", "km3")
    data = control.seal(_config(), topic_binding(TOPIC))
    with pytest.raises(MessageRejected, match="bad signature"):
        km3.open(data, topic_binding("keyplane.km.km3.config"))


def test_a_km_may_speak_only_for_its_own_node(certs: Path) -> None:
    km1, control = _auth(certs, "km", "km1"), _auth(certs, "control", CONTROLLER_ID)
    topic = topic_binding("keyplane.control.admission")
    ok, by = control.open(km1.seal(SessionClose(session_id="s", node="km1"), topic), topic)
    assert by == "km.km1" and isinstance(ok, SessionClose)
    with pytest.raises(MessageRejected, match=r"node='km2' but signed by 'km\.km1'"):
        control.open(km1.seal(SessionClose(session_id="s", node="km2"), topic), topic)
    held = LinkBlocksHeld(sender="km2", link_id="km1-km2", block_ids=[1])
    with pytest.raises(MessageRejected, match="sender='km2'"):
        control.open(km1.seal(held, topic), topic)


def test_reply_is_bound_to_the_request_it_answers(certs: Path) -> None:
    control, km1 = _auth(certs, "control", CONTROLLER_ID), _auth(certs, "km", "km1")
    request_a, request_b = b"request a", b"request b"
    answer = control.seal(AuthResponse(ok=True, user_id="alice"), reply_binding(request_a))
    msg, _ = km1.open(answer, reply_binding(request_a))
    assert msg == AuthResponse(ok=True, user_id="alice")
    with pytest.raises(MessageRejected, match="bad signature"):
        km1.open(answer, reply_binding(request_b))  # an old "ok" answering a new request


def test_kinds_outside_the_policy_travel_unsigned(certs: Path) -> None:
    km1 = _auth(certs, "km", "km1")
    tele = LinkTelemetry(link_id="km1-km2", node="km1")
    data = km1.seal(tele, topic_binding("keyplane.telemetry.link.km1-km2"))
    assert data == encode(tele)
    assert km1.open(data, b"t:any") == (tele, None)


def test_signer_certified_by_another_ca_is_unknown(certs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ensure_network_certs(SMALL_TOPOLOGY, other)  # same names, another CA
    p = signing_paths(other, "control", CONTROLLER_ID)
    rogue = MessageAuth(Signer.load(p.cert, p.key), TrustStore(other / "ca.pem", other))
    km2 = _auth(certs, "km", "km2")
    with pytest.raises(MessageRejected, match="unknown signer"):
        km2.open(rogue.seal(_config(), topic_binding(TOPIC)), topic_binding(TOPIC))
    # and putting the rogue certificate into the trusted directory does not help
    (certs / "sign" / "control.rogue.pem").write_bytes(p.cert.read_bytes())
    try:
        assert len(TrustStore(certs / "ca.pem", certs)) == len(list((certs / "sign").glob(
            "*.pem"))) - 1
    finally:
        (certs / "sign" / "control.rogue.pem").unlink()


def test_malformed_signature_member_is_rejected(certs: Path) -> None:
    km2 = _auth(certs, "km", "km2")
    bad = encode(_config())[:-1] + b',"sig":{"by":"control.x","s":"AA=="}}'
    with pytest.raises(MessageRejected, match="malformed"):
        km2.open(bad, topic_binding(TOPIC))
    assert split_signature(encode(KeepAlive(session_id="s", node="n")))[1] is None


def test_a_tls_key_cannot_be_loaded_as_a_signing_key(certs: Path) -> None:
    with pytest.raises(ConfigError, match="Ed25519"):
        Signer.load(certs / "km" / "km1.pem", certs / "km" / "km1.key")


def test_every_policy_kind_is_a_registered_message() -> None:
    for mod in pkgutil.walk_packages(keyplane.__path__, "keyplane."):
        if mod.name.endswith(("__main__", ".cli")) or ".migrations" in mod.name:
            continue
        importlib.import_module(mod.name)
    assert set(POLICY) <= set(registry()), sorted(set(POLICY) - set(registry()))


def test_certs_make_one_signing_key_per_element(certs: Path) -> None:
    issued = ensure_network_certs(SMALL_TOPOLOGY, certs)
    assert set(issued.signing or {}) == {"km.km1", "km.km2", "km.km3",
                                         f"control.{CONTROLLER_ID}", "operator.operator"}
    assert oct(signing_paths(certs, "km", "km1").key.stat().st_mode & 0o777) == "0o600"
    assert len(TrustStore(certs / "ca.pem", certs)) == 5

