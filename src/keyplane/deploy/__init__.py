"""Deployment: Kubernetes manifests rendered from a topology (``keyplane deploy``).

See :mod:`keyplane.deploy.kubernetes` and docs/deploy.md.
"""

from keyplane.deploy.credentials import install_credentials
from keyplane.deploy.kubernetes import (
    KubernetesOptions,
    Manifests,
    Resources,
    node_service_names,
    render,
    write_manifests,
)

__all__ = [
    "KubernetesOptions",
    "Manifests",
    "Resources",
    "install_credentials",
    "node_service_names",
    "render",
    "write_manifests",
]
