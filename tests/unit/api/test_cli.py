"""``keyplane key ...`` against real mutual-TLS KMEs, reading endpoints.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.api_server import serve_network_in_thread, write_endpoints
from tests.support.fake_km import FakeKeyNetwork
from tests.support.topologies import line3
from typer.testing import CliRunner

from keyplane.api.cli import app
from keyplane.certs import ensure_network_certs


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    topo = line3()
    base = tmp_path_factory.mktemp("state")
    issued = ensure_network_certs(topo, base / "certs")
    with serve_network_in_thread(topo, issued, FakeKeyNetwork(topo, seed=3).km) as servers:
        write_endpoints(base, topo, issued, servers)
        yield base


def _run(state: Path, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, [*args, "--state", str(state)])
    return r.exit_code, r.stdout, r.stderr


def test_cli_get_then_dec_returns_same_keys(state: Path) -> None:
    code, out, _ = _run(state, "get", "sae_a", "sae_c", "-n", "2", "--size", "128")
    assert code == 0
    keys = json.loads(out)["keys"]
    code, out, _ = _run(state, "dec", "sae_c", "sae_a", *[k["key_ID"] for k in keys])
    assert code == 0 and json.loads(out)["keys"] == keys


def test_cli_status_reports_pair(state: Path) -> None:
    code, out, _ = _run(state, "status", "sae_a", "sae_b")
    assert code == 0 and json.loads(out)["slave_SAE_ID"] == "sae_b"


def test_cli_refusal_prints_http_code_and_exits_1(state: Path) -> None:
    code, _, err = _run(state, "get", "sae_a", "sae_b", "--size", "12")
    assert code == 1 and json.loads(err)["http_status"] == 400


def test_cli_etsi004_open_getkey_close(state: Path) -> None:
    code, out, _ = _run(state, "open", "sae_a", "sae_b", "--chunk-size", "16")
    assert code == 0 and json.loads(out)["status"] == 1
    ksid = json.loads(out)["Key_stream_ID"]
    code, out, _ = _run(state, "open", "sae_b", "sae_a", "--ksid", ksid)
    assert code == 0 and json.loads(out)["status"] == 0
    a = json.loads(_run(state, "getkey", "sae_a", ksid)[1])
    b = json.loads(_run(state, "getkey", "sae_b", ksid, "--index", "0")[1])
    assert a["index"] == 0 and a["key_buffer"] == b["key_buffer"]
    assert _run(state, "close", "sae_a", ksid)[0] == 0
    assert _run(state, "close", "sae_b", ksid)[0] == 0
    code, _, err = _run(state, "getkey", "sae_a", ksid)
    assert code == 1 and json.loads(err)["status"] == 4  # unknown at the fake: never 9


def test_cli_unknown_sae_or_missing_state_exits_2(state: Path, tmp_path: Path) -> None:
    assert _run(state, "status", "nobody", "sae_b")[0] == 2
    assert _run(tmp_path, "status", "sae_a", "sae_b")[0] == 2
