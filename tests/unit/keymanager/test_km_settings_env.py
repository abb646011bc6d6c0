"""KM settings from ``KEYPLANE_KM_*`` variables: how a ``keyplane node``/``run``/``nodes``
process's key managers are tuned without code (e.g. the ETSI 014 key stock, #15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyplane.bus import MemoryBus
from keyplane.config import load_topology
from keyplane.errors import ConfigError
from keyplane.keymanager import KmSettings
from keyplane.keymanager.settings import km_settings_from_env
from keyplane.runtime import NodeRuntime, RuntimeContext
from keyplane.store import Database

ROOT = Path(__file__).resolve().parents[3]


def test_variables_set_the_fields_and_explicit_arguments_win() -> None:
    st = km_settings_from_env({"KEYPLANE_KM_ETSI014_STOCK_KEYS": "32",
                               "KEYPLANE_KM_SHARE_DEBT_BYTES": "1024", "OTHER": "x"},
                              share_debt_bytes=2048)
    assert st.etsi014_stock_keys == 32 and st.share_debt_bytes == 2048
    assert km_settings_from_env({}) == KmSettings()


def test_a_bad_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="KEYPLANE_KM_ETSI014_STOCK_KEYS"):
        km_settings_from_env({"KEYPLANE_KM_ETSI014_STOCK_KEYS": "5000"})  # at most 1,024
    with pytest.raises(ConfigError, match="KEYPLANE_KM_NOPE: no such setting"):
        km_settings_from_env({"KEYPLANE_KM_NOPE": "1"})


async def test_a_process_context_gives_its_nodes_key_managers_the_variables(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEYPLANE_KM_ETSI014_STOCK_KEYS", "32")
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    try:
        ctx = RuntimeContext(topology=load_topology(ROOT / "examples" / "paper_poc.yaml"),
                             bus=MemoryBus(), db=db)
        node = ctx.topology.nodes[0].id
        assert NodeRuntime(ctx, node).km.settings.etsi014_stock_keys == 32
        own = KmSettings(etsi014_stock_keys=8)  # a caller's own settings win
        assert NodeRuntime(ctx, node, km_settings=own).km.settings is own
    finally:
        await db.close()
