"""Consumer events set aside (parked) by the enrollment service and the notifier (issue 10 part 1).

A record a consumer could not apply, after a few tries, is kept here with the error
(class and code locations, never the exception's text) and published to the
consumer's dead-letter topic; `wpc redrive` and ``POST /v1/parked/{id}/redrive`` apply
it again after a fix (services/parking.py).

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "parked_event",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("consumer_group", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("key", sa.LargeBinary),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("event_id", pg.UUID(as_uuid=True)),  # when the record decodes far enough to say
        sa.Column("error_class", sa.Text, nullable=False),
        sa.Column("traceback", sa.Text, nullable=False),  # code locations only
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("parked_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("last_failed_at", _TS, nullable=False, server_default=sa.func.now()),
        # parked: waiting for a fix; redriven: applied again with success (kept for the record).
        sa.Column("status", sa.Text, nullable=False, server_default="parked"),
        sa.Column("redriven_at", _TS),
        sa.Column("redriven_by", sa.Text),
        sa.CheckConstraint("status IN ('parked', 'redriven')", name="parked_event_status_ck"),
        # A redelivered record that fails again is the same parked record, not a second one.
        sa.UniqueConstraint("consumer_group", "topic", "partition", "offset", name="parked_event_uq"),
    )
    op.create_index("parked_event_waiting_ix", "parked_event", ["consumer_group", "id"],
                    postgresql_where=sa.text("status = 'parked'"))


def downgrade() -> None:
    op.drop_table("parked_event")
