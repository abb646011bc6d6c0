"""key batches and sealed key material

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00

* ``key_batches`` (one row per batch of end-to-end keys) and ``key_streams`` (delivered
  index ranges per session) replace ``delivered_keys`` (one row per key, rewritten at each
  state). Existing rows move over: every key not yet handed out into one batch per node
  and session, every delivered index into its stream's ranges.
* ``sealed`` on ``link_key_blocks`` and ``key_batches``: rows written before this revision
  hold plaintext (``sealed`` false); the KM seals them under its key-encryption key the
  next time it writes them (the migration cannot: the KEK never reaches the database).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def _ranges(indexes: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(set(indexes)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def upgrade() -> None:
    op.add_column('link_key_blocks', sa.Column('sealed', sa.Boolean(), nullable=False,
                                               server_default=sa.false()))
    batches = op.create_table(
        'key_batches',
        sa.Column('node', sa.String(length=64), nullable=False),
        sa.Column('batch_id', sa.String(length=36), nullable=False),
        sa.Column('session_id', sa.String(length=64), nullable=False),
        sa.Column('sae_id', sa.String(length=64), nullable=True),
        sa.Column('peer_sae', sa.String(length=64), nullable=True),
        sa.Column('t', sa.Float(), nullable=False),
        sa.Column('key_ids', sa.JSON(), nullable=False),
        sa.Column('indexes', sa.JSON(), nullable=False),
        sa.Column('size_bits', sa.JSON(), nullable=False),
        sa.Column('states', sa.Text(), nullable=False),
        sa.Column('lengths', sa.JSON(), nullable=False),
        sa.Column('provenance', sa.JSON(), nullable=False),
        sa.Column('material', sa.LargeBinary(), nullable=False),
        sa.Column('sealed', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint('node', 'batch_id'),
    )
    with op.batch_alter_table('key_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_key_batches_session_id'), ['session_id'],
                              unique=False)
    streams = op.create_table(
        'key_streams',
        sa.Column('node', sa.String(length=64), nullable=False),
        sa.Column('session_id', sa.String(length=64), nullable=False),
        sa.Column('delivered', sa.JSON(), nullable=False),
        sa.Column('updated_t', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('node', 'session_id'),
    )
    old = sa.table('delivered_keys', *(sa.column(c) for c in (
        'node', 'key_id', 'session_id', 'index', 't', 'state', 'size_bits', 'sae_id',
        'peer_sae', 'material', 'provenance')))
    conn = op.get_bind()
    held: dict[tuple[str, str], list[Any]] = {}
    delivered: dict[tuple[str, str], list[int]] = {}
    query = sa.select(old).order_by(old.c.node, old.c.session_id, old.c.index)
    for r in conn.execute(query).mappings():  # mappings: a Row's .index is tuple.index
        if r['state'] == 'delivered':
            delivered.setdefault((r['node'], r['session_id']), []).append(r['index'])
        else:
            held.setdefault((r['node'], r['session_id']), []).append(r)
    rows = []
    for (node, sid), keys in held.items():
        rows.append({
            'node': node, 'batch_id': str(uuid.uuid4()), 'session_id': sid,
            'sae_id': keys[0]['sae_id'], 'peer_sae': keys[0]['peer_sae'],
            't': min(k['t'] for k in keys), 'key_ids': [k['key_id'] for k in keys],
            'indexes': [k['index'] for k in keys], 'size_bits': [k['size_bits'] for k in keys],
            'states': ''.join('r' if k['state'] == 'ready' else 'p' for k in keys),
            'lengths': [len(k['material'] or b'') for k in keys],
            'provenance': [_json(k['provenance']) or [] for k in keys],
            'material': b''.join(k['material'] or b'' for k in keys), 'sealed': False})
    if rows:
        op.bulk_insert(batches, rows)
    if delivered:
        op.bulk_insert(streams, [{'node': node, 'session_id': sid, 'delivered': _ranges(ix),
                                  'updated_t': 0.0}
                                 for (node, sid), ix in delivered.items()])
    with op.batch_alter_table('delivered_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivered_keys_session_id'))
    op.drop_table('delivered_keys')


def downgrade() -> None:
    raise NotImplementedError("0002 moves key rows into batches; restore a backup instead")
