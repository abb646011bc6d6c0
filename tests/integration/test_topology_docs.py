"""docs/topology.md is generated from the models and its example network really runs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyplane.api.client import Etsi014Client
from keyplane.config import parse_topology
from keyplane.config_docs import BEGIN, END, json_schema, reference_markdown
from tests.support.processes import log_tail, start_keyplane, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "topology.md"


def _example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## A first network", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_reference_and_schema_equal_the_models() -> None:
    text = DOC.read_text(encoding="utf-8")
    generated = text[text.index(BEGIN):text.index(END) + len(END)]
    assert generated == reference_markdown(), \
        "docs/topology.md is stale: python -m keyplane.config_docs --write"
    on_disk = json.loads((ROOT / "docs" / "topology.schema.json").read_text(encoding="utf-8"))
    assert on_disk == json_schema(), \
        "docs/topology.schema.json is stale: python -m keyplane.config_docs --write"


def test_the_example_validates() -> None:
    topo = parse_topology(_example(), "docs/topology.md")
    assert [n.id for n in topo.nodes] == ["a", "b", "c"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("first")
    topo = state / "first.yaml"
    topo.write_text(_example(), encoding="utf-8")
    proc = start_keyplane("run", "-t", str(topo), "-s", str(state), ready="keyplane running",
                          log=state / "run.log")
    try:
        yield state
    finally:
        assert stop(proc) == 0, log_tail(proc)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_example_network_relays_a_key_from_app_a_to_app_c(running: Path) -> None:
    got: list[object] = []

    def fetched() -> bool:
        try:
            with Etsi014Client.from_state(running, "app-a") as master:
                got.extend(master.enc_keys("app-c", number=1, size=256))
            return True
        except Exception as exc:  # 503 while the links make their first key
            if "503" not in repr(exc):
                raise
            return False

    wait_until(fetched, interval_s=0.2)
    (key,) = got
    with Etsi014Client.from_state(running, "app-c") as slave:
        (same,) = slave.dec_keys("app-a", [key.key_id])  # type: ignore[attr-defined]
    assert same.key == key.key and len(key.key) == 32  # type: ignore[attr-defined]
