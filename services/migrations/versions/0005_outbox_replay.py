"""Outbox replay after a broker loss (issue 10 part 3).

Published records are kept (instead of deleted) until every consumer group that reads
their topic has committed past them, so that a broker which lost them (Tansu keeps
topics in memory) can be given them again: `services.replay`.

- ``outbox_sent``: rows of ``outbox`` the broker acknowledged, with where it put them.
- ``adt_event_sent``: the same for ``adt_event_queue`` (a reference to the stored message;
  its event is derived again, byte for byte, when re-published).
- ``relay_broker``: per journal, the id of the cluster its rows were published to; a
  different id later means a new, empty broker.

No index besides the keys: the kept rows are few (what consumers have not read yet,
bounded by WPC_REPLAY_RETAIN_MAX), and each index would cost every publish.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_sent",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),  # the outbox row's id
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "adt_event_sent",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),  # the adt_event_queue row's id
        sa.Column("message_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "relay_broker",
        sa.Column("journal", sa.Text, primary_key=True),
        sa.Column("cluster_id", sa.Text, nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("relay_broker")
    op.drop_table("adt_event_sent")
    op.drop_table("outbox_sent")
