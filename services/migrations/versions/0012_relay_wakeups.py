"""A committed outbox row wakes its relay at once, wherever the writer runs (issue 14).

Each relay publishes the rows of its service; its leader may be another replica, or another
process, than the one that wrote them, where the in-process wake-up
(`services.outbox.OutboxRelay.wake`) cannot reach. These triggers send a PostgreSQL
notification when the writing transaction commits (never before: NOTIFY is transactional),
which the leader LISTENs to:

- ``wpc_outbox``, payload the row's ``service``: one per service and transaction
  (PostgreSQL folds identical notifications of one transaction into one);
- ``wpc_adt_event_queue``: the listener's queue of events to derive, once per statement
  (its group commit writes a batch in one statement).

A notification missed (the leader's connection lost meanwhile) loses nothing: the relay
still polls, at its slower interval.

Revision ID: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0009"  # re-chained on merging i14-speed into i14-bulk: main had 0010, 0011, 0009 after 0008
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE FUNCTION wpc_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('wpc_outbox', coalesce(NEW.service, ''));
            RETURN NULL;
        END $$
    """)
    op.execute("CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
               "FOR EACH ROW EXECUTE FUNCTION wpc_outbox_notify()")
    op.execute("""
        CREATE FUNCTION wpc_adt_event_queue_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('wpc_adt_event_queue', '');
            RETURN NULL;
        END $$
    """)
    op.execute("CREATE TRIGGER adt_event_queue_notify AFTER INSERT ON adt_event_queue "
               "FOR EACH STATEMENT EXECUTE FUNCTION wpc_adt_event_queue_notify()")


def downgrade() -> None:
    op.execute("DROP TRIGGER adt_event_queue_notify ON adt_event_queue")
    op.execute("DROP FUNCTION wpc_adt_event_queue_notify()")
    op.execute("DROP TRIGGER outbox_notify ON outbox")
    op.execute("DROP FUNCTION wpc_outbox_notify()")
