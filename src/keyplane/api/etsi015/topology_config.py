"""The configuration a node's datastore starts from: what the topology says about the node.

``qkdn_id``, version, location and capabilities, one ``qkd_interface`` per QKD module (link
end) and one PHYS ``qkd_link`` per topology link at the node, as RFC 7951 JSON. All of it
mirrors the physical network and is read-only over RESTCONF
(:meth:`keyplane.api.etsi015.datastore.NodeDatastore` refuses changes to it).
"""

from __future__ import annotations

from typing import Any

from keyplane.api.etsi015.model import decimal64, identity, qkdl_id, qkdn_id
from keyplane.config import QuantumLink, Topology

__all__ = ["interface_ids", "node_config"]


def interface_ids(topology: Topology, node_id: str) -> dict[str, int]:
    """``qkdi_id`` of each of ``node_id``'s link ends: 1, 2, … by sorted link id."""
    links = sorted(topology.links_of(node_id), key=lambda link: link.link_id)
    return {link.link_id: i for i, link in enumerate(links, start=1)}


def node_config(node_id: str, topology: Topology, version: str, location_id: str
                ) -> dict[str, Any]:
    """The ``qkd_node`` configuration (the content of ``etsi-qkd-sdn-node:qkd_node``)."""
    local = qkdn_id(node_id)
    mine = interface_ids(topology, node_id)
    interfaces: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    for link in sorted(topology.links_of(node_id), key=lambda x: x.link_id):
        qkdi = mine[link.link_id]
        peer = link.endpoints[1] if link.endpoints[0] == node_id else link.endpoints[0]
        role = "TRANSMITTER" if link.endpoints[0] == node_id else "RECEIVER"
        interfaces.append(_interface(node_id, link, qkdi, role))
        links.append({
            "qkdl_id": qkdl_id(link.link_id), "qkdl_enable": link.enabled,
            "qkdl_local": {"qkdn_id": local, "qkdi_id": qkdi},
            "qkdl_remote": {"qkdn_id": qkdn_id(peer),
                            "qkdi_id": interface_ids(topology, peer)[link.link_id]},
            "qkdl_type": identity("PHYS"),
            "phys_channel_att": decimal64(link.length_km * link.attenuation_db_per_km
                                          + link.insertion_loss_db),
            "phys_qkd_role": identity(role),
        })
    config: dict[str, Any] = {
        "qkdn_id": local, "qkdn_version": version, "qkdn_location_id": location_id,
        "qkdn_capabilities": {"link_stats_support": True, "application_stats_support": True,
                              "key_relay_mode_enable": True},
        "qkd_applications": {}, "qkd_interfaces": {}, "qkd_links": {},
    }
    if interfaces:
        config["qkd_interfaces"]["qkd_interface"] = interfaces
        config["qkd_links"]["qkd_link"] = links
    return config


def _interface(node_id: str, link: QuantumLink, qkdi: int, role: str) -> dict[str, Any]:
    technology = "DV-QKD"  # BB84 with decoy states (and its analytic model) is DV-QKD
    return {"qkdi_id": qkdi, "qkdi_model": f"keyplane-emulated-{link.protocol}",
            "qkdi_type": identity(technology),
            "qkdi_att_point": {"device": node_id, "port": qkdi},
            "qkdi_capabilities": {"role_support": identity(role)}}
