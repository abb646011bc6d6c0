"""deploy/Dockerfile, parsed (no Docker daemon runs here, so it is not built): a slim
Python base, the package with its NATS and PostgreSQL extras, a non-root user, keyplane as
the entrypoint, and nothing secret copied in or set."""

from __future__ import annotations

import json
from pathlib import Path

from dockerfile_parse import DockerfileParser

from keyplane.deploy.kubernetes import KEYPLANE_UID

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _parsed() -> list[dict[str, str]]:
    parser = DockerfileParser(path=str(DOCKERFILE))
    return list(parser.structure)


def _final_stage(instructions: list[dict[str, str]]) -> list[dict[str, str]]:
    starts = [i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM"]
    return instructions[starts[-1]:]


def test_base_images_are_slim_python() -> None:
    froms = [i["value"].split()[0] for i in _parsed() if i["instruction"] == "FROM"]
    assert froms and all(f.startswith("python:3.") and "-slim" in f for f in froms), froms
    major_minor = froms[-1].split(":")[1].split("-")[0]
    assert tuple(int(x) for x in major_minor.split(".")) >= (3, 11)  # requires-python


def test_installs_the_package_with_nats_and_postgres() -> None:
    runs = " ".join(i["value"] for i in _parsed() if i["instruction"] == "RUN")
    assert 'install ".[nats,postgres]"' in runs


def test_runs_as_a_fixed_non_root_user_with_keyplane_as_entrypoint() -> None:
    final = _final_stage(_parsed())
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0") and int(uid) == KEYPLANE_UID  # the manifests' runAsUser
    # nothing after USER switches back or runs as root
    after = final[[i["instruction"] for i in final].index("USER"):]
    assert all(i["instruction"] != "USER" or i["value"].split(":")[0] == uid for i in after)
    entry = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["keyplane"]  # exec form: signals reach it


def test_no_secret_is_copied_or_set() -> None:
    for ins in _parsed():
        value = ins["value"]
        if ins["instruction"] in ("COPY", "ADD"):
            sources = [s for s in value.split()[:-1] if not s.startswith("--")]
            assert set(sources) <= {"pyproject.toml", "README.md", "LICENSE", "./", "src",
                                    "/opt/keyplane"}, value
        if ins["instruction"] in ("ENV", "ARG"):
            upper = value.upper()
            assert not any(w in upper for w in ("PASSWORD", "SECRET", "TOKEN", "KEK",
                                                "PGPASS")), value
    ignore = [line.strip() for line in
              (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # everything out, then only what the image is built from
    assert {"**/*.key", "**/*.kek", "**/*.pem"} <= set(ignore)
