"""Every pod of a Kubernetes deployment starts at once against a fresh PostgreSQL database:
each process migrates the schema itself (Database.open), so they must take turns. Without
the advisory lock, 6 processes at once failed in 2 of 3 rounds (UniqueViolation on
PostgreSQL's catalogue) and the pods would crash-loop until one had won."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from keyplane.services import PostgresServer
from tests.support.deadlines import DEADLINE_S
from tests.support.processes import ROOT, keyplane_env

pytestmark = [pytest.mark.multiprocess, pytest.mark.postgres, pytest.mark.slow]

OPEN = """
import asyncio, sys
from keyplane.store import Database
async def main():
    db = await Database.open(sys.argv[1])
    await db.close()
asyncio.run(main())
"""


@pytest.mark.parametrize("round_", range(2))
def test_processes_started_together_all_open_a_fresh_database(
        postgres_server: PostgresServer, round_: int) -> None:
    url = postgres_server.create_database("t_" + uuid.uuid4().hex[:12])
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, url], stderr=subprocess.PIPE,
                              text=True, env=keyplane_env(), cwd=ROOT) for _ in range(6)]
    errors = [p.communicate(timeout=DEADLINE_S)[1] for p in procs]
    failed = [e.strip().splitlines()[-1] for p, e in zip(procs, errors, strict=True)
              if p.returncode != 0]
    assert not failed, failed
