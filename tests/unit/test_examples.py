"""The example networks shipped in the package: each loads, and the generated one is current."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keyplane.config import EXAMPLES_DIR, example_path, load_topology
from keyplane.errors import ConfigError
from keyplane.topogen import generate

EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.glob("*.yaml"))


def test_the_package_ships_the_documented_examples() -> None:
    assert {"paper_poc.yaml", "metro_mesh.yaml", "long_haul.yaml", "hybrid_fallback.yaml",
            "generated_100.yaml"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_loads(name: str) -> None:
    topo = load_topology(EXAMPLES_DIR / name)
    assert topo.nodes and topo.applications


def test_long_haul_spans_about_500_km_of_trusted_relays() -> None:
    topo = load_topology(EXAMPLES_DIR / "long_haul.yaml")
    assert 450 <= sum(link.length_km for link in topo.links) <= 550


def test_generated_example_is_what_the_generator_makes() -> None:
    assert (EXAMPLES_DIR / "generated_100.yaml").read_text() == generate(100, seed=1)
    assert generate(30, seed=2) == generate(30, seed=2) != generate(30, seed=3)


def test_an_example_is_found_by_name_from_any_folder(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert not Path("examples/paper_poc.yaml").exists()
    for name in ("paper_poc", "paper_poc.yaml", "examples/paper_poc.yaml"):
        assert example_path(name) == EXAMPLES_DIR / "paper_poc.yaml"
        assert load_topology(name).name == "paper-poc"
    assert example_path("elsewhere/paper_poc.yaml") is None
    with pytest.raises(ConfigError, match="cannot read"):
        load_topology("elsewhere/paper_poc.yaml")
    # a file that exists always wins over the packaged example
    (tmp_path / "paper_poc.yaml").write_text("nodes: [{id: mine}]\n")
    assert load_topology("paper_poc.yaml").nodes[0].id == "mine"
    assert os.getcwd() == str(tmp_path)
