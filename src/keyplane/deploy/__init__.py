"""Deployment: Kubernetes manifests rendered from a topology (``keyplane deploy``).

See :mod:`keyplane.deploy.kubernetes` and docs/deploy.md. The names below load their
module on first use, so ``keyplane --help`` (which mounts ``keyplane deploy``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keyplane.lazy import lazy_exports

if TYPE_CHECKING:
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

_HOME: dict[str, str] = {
    "install_credentials": "keyplane.deploy.credentials",
    **dict.fromkeys(["KubernetesOptions", "Manifests", "Resources", "node_service_names",
                     "render", "write_manifests"], "keyplane.deploy.kubernetes"),
}


__getattr__, __dir__ = lazy_exports(__name__, _HOME)
