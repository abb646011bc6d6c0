from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyplane.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_cli_validate_accepts_paper_topology() -> None:
    res = runner.invoke(app, ["validate", str(ROOT / "examples" / "paper_poc.yaml")])
    assert res.exit_code == 0, res.output
    assert "6 nodes" in res.output


def test_cli_malformed_topology_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - id: a\nlinks:\n  - endpoints: [a, b]\n    length_km: 3\n")
    state = tmp_path / "state"
    for cmd in (["validate", str(bad)], ["run", "-t", str(bad), "-s", str(state)],
                ["certs", "-t", str(bad), "-o", str(state / "certs")],
                ["controller", "-t", str(bad), "--bus", "nats://127.0.0.1:1", "-s", str(state)]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, (cmd, res.output)
        assert "unknown node 'b'" in res.output
    assert not state.exists()


def test_cli_node_with_unknown_id_exits_2(tmp_path: Path) -> None:
    res = runner.invoke(app, ["node", "--id", "km9", "-t", str(ROOT / "examples" / "paper_poc.yaml"),
                              "--bus", "nats://127.0.0.1:1", "-s", str(tmp_path)])
    assert res.exit_code == 2
    assert "km9" in res.output


def test_cli_certs_writes_ca_and_identities(tmp_path: Path) -> None:
    res = runner.invoke(app, ["certs", "-t", str(ROOT / "examples" / "paper_poc.yaml"), "-o",
                              str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ca.pem").exists() and (tmp_path / "sae" / "sae3.pem").exists()


def test_cli_certs_writes_bus_credentials_and_signing_keys(tmp_path: Path) -> None:
    from cryptography import x509

    res = runner.invoke(app, ["certs", "-t", str(ROOT / "examples" / "paper_poc.yaml"), "-o",
                              str(tmp_path), "--bus-host", "nats.example.org"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "operator.pem").exists()
    assert sorted(p.name for p in (tmp_path / "sign").glob("*.pem")) == sorted(
        [f"km.km{i}.pem" for i in range(6)] + ["control.sdn-controller.pem",
                                                "operator.operator.pem"])
    server = x509.load_pem_x509_certificate((tmp_path / "nats" / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "nats.example.org" in names.get_values_for_type(x509.DNSName)


def test_a_bad_km_variable_stops_a_node_before_it_waits_for_its_bus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an unreachable bus: before the check, a typo looked like a bus outage (retried forever)
    monkeypatch.setenv("KEYPLANE_KM_ETSI014_STOCK_KEY", "32")
    res = runner.invoke(app, ["node", "--id", "km1", "-t", str(ROOT / "examples" / "paper_poc.yaml"),
                              "--bus", "nats://127.0.0.1:9", "-s", str(tmp_path / "state"),
                              "--danger-insecure-bus"])
    assert res.exit_code == 2, res.output
    assert "KEYPLANE_KM_ETSI014_STOCK_KEY: no such setting" in res.output


def test_a_bad_km_variable_stops_the_demo_before_it_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYPLANE_KM_SHARE_DEBT_BYTES", "-1")
    out = tmp_path / "out"
    res = runner.invoke(app, ["demo", "-o", str(out), "--no-live"])
    assert res.exit_code == 2, res.output
    assert "KEYPLANE_KM_SHARE_DEBT_BYTES" in res.output
    assert not out.exists()
