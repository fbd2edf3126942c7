"""Whom to visit and where, and the care team's outreach (issue 13).

* ``person.card`` (jsonb): what the hospitals say of the person: name, phone (PID-13),
  address (PID-11), each key as the newest event that stated it said it (an older event
  arriving late only fills keys no newer one stated); ``card_at`` is the newest event
  time taken. Written by the ADT path inside the person's existing UPDATE: no statement
  more per event.
* ``person.whereabouts`` (jsonb): where the person is now, from the newest event with a
  visit: facility, point of care (unit), room, bed, patient class, trigger, and whether
  it was a discharge; ``whereabouts_at`` its event time.
* ``outreach_attempt``: each try of the care team to reach a candidate (time, channel,
  outcome, a short note), who recorded it and when.

Revision ID: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0009"
down_revision = "0011"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)

CHANNELS = ("phone", "in_person", "text", "letter")
OUTCOMES = ("reached", "no_answer", "wrong_number", "refused")
NOTE_MAX = 500


def upgrade() -> None:
    op.add_column("person", sa.Column("card", pg.JSONB, nullable=False, server_default="{}"))
    op.add_column("person", sa.Column("card_at", _TS))
    op.add_column("person", sa.Column("whereabouts", pg.JSONB))
    op.add_column("person", sa.Column("whereabouts_at", _TS))
    op.create_table(
        "outreach_attempt",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("candidate_id", pg.UUID(as_uuid=True), sa.ForeignKey("candidate.id"), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("recorded_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(f"channel IN {CHANNELS!r}", name="outreach_attempt_channel_ck"),
        sa.CheckConstraint(f"outcome IN {OUTCOMES!r}", name="outreach_attempt_outcome_ck"),
        sa.CheckConstraint(f"char_length(note) <= {NOTE_MAX}", name="outreach_attempt_note_ck"),
    )
    op.create_index("outreach_attempt_candidate_ix", "outreach_attempt", ["candidate_id", "at"])


def downgrade() -> None:
    op.drop_index("outreach_attempt_candidate_ix", table_name="outreach_attempt")
    op.drop_table("outreach_attempt")
    for column in ("whereabouts_at", "whereabouts", "card_at", "card"):
        op.drop_column("person", column)
