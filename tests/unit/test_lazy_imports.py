"""The client SDK and the command line load no server, database, numeric or bus library.

``import keyplane.client`` (an SAE's whole dependency) and ``keyplane --help`` stay fast
because the heavy packages are imported where they are used (#20.3; figures in
docs/benchmarks.md, "Import time"). Each check runs in a fresh interpreter and compares
module sets, never times.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.deadlines import DEADLINE_S
from tests.support.processes import ROOT, keyplane_env

HEAVY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "asyncpg", "aiosqlite",
         "numpy", "scipy", "networkx", "nats", "yangson", "matplotlib")
"""Top-level packages a client or ``--help`` must not import."""

_PROBE = """
import json, sys
{code}
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(code=code)], cwd=ROOT,
                         env=keyplane_env(), capture_output=True, text=True, check=True,
                         timeout=DEADLINE_S)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_import_keyplane_client_loads_no_heavy_package() -> None:
    modules = _modules_after("import keyplane.client")
    assert "keyplane.client" in modules
    assert _heavy(modules) == []
    # the SDK needs neither the topology models nor the bus
    assert not {"keyplane.config", "keyplane.bus", "keyplane.messages"} & modules


@pytest.mark.parametrize("argv", [["--help"], ["link", "--help"], ["key", "--help"]])
def test_keyplane_help_loads_no_heavy_package(argv: list[str]) -> None:
    code = (f"import sys\nfrom keyplane.cli import app\nsys.argv = ['keyplane', *{argv!r}]\n"
            "try:\n    app()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n")
    modules = _modules_after(code)
    assert "keyplane.cli" in modules
    assert _heavy(modules) == []
    # keyplane.bus still comes in through keyplane.logsetup -> keyplane.events (the event
    # model subclasses the bus Message); the topology models and the link wire do not
    assert not {"keyplane.config", "keyplane.physical.wire", "keyplane.physical.runner"} & modules


def test_keyplane_physical_names_resolve_on_first_use() -> None:
    """The lazy package still exports every name of ``__all__``, from its home module."""
    modules = _modules_after("import keyplane.physical")
    assert _heavy(modules) == []
    import keyplane.physical as physical

    for name in physical.__all__:
        value = getattr(physical, name)
        assert value is getattr(sys.modules[physical._HOME[name]], name)
    with pytest.raises(AttributeError):
        _ = physical.no_such_name  # type: ignore[attr-defined]


def test_the_key_managers_process_loads_no_qkd_stack() -> None:
    """Embedded and node runtimes run emulated links in worker processes: their own process
    needs the worker pool, never the QKD modules (scipy.fft for privacy amplification,
    Cascade, the LDPC codes) - 0.16 s of CPU at each start."""
    modules = _modules_after("import keyplane.runtime, keyplane.demo.run")
    assert "keyplane.physical.pool" in modules
    assert not {"scipy", "keyplane.physical.runner", "keyplane.physical.modules",
                "keyplane.physical.hashing", "keyplane.physical.cascade"} & modules


def test_a_link_worker_imports_no_ldpc_codes_and_no_x509() -> None:
    """A link worker imports what a Cascade link on an in-memory bus runs, and nothing more
    before its first frame: ``scipy.sparse`` (LDPC codes) comes at the first LDPC block,
    the bus credentials (``cryptography``'s X.509) when a node's worker joins NATS."""
    modules = _modules_after("import keyplane.physical.worker")
    assert "keyplane.physical.runner" in modules
    assert not {"scipy", "keyplane.physical.reconcile_ldpc", "cryptography",
                "keyplane.bus.security", "keyplane.certs"} & modules
    after_ldpc = _modules_after("import keyplane.physical.worker\n"
                                "import keyplane.physical.reconcile_ldpc")
    assert "scipy.sparse" in after_ldpc  # the check above can fail: the import is real
    from keyplane.bus import BusSecurity
    from keyplane.bus.security import BusSecurity as home

    assert BusSecurity is home
