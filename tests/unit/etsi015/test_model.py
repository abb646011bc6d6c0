import hashlib
import uuid

import pytest
from yangson import DataModel
from yangson.enumerations import ContentType, ValidationScope
from yangson.exceptions import SchemaError

from keyplane.api.etsi015.model import (
    ROOT_MEMBER,
    YANG_DIR,
    YangInvalid,
    app_id,
    date_and_time,
    decimal64,
    identity,
    patch_when_conditions,
    qkdl_id,
    qkdn_id,
    uint32,
    validate_node,
    validate_notification,
)

N1, N2, N3 = (str(uuid.UUID(int=i)) for i in (1, 2, 3))
VIRT_NODE = {ROOT_MEMBER: {"qkdn_id": N1, "qkd_links": {"qkd_link": [{
    "qkdl_id": str(uuid.UUID(int=0xB2)), "qkdl_type": identity("VIRT"),
    "qkdl_local": {"qkdn_id": N1}, "qkdl_remote": {"qkdn_id": N3},
    "virt_prev_hop": N1, "virt_next_hop": [N2], "virt_bandwidth": 500}]}}}


def test_shipped_etsi_modules_are_byte_identical_to_the_release() -> None:
    digests = {name: hashlib.sha256((YANG_DIR / name).read_bytes()).hexdigest()
               for name in ("etsi-qkd-sdn-node.yang", "etsi-qkd-node-types.yang")}
    assert digests == {
        "etsi-qkd-sdn-node.yang":
            "4b7b3fdbdbbf258cb9a4231d2617d87c2f51f094ad7e5413605727cb04a38030",
        "etsi-qkd-node-types.yang":
            "7883ff57519ae201581d8171ea26b4f0fba92cc0c7bdc0bbf9d71568296f9f33",
    }
    assert (YANG_DIR / "LICENSE.etsi").is_file()


def test_shipped_ietf_protocol_modules_are_the_published_texts() -> None:
    """RFC 8525, RFC 8342 and RFC 8040 modules as published (the copies pyang 2.7.1 ships
    under share/yang/modules/ietf/), served for download by every agent."""
    digests = {name: hashlib.sha256((YANG_DIR / f"{name}.yang").read_bytes()).hexdigest()
               for name in ("ietf-yang-library", "ietf-datastores", "ietf-restconf-monitoring")}
    assert digests == {
        "ietf-yang-library": "e38a103fdbe6165fca67a4c82965c0377d54cb51951ba895d3f9170f34ac4e2e",
        "ietf-datastores": "eccd84d4c4831e787b808e0da154aef6b999e81f4380c3272190baf34a9529ce",
        "ietf-restconf-monitoring":
            "c4e0aed64ee45d17efc72f4f75d32d8e73e0a3efda5bf6360bb25f8daa14f125",
    }


def test_unpatched_model_rejects_standard_virt_members_upstream_defect() -> None:
    verbatim = DataModel.from_file(str(YANG_DIR / "yang-library.json"), [str(YANG_DIR)])
    with pytest.raises(SchemaError, match="member-not-allowed"):
        verbatim.from_raw(VIRT_NODE).validate(ValidationScope.all, ContentType.all)


def test_patched_model_accepts_virt_and_phys_members() -> None:
    validate_node(VIRT_NODE)
    phys = {ROOT_MEMBER: {"qkdn_id": N1, "qkd_links": {"qkd_link": [{
        "qkdl_id": N2, "qkdl_type": identity("PHYS"), "phys_channel_att": "3.000",
        "phys_wavelength": "20", "phys_qkd_role": identity("TRANSMITTER"),
        "qkdl_performance": {"skr": 10, "phys_perf": [{"perf_type": identity("QBER"),
                                                        "value": "0.020"}]}}]}}}
    validate_node(phys)


def test_patched_model_still_enforces_when_conditions_across_link_types() -> None:
    bad = {ROOT_MEMBER: {"qkdn_id": N1, "qkd_links": {"qkd_link": [{
        "qkdl_id": N2, "qkdl_type": identity("PHYS"), "virt_bandwidth": 5}]}}}
    with pytest.raises(YangInvalid) as info:
        validate_node(bad)
    assert info.value.tag == "unknown-element"


def test_patch_refuses_a_module_without_the_known_conditions() -> None:
    with pytest.raises(ValueError, match="expected exactly one"):
        patch_when_conditions('module x { yang-version "1"; }')


def test_config_only_validation_refuses_state_members() -> None:
    doc = {ROOT_MEMBER: {"qkdn_id": N1, "qkdn_status": identity("OPERATING")}}
    validate_node(doc)
    with pytest.raises(YangInvalid):
        validate_node(doc, config_only=True)


def test_notification_validation_checks_content() -> None:
    validate_notification("sdqkdn_link_down", {"qkd_link": {"qkdl_id": N1, "reason": "x"}})
    with pytest.raises(YangInvalid):
        validate_notification("sdqkdn_link_down", {"qkd_link": {"qkdl_id": "not-a-uuid"}})


def test_ids_are_stable_uuid5_and_distinct_per_kind() -> None:
    assert qkdn_id("km0") == qkdn_id("km0") != qkdl_id("km0")
    assert uuid.UUID(qkdn_id("km0")).version == 5
    sid = "9b2f0f64-8d0e-4c39-a3b1-2b8f2b5d7a10"
    assert app_id(sid) == sid
    assert uuid.UUID(app_id("session-7")).version == 5


def test_encoders_follow_rfc7951() -> None:
    assert decimal64(0.02149) == "0.021"
    assert uint32(-3) == 0 and uint32(2**40) == 2**32 - 1 and uint32(12.6) == 13
    assert date_and_time(1_700_000_000.5) == "2023-11-14T22:13:20.500Z"
