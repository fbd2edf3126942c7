"""Decisions that do not depend on arrival order (issue 12).

* ``person.events_through``: the latest event time of the person's encounter events (and
  flags) applied so far. An event older than it arrived late: its person's current
  triggers are decided again (`enrollment_svc.decide`).
* ``person.*_at``: the event time each person-level fact (birth date, Medi-Cal coverage,
  county residence, primary care) was last taken from, so an old event arriving late
  does not overwrite what a newer one said.
* One encounter, one patient: an encounter is unique per facility, visit number *and
  person*; a visit number a sender reuses for another patient makes that patient's own
  encounter, and ``feed_finding`` counts it for the facility, beside event times ahead
  of receipt (no PHI: facility, kind, counts, times). The counters are sharded by lane
  (``shard``) so that lanes applying one facility's events do not queue on one row.
* One PCP-notified measure: the notifier computes it and records what it published
  (``notifier_measure``); the enrollment service keeps the latest published figure
  (``reported_measure``) and reports it instead of counting on its own.

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_FACT_TIMES = ("events_through", "birth_date_at", "medi_cal_at", "county_resident_at", "primary_care_at")


def upgrade() -> None:
    for column in _FACT_TIMES:
        op.add_column("person", sa.Column(column, _TS))
    op.drop_constraint("encounter_visit_uq", "encounter", type_="unique")
    op.create_index("encounter_visit_person_uq", "encounter", ["facility", "visit_number", "person_id"], unique=True)
    op.create_table(
        "feed_finding",
        sa.Column("facility", sa.Text, nullable=False),  # MSH-4
        sa.Column("kind", sa.Text, nullable=False),  # visit_number_reused | clock_ahead
        sa.Column("shard", sa.SmallInteger, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("first_seen", _TS, nullable=False),
        sa.Column("last_seen", _TS, nullable=False),
        sa.PrimaryKeyConstraint("facility", "kind", "shard"),
    )
    # The notifier: the figures it last put on notifications.measures (schemas/measure.py).
    op.create_table(
        "notifier_measure",
        sa.Column("measure", sa.Text, nullable=False),
        sa.Column("program", sa.Text, nullable=False),
        sa.Column("month", sa.Text, nullable=False),
        sa.Column("enrolled", sa.Integer, nullable=False),
        sa.Column("notified", sa.Integer, nullable=False),
        sa.Column("published_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("measure", "program", "month"),
    )
    # The enrollment service: the latest figure received of each (measure, program, month).
    op.create_table(
        "reported_measure",
        sa.Column("measure", sa.Text, nullable=False),
        sa.Column("program", sa.Text, nullable=False),
        sa.Column("month", sa.Text, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("enrolled", sa.Integer, nullable=False),
        sa.Column("notified", sa.Integer, nullable=False),
        sa.Column("share", sa.Float),
        sa.Column("computed_at", _TS, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("received_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("measure", "program", "month"),
    )


def downgrade() -> None:
    op.drop_table("reported_measure")
    op.drop_table("notifier_measure")
    op.drop_table("feed_finding")
    reused = op.get_bind().execute(
        sa.text("SELECT count(*) FROM (SELECT 1 FROM encounter GROUP BY facility, visit_number HAVING count(*) > 1) r")
    ).scalar_one()
    if reused:
        raise RuntimeError(
            f"cannot downgrade below 0007: {reused} visit numbers each hold the encounters of several patients, "
            "which the (facility, visit number) unique key of 0002 cannot hold; keep 0007"
        )
    op.drop_index("encounter_visit_person_uq", table_name="encounter")
    op.create_unique_constraint("encounter_visit_uq", "encounter", ["facility", "visit_number"])
    for column in reversed(_FACT_TIMES):
        op.drop_column("person", column)
