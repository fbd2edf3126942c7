"""Ingestion: raw ADT messages, duplicates, the transactional outbox, the event queue, feed conformance.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every message the listener receives, accepted or not, with the exact ACK it was sent.
    # The AA row is committed before the ACK leaves: it is the proof of custody.
    op.create_table(
        "adt_message",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("channel", sa.Text, nullable=False),  # mllp | http
        sa.Column("sender", sa.Text, nullable=False),  # authenticated sender name or peer address
        sa.Column("sending_facility", sa.Text, nullable=False),  # MSH-4 ('' when absent)
        sa.Column("control_id", sa.Text),  # MSH-10
        sa.Column("message_type", sa.Text),
        sa.Column("trigger_event", sa.Text),
        sa.Column("hl7_version", sa.Text),
        sa.Column("ack_code", sa.Text, nullable=False),  # AA | AE | AR
        sa.Column("errors", pg.JSONB, nullable=False, server_default="[]"),
        sa.Column("ack", sa.LargeBinary, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("charset", sa.Text),
        sa.Column("event_id", pg.UUID(as_uuid=True)),
        sa.Column("patient_key", sa.Text),
        sa.Column("conformance_checked", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("conformance_checked_at", sa.DateTime(timezone=True)),  # set when hl7apy has checked it
    )
    # A retransmission of an accepted message (same MSH-4 + MSH-10) must not create a second row.
    # Rejected messages are not deduplicated: a corrected resend under the same control id is normal.
    op.create_index(
        "adt_message_accepted_uq",
        "adt_message",
        ["sending_facility", "control_id"],
        unique=True,
        postgresql_where=sa.text("ack_code = 'AA'"),
    )
    op.create_index("adt_message_received_at_ix", "adt_message", ["received_at"])
    op.create_index("adt_message_patient_ix", "adt_message", ["patient_key"])
    op.create_index(
        "adt_message_conformance_todo_ix",
        "adt_message",
        ["received_at"],
        postgresql_where=sa.text("NOT conformance_checked"),
    )

    # Copies of retransmissions, kept for inspection (a copy whose bytes differ from the
    # original under the same control id is a sender defect worth seeing).
    op.create_table(
        "adt_duplicate",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("original_id", pg.UUID(as_uuid=True), sa.ForeignKey("adt_message.id"), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("same_bytes", sa.Boolean, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
    )

    # Transactional outbox: written in the same statement as the message; the relay
    # publishes rows in id order and deletes them once the broker has acknowledged.
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )

    # Accepted messages whose adt.events record is still to be published. The event is
    # derived from the stored raw message after the commit (adt_listener/events.py), so
    # the row is only a reference; the relay publishes in id order and deletes once the
    # broker has acknowledged. No foreign key: the row is written in the same statement
    # as its message, and a per-row check would cost the group commit an index probe.
    op.create_table(
        "adt_event_queue",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("message_id", pg.UUID(as_uuid=True), nullable=False),
    )

    # hl7apy conformance findings, one row per (message, finding); aggregated into the
    # per-facility feed-quality report.
    op.create_table(
        "conformance_finding",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("message_id", pg.UUID(as_uuid=True), sa.ForeignKey("adt_message.id"), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sending_facility", sa.Text, nullable=False),
        sa.Column("hl7_version", sa.Text),
        sa.Column("trigger_event", sa.Text),
        sa.Column("kind", sa.Text, nullable=False),  # e.g. unparseable, structure, datatype, table
        sa.Column("location", sa.Text),  # e.g. PID-8 (never the value)
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("conformance_finding_facility_ix", "conformance_finding", ["sending_facility", "checked_at"])


def downgrade() -> None:
    op.drop_table("conformance_finding")
    op.drop_table("adt_event_queue")
    op.drop_table("outbox")
    op.drop_table("adt_duplicate")
    op.drop_table("adt_message")
