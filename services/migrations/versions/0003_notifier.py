"""Notifier: what it knows of candidates and enrollees, who watches whom, PCP rosters,
Part 2 consents, notices and their deliveries, the dead letters.

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_UUID = pg.UUID(as_uuid=True)


def upgrade() -> None:
    # Kafka events already handled (all three topics): redelivery is a no-op.
    op.create_table(
        "notifier_processed",
        sa.Column("event_id", _UUID, primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("at", _TS, nullable=False, server_default=sa.func.now()),
    )
    # Candidates as the notifier heard of them (enrollment.candidates + enrollment.events,
    # which may arrive in either order: each fills in what it knows).
    op.create_table(
        "notifier_candidate",
        sa.Column("candidate_id", _UUID, primary_key=True),
        sa.Column("person_id", _UUID, nullable=False),
        sa.Column("program", sa.Text, nullable=False),
        sa.Column("status", sa.Text),
        sa.Column("status_at", _TS),
        sa.Column("proposal", pg.JSONB),  # the EnrollmentCandidateV1, once it arrived
        sa.Column("enrolled_at", _TS),
        sa.Column("enrolled_event_id", _UUID),
        sa.Column("enrolled_notified", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("notifier_candidate_person_ix", "notifier_candidate", ["person_id"])
    # Who is told of a person's encounters: care teams and PCPs of enrollees, and panels
    # (subscriptions). ``key`` is an identity key (see notifier.keys).
    op.create_table(
        "watch",
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("recipient_id", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),  # enrolled:<candidate id> | panel
        sa.Column("program", sa.Text),  # the enrollee's program; None for panels
        sa.Column("person_id", _UUID),
        sa.Column("since", _TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("key", "recipient_id", "reason"),
    )
    op.create_index("watch_recipient_ix", "watch", ["recipient_id", "reason"])
    # Health plan attribution roster: member (Medi-Cal id) -> practice, with effective dates.
    op.create_table(
        "roster",
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("practice_id", sa.Text, nullable=False),
        sa.Column("effective_from", sa.Date, nullable=False),
        sa.Column("effective_to", sa.Date),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("loaded_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("member_id", "practice_id", "effective_from"),
    )
    # 42 CFR Part 2 consents to disclose SUD information to the patient's PCP (§ 2.31).
    op.create_table(
        "consent",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("person_id", _UUID, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("granted_at", _TS, nullable=False),
        sa.Column("expires_at", _TS),
        sa.Column("revoked_at", _TS),
        sa.Column("recorded_by", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
    )
    op.create_index("consent_person_ix", "consent", ["person_id", "scope"])
    # One thing to tell one recipient; unique per (source event, recipient): idempotent.
    op.create_table(
        "notice",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("recipient_id", sa.Text, nullable=False),
        sa.Column("source_event_id", _UUID, nullable=False),
        sa.Column("event_kind", sa.Text, nullable=False),
        sa.Column("person_id", _UUID),
        sa.Column("program", sa.Text),
        sa.Column("encounter_key", sa.Text),
        sa.Column("content", pg.JSONB, nullable=False),
        sa.Column("urgent", sa.Boolean, nullable=False),
        sa.Column("status", sa.Text, nullable=False),  # pending | planned | suppressed
        sa.Column("suppressed_reason", sa.Text),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("deliver_after", _TS, nullable=False),
        sa.UniqueConstraint("source_event_id", "recipient_id", name="notice_event_recipient_uq"),
    )
    op.create_index(
        "notice_due_ix", "notice", ["deliver_after"], postgresql_where=sa.text("status = 'pending'")
    )
    op.create_index(
        "notice_bundle_ix", "notice", ["recipient_id", "encounter_key"], postgresql_where=sa.text("status = 'pending'")
    )
    # One message to one endpoint of a recipient, covering one or more notices (a digest).
    op.create_table(
        "delivery",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("recipient_id", sa.Text, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("notice_ids", pg.ARRAY(_UUID), nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.Text, nullable=False),  # queued | sent | delivered | failed
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("lease_until", _TS),
        sa.Column("last_error", sa.Text),
        sa.Column("received_at", _TS, nullable=False),  # earliest source event reception: latency origin
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", _TS),
    )
    op.create_index(
        "delivery_due_ix", "delivery", ["next_attempt_at"], postgresql_where=sa.text("status = 'queued'")
    )
    op.create_index("delivery_recipient_ix", "delivery", ["recipient_id", "created_at"])
    op.create_index("delivery_notice_ix", "delivery", ["notice_ids"], postgresql_using="gin")
    op.create_table(
        "notifier_deadletter",
        sa.Column("delivery_id", _UUID, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("resent_at", _TS),
    )


def downgrade() -> None:
    for table in (
        "notifier_deadletter",
        "delivery",
        "notice",
        "consent",
        "roster",
        "watch",
        "notifier_candidate",
        "notifier_processed",
    ):
        op.drop_table(table)
