"""Enrollment: identities and persons, encounters built from ADT events, flags from
partner systems, candidates and their transitions, service records, the audit trail.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
# Candidate statuses that hold the person (one at a time, programs.md "No duplication").
ACTIVE = "status IN ('queued', 'pending', 'accepted', 'enrolled')"


def upgrade() -> None:
    # A person: every identity linked by Medi-Cal id, by explicit link or by an A40 merge.
    op.create_table(
        "person",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("medi_cal_id", sa.Text, unique=True),
        sa.Column("birth_date", sa.Date),
        sa.Column("medi_cal", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("county_resident", sa.Boolean),
        sa.Column("primary_care", pg.JSONB, nullable=False, server_default="[]"),  # latest PD1-4 / ROL PP
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    # One hospital identifier (PID-3 with its assigning authority), keyed by the listener's
    # patient_key. A merged identity (A40) points at its survivor.
    op.create_table(
        "identity",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("person_id", pg.UUID(as_uuid=True), sa.ForeignKey("person.id"), nullable=False),
        sa.Column("authority", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("type_code", sa.Text),
        sa.Column("merged_into", sa.Text, sa.ForeignKey("identity.key")),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("identity_person_ix", "identity", ["person_id"])
    # Who linked or unlinked which identities, and why (the care team's API and A40 merges).
    op.create_table(
        "identity_link",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("action", sa.Text, nullable=False),  # link | unlink | merge
        sa.Column("key_a", sa.Text, nullable=False),
        sa.Column("key_b", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", _TS, nullable=False, server_default=sa.func.now()),
    )
    # Encounters: one per facility + visit number, state folded from its events.
    op.create_table(
        "encounter",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("facility", sa.Text, nullable=False),
        sa.Column("visit_number", sa.Text, nullable=False),
        sa.Column("identity_key", sa.Text, sa.ForeignKey("identity.key"), nullable=False),
        sa.Column("person_id", pg.UUID(as_uuid=True), sa.ForeignKey("person.id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("patient_class", sa.Text),
        sa.Column("hospital_service", sa.Text),
        sa.Column("start_at", _TS, nullable=False),
        sa.Column("end_at", _TS),
        sa.Column("dx_flags", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("diagnoses", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("last_event_time", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("facility", "visit_number", name="encounter_visit_uq"),
    )
    # The window counts of eligibility read one person's encounters by start time.
    op.create_index("encounter_person_start_ix", "encounter", ["person_id", "start_at"])
    op.create_index("encounter_identity_ix", "encounter", ["identity_key"])
    op.create_table(
        "encounter_event",
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("encounter_id", pg.UUID(as_uuid=True), sa.ForeignKey("encounter.id"), nullable=False),
        sa.Column("trigger_event", sa.Text, nullable=False),
        sa.Column("event_time", _TS, nullable=False),
        sa.Column("body", pg.JSONB, nullable=False),  # the EncounterEvent the fold replays
    )
    op.create_index("encounter_event_encounter_ix", "encounter_event", ["encounter_id"])
    # Facts ADT does not carry (foster care, drug court, residential SUD treatment, ...).
    op.create_table(
        "patient_flag",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("person_id", pg.UUID(as_uuid=True), sa.ForeignKey("person.id"), nullable=False),
        sa.Column("identity_key", sa.Text, sa.ForeignKey("identity.key"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("effective", _TS, nullable=False),
        sa.Column("until", _TS),
        sa.Column("detail", sa.Text),
        sa.Column("recorded_by", sa.Text, nullable=False),
        sa.Column("recorded_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("patient_flag_person_ix", "patient_flag", ["person_id", "effective"])
    # adt.events already applied (consumer dedupe by event id, in the same transaction).
    op.create_table(
        "processed_event",
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("processed_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    # adt.events records that do not decode as the contract: kept for inspection, never applied.
    op.create_table(
        "undecodable_event",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("received_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("topic", "partition", "offset", name="undecodable_event_uq"),
    )
    # Program slots; the row is locked while a candidate takes or frees a slot.
    op.create_table(
        "program_capacity",
        sa.Column("program", sa.Text, primary_key=True),
        sa.Column("capacity", sa.Integer, nullable=False),
    )
    op.create_table(
        "candidate",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),  # queue order
        sa.Column("person_id", pg.UUID(as_uuid=True), sa.ForeignKey("person.id"), nullable=False),
        sa.Column("program", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("facility", sa.Text, nullable=False),  # of the triggering encounter (team routing)
        sa.Column("encounter_id", pg.UUID(as_uuid=True), sa.ForeignKey("encounter.id")),
        sa.Column("rule_version", sa.Text, nullable=False),
        sa.Column("decision", pg.JSONB, nullable=False),  # criteria met with evidence, reason
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("proposed_at", _TS),
        sa.Column("expires_at", _TS),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("status_reason", sa.Text),
    )
    op.create_index(
        "candidate_one_active_uq", "candidate", ["person_id"], unique=True, postgresql_where=sa.text(ACTIVE)
    )
    op.create_index("candidate_program_status_ix", "candidate", ["program", "status", "seq"])
    # A person's candidates (the active one, "one episode per stay", merges): without it each
    # ADT decision scans the whole table, since the partial index above cannot serve a prepared
    # statement's `status = ANY($1)`.
    op.create_index("candidate_person_ix", "candidate", ["person_id", "program"])
    op.create_index(
        "candidate_pending_expiry_ix", "candidate", ["expires_at"], postgresql_where=sa.text("status = 'pending'")
    )
    op.create_table(
        "candidate_transition",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("candidate_id", pg.UUID(as_uuid=True), sa.ForeignKey("candidate.id"), nullable=False),
        sa.Column("from_status", sa.Text),
        sa.Column("to_status", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("at", _TS, nullable=False),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False, unique=True),
    )
    op.create_index("candidate_transition_candidate_ix", "candidate_transition", ["candidate_id", "at"])
    # Services delivered (for the measures): pre-discharge visit, home visit, PCP appointment.
    op.create_table(
        "service_record",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("candidate_id", pg.UUID(as_uuid=True), sa.ForeignKey("candidate.id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("recorded_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("service_record_candidate_ix", "service_record", ["candidate_id", "kind"])
    # Who read or changed which patient (HIPAA access accounting); never the data itself.
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("person_id", pg.UUID(as_uuid=True)),
        sa.Column("candidate_id", pg.UUID(as_uuid=True)),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("audit_person_ix", "audit", ["person_id", "at"])


def downgrade() -> None:
    for table in (
        "audit",
        "service_record",
        "candidate_transition",
        "candidate",
        "program_capacity",
        "processed_event",
        "undecodable_event",
        "patient_flag",
        "encounter_event",
        "encounter",
        "identity_link",
        "identity",
        "person",
    ):
        op.drop_table(table)
