"""Re-processing of rejected messages, and the indexes of the feeds page and message browser.

``adt_reprocess``: one row per re-run of intake on a stored rejected (AE/AR) message
(`adt_listener.reprocess`), with who asked, the outcome and its findings. When the
outcome is AA the accepted message is a new ``adt_message`` row (channel ``reprocess``,
the original's receive time) named in ``accepted_id``: the rejected row and the ACK that
was sent for it stay as they were, the proof of what the sender was told.

Indexes: the per-facility "last message" and the browser's facility search read
``adt_message`` by (sending_facility, received_at); today's duplicates read
``adt_duplicate`` by received_at.

Revision ID: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adt_reprocess",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("message_id", pg.UUID(as_uuid=True), sa.ForeignKey("adt_message.id"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("ack_code", sa.Text, nullable=False),  # AA | AE | AR: the outcome of the re-run
        sa.Column("errors", pg.JSONB, nullable=False, server_default="[]"),
        sa.Column("accepted_id", pg.UUID(as_uuid=True), sa.ForeignKey("adt_message.id")),
    )
    op.create_index("adt_reprocess_message_ix", "adt_reprocess", ["message_id", "at"])
    # At most one accepted outcome per rejected message: the second one is a 409, never a second event.
    op.create_index(
        "adt_reprocess_accepted_uq", "adt_reprocess", ["message_id"], unique=True,
        postgresql_where=sa.text("accepted_id IS NOT NULL"),
    )
    op.create_index("adt_reprocess_accepted_ix", "adt_reprocess", ["accepted_id"])
    op.create_index("adt_message_facility_received_ix", "adt_message", ["sending_facility", "received_at"])
    op.create_index("adt_duplicate_received_ix", "adt_duplicate", ["received_at"])
    op.create_index("adt_duplicate_original_ix", "adt_duplicate", ["original_id"])


def downgrade() -> None:
    op.drop_index("adt_duplicate_original_ix", table_name="adt_duplicate")
    op.drop_index("adt_duplicate_received_ix", table_name="adt_duplicate")
    op.drop_index("adt_message_facility_received_ix", table_name="adt_message")
    op.drop_table("adt_reprocess")
