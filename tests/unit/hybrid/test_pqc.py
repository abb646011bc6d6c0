import dataclasses
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.certs import ensure_network_certs
from keyplane.config import load_topology
from keyplane.errors import RelayAuthenticationFailed
from keyplane.keymanager.pqc import KmIdentity, PqcReceiver, combine_hop_key, pqc_send

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KmIdentity]:
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    certs = ensure_network_certs(topo, tmp_path_factory.mktemp("certs"))
    return {n: KmIdentity.load(n, p.cert, p.key, certs.ca.cert) for n, p in certs.kms.items()}


def test_pqc_exchange_gives_both_kms_the_same_hop_key(ids: dict[str, KmIdentity],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rx = PqcReceiver(ids["km0"], "km2", context=b"session=s1|hop=km2->km0|key=k1")
    reply, k_sender = pqc_send(ids["km2"], "km0", rx.offer, 32)
    k_receiver = rx.finish(reply, 32)
    assert k_sender == k_receiver and len(k_sender) == 32
    assert k_sender.hex() not in caplog.text


def test_pqc_offer_from_wrong_km_is_refused(ids: dict[str, KmIdentity]) -> None:
    rx = PqcReceiver(ids["km1"], "km2", context=b"ctx")  # km1 pretends to be km0
    with pytest.raises(RelayAuthenticationFailed, match="expected KM 'km0'"):
        pqc_send(ids["km2"], "km0", rx.offer, 32)


def test_pqc_tampered_offer_or_reply_is_refused(ids: dict[str, KmIdentity]) -> None:
    rx = PqcReceiver(ids["km0"], "km2", context=b"ctx")
    bad_ek = bytearray(rx.offer.encapsulation_key)
    bad_ek[0] ^= 1
    with pytest.raises(RelayAuthenticationFailed):
        pqc_send(ids["km2"], "km0", dataclasses.replace(rx.offer, encapsulation_key=bytes(bad_ek)), 32)
    reply, _ = pqc_send(ids["km2"], "km0", rx.offer, 32)
    bad_ct = bytearray(reply.ciphertext)
    bad_ct[5] ^= 1
    with pytest.raises(RelayAuthenticationFailed):
        rx.finish(dataclasses.replace(reply, ciphertext=bytes(bad_ct)), 32)


def test_pqc_certificate_from_another_ca_is_refused(ids: dict[str, KmIdentity], tmp_path: Path) -> None:
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    other = ensure_network_certs(topo, tmp_path / "other")
    rogue_km0 = KmIdentity.load("km0", other.kms["km0"].cert, other.kms["km0"].key, other.ca.cert)
    offer = PqcReceiver(rogue_km0, "km2", b"ctx").offer
    with pytest.raises(RelayAuthenticationFailed, match="not issued by our CA"):
        pqc_send(ids["km2"], "km0", offer, 32)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_combiner_is_an_involution_and_hides_each_input(qkd: bytes, data: st.DataObject) -> None:
    pqc = data.draw(st.binary(min_size=len(qkd), max_size=len(qkd)))
    hop = combine_hop_key(qkd, pqc)
    assert len(hop) == len(qkd)
    assert combine_hop_key(hop, pqc) == qkd
    assert combine_hop_key(hop, qkd) == pqc


def test_combiner_refuses_length_mismatch() -> None:
    with pytest.raises(ValueError):
        combine_hop_key(b"ab", b"abc")
