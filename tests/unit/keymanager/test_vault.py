"""Key vault bookkeeping: the per-session index and ready counts agree with a full scan."""

from __future__ import annotations

import random
import uuid

from keyplane.keymanager.journal import Journal
from keyplane.keymanager.vault import HeldKey, KeyVault, new_key_id
from keyplane.store import Database


async def test_vault_ready_count_matches_a_scan_after_random_changes(db: Database) -> None:
    vault = KeyVault("km0", Journal(db))
    rng = random.Random(73)
    sessions = ["s1", "s2", "s3"]
    next_index = dict.fromkeys(sessions, 0)
    for step in range(400):
        sid = rng.choice(sessions)
        op = rng.randrange(6)
        keys = vault.of_session(sid)
        if op <= 2 or not keys:
            state = rng.choice(["pending", "ready"])
            vault.add(HeldKey(f"k{step}", sid, next_index[sid], 256, b"\x01" * 32, state))
            next_index[sid] += 1
        elif op <= 4:
            vault.set_state(rng.choice(keys), rng.choice(["pending", "ready", "delivered"]))
        else:
            vault.drop_session(sid)
            vault.set_state(rng.choice(keys), "ready")  # a late change to a dropped key
        for s in sessions:
            scan = [k for k in vault.by_id.values() if k.session_id == s]
            assert sorted(k.key_id for k in vault.of_session(s)) == sorted(
                k.key_id for k in scan)
            assert vault.ready_count(s) == sum(1 for k in scan if k.state == "ready")


def test_new_key_id_is_a_version_7_uuid_ordered_by_time() -> None:
    ids = [new_key_id(1_700_000_000.0 + i / 100) for i in range(50)]
    for key_id in ids:
        u = uuid.UUID(key_id)
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
        assert str(u) == key_id  # canonical lower-case text, as ETSI 014 key_IDs
    assert ids == sorted(ids)  # one id per 10 ms: the time part orders them
    assert len({new_key_id(1_700_000_000.0) for _ in range(1000)}) == 1000
