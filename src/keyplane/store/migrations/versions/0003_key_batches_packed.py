"""key batches with packed columns

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 03:40:00

``key_batches`` keeps one row per batch, but its per-key columns are packed instead of JSON
lists (issue #15: JSON of the batch rows was a large part of a bulk key request's cost):
``key_ids`` ``u`` and 16 bytes per id when every id is a lowercase UUID, else ``t`` and
the comma-separated ids, ``indexes`` little-endian int64s,
``size_bits`` and ``lengths`` little-endian int32s, ``provenance`` JSON runs
``[[count, records], ...]`` (the keys of a relay batch share one list). ``layout`` says how
a row's sealed ``material`` is bound to its row: 1, over the JSON lists of ids, indexes
and lengths (rows written before this revision: the migration cannot seal again, the KEK
never reaches the database; the KM rewrites them with layout 2 when it loads them), 2,
over the packed columns.

The rows are read, the table made again and the rows written back converted (so a fresh
database and a migrated one have the same table, constraint and index names).
"""

from __future__ import annotations

import json
import re
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _pack(values: list[int], width: int) -> bytes:
    return b''.join(int(v).to_bytes(width, 'little', signed=True) for v in values)


_UUIDS = re.compile(r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})+")


def _ids(key_ids: list[str]) -> bytes:
    text = ''.join(key_ids)
    if len(text) == 36 * len(key_ids) and _UUIDS.fullmatch(text):
        return b'u' + bytes.fromhex(text.replace('-', ''))
    return b't' + ','.join(key_ids).encode()


def _runs(provenance: list[Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for p in provenance:
        p = p or []
        if out and out[-1][1] == p:
            out[-1][0] += 1
        else:
            out.append([1, p])
    return out


def _create(layout_default: int) -> sa.Table:
    table = op.create_table(
        'key_batches',
        sa.Column('node', sa.String(length=64), nullable=False),
        sa.Column('batch_id', sa.String(length=36), nullable=False),
        sa.Column('session_id', sa.String(length=64), nullable=False),
        sa.Column('sae_id', sa.String(length=64), nullable=True),
        sa.Column('peer_sae', sa.String(length=64), nullable=True),
        sa.Column('t', sa.Float(), nullable=False),
        sa.Column('key_ids', sa.LargeBinary(), nullable=False),
        sa.Column('indexes', sa.LargeBinary(), nullable=False),
        sa.Column('size_bits', sa.LargeBinary(), nullable=False),
        sa.Column('states', sa.Text(), nullable=False),
        sa.Column('lengths', sa.LargeBinary(), nullable=False),
        sa.Column('provenance', sa.JSON(), nullable=False),
        sa.Column('material', sa.LargeBinary(), nullable=False),
        sa.Column('sealed', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('layout', sa.SmallInteger(), nullable=False,
                  server_default=sa.text(str(layout_default))),
        sa.PrimaryKeyConstraint('node', 'batch_id'),
    )
    with op.batch_alter_table('key_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_key_batches_session_id'), ['session_id'],
                              unique=False)
    return table


def upgrade() -> None:
    old = sa.table('key_batches', *(sa.column(c) for c in (
        'node', 'batch_id', 'session_id', 'sae_id', 'peer_sae', 't', 'key_ids', 'indexes',
        'size_bits', 'states', 'lengths', 'provenance', 'material', 'sealed')))
    conn = op.get_bind()
    rows = []
    for r in conn.execute(sa.select(old)).mappings():
        key_ids = [str(k) for k in _json(r['key_ids'])]
        if any(',' in k for k in key_ids):
            raise RuntimeError(f"key_batches row {r['node']}/{r['batch_id']}: a key_ID holds "
                               "a comma; it cannot be packed (restore a backup)")
        rows.append({
            'node': r['node'], 'batch_id': r['batch_id'], 'session_id': r['session_id'],
            'sae_id': r['sae_id'], 'peer_sae': r['peer_sae'], 't': r['t'],
            'key_ids': _ids(key_ids), 'indexes': _pack(_json(r['indexes']), 8),
            'size_bits': _pack(_json(r['size_bits']), 4), 'states': r['states'],
            'lengths': _pack(_json(r['lengths']), 4),
            'provenance': _runs(_json(r['provenance'])), 'material': r['material'],
            'sealed': bool(r['sealed']), 'layout': 1})
    with op.batch_alter_table('key_batches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_key_batches_session_id'))
    op.drop_table('key_batches')
    table = _create(2)
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    raise NotImplementedError("0003 packs key batch rows; restore a backup instead")
