"""Package names that load their module on first use (PEP 562), for fast imports.

``keyplane --help`` and ``import keyplane.client`` must not pay for numpy, scipy, FastAPI
or the bus (tests/unit/test_lazy_imports.py). A package that re-exports names from heavy
submodules declares where each name lives and gets its module ``__getattr__`` and
``__dir__`` from :func:`lazy_exports`; the names stay visible to type checkers through
``if TYPE_CHECKING:`` imports beside it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``(__getattr__, __dir__)`` pair of a package whose names load lazily.

    Args:
        package: the package's ``__name__``.
        homes: each lazily loaded name → the module that defines it.

    Returns:
        ``__getattr__`` imports a name's module on its first read and keeps the value in
        the package (later reads are plain attribute lookups); ``__dir__`` lists the
        package's loaded attributes and every lazy name.

    Raises:
        AttributeError: (from ``__getattr__``) a name the package neither has nor declares.
    """
    homes = dict(homes)

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *homes})

    return __getattr__, __dir__
