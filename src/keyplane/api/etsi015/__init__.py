"""ETSI GS QKD 015: the SDN agent of every node and the SDN Controller's RESTCONF side.

Node side: :class:`SdnAgent` (bus-fed, owns a :class:`NodeDatastore` validated against the
``etsi-qkd-sdn-node`` YANG model on every write), :func:`create_agent_app` (RESTCONF,
RFC 8040, JSON per RFC 7951) and :func:`serve_agent` (HTTPS with mutual TLS).
An unmodified TeraFlowSDN reaches a node through :func:`serve_teraflowsdn` (HTTP Basic).
Controller side: :class:`Etsi015Client`, :class:`Etsi015Driver` and the northbound
:class:`NetworkView` / :func:`create_northbound_app`. See docs/api/etsi015.md.
"""

from keyplane.api.etsi015.agent import (
    DEFAULT_CONTROLLER_SUBJECT,
    AgentSettings,
    KmEventFeed,
    NotificationFeed,
    SdnAgent,
)
from keyplane.api.etsi015.client import Etsi015Client, Etsi015Driver, NodeDescription, PathHop
from keyplane.api.etsi015.datastore import (
    NodeDatastore,
    Notification,
    PerfThresholds,
    QkdApplication,
    VirtualLink,
    read_resource,
)
from keyplane.api.etsi015.errors import (
    Etsi015ClientError,
    Etsi015Error,
    Etsi015Unreachable,
    RestconfError,
)
from keyplane.api.etsi015.model import (
    PROVENANCE_MEMBER,
    ROOT_MEMBER,
    YangInvalid,
    app_id,
    data_model,
    qkdl_id,
    qkdn_id,
    validate_node,
    validate_notification,
)
from keyplane.api.etsi015.northbound import NETWORK_MEMBER, NetworkView, create_northbound_app
from keyplane.api.etsi015.restconf import (
    PEER_SUBJECT_STATE_KEY,
    RestconfOptions,
    create_agent_app,
)
from keyplane.api.etsi015.server import RestconfServer, serve_agent, serve_app
from keyplane.api.etsi015.teraflow import read_credentials, serve_teraflowsdn

__all__ = [
    "DEFAULT_CONTROLLER_SUBJECT",
    "NETWORK_MEMBER",
    "PEER_SUBJECT_STATE_KEY",
    "PROVENANCE_MEMBER",
    "ROOT_MEMBER",
    "AgentSettings",
    "Etsi015Client",
    "Etsi015ClientError",
    "Etsi015Driver",
    "Etsi015Error",
    "Etsi015Unreachable",
    "KmEventFeed",
    "NetworkView",
    "NodeDatastore",
    "NodeDescription",
    "Notification",
    "NotificationFeed",
    "PathHop",
    "PerfThresholds",
    "QkdApplication",
    "RestconfError",
    "RestconfOptions",
    "RestconfServer",
    "SdnAgent",
    "VirtualLink",
    "YangInvalid",
    "app_id",
    "create_agent_app",
    "create_northbound_app",
    "data_model",
    "qkdl_id",
    "qkdn_id",
    "read_credentials",
    "read_resource",
    "serve_agent",
    "serve_app",
    "serve_teraflowsdn",
    "validate_node",
    "validate_notification",
]
