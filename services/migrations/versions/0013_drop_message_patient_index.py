"""Drop ``adt_message_patient_ix``: an index the listener wrote per message and nothing read (issue 14).

Every accepted or rejected message is one ``INSERT`` into ``adt_message``, and each index
on it is one more tuple, WAL record and page touched in the group commit that the ACK
waits for. The index on ``patient_key`` (0001) was meant for looking a patient's raw
messages up, but no statement does: the listener selects ``patient_key`` only along
with a message it already found by id (the `adt.events` relay, the message page), and
the enrollment service keeps each person's history in its own tables, keyed there.

The column stays, with its values. Should a read by patient key come, it brings its
index back in its own revision (``CREATE INDEX CONCURRENTLY`` on a live table).

Revision ID: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("adt_message_patient_ix", table_name="adt_message")


def downgrade() -> None:
    op.create_index("adt_message_patient_ix", "adt_message", ["patient_key"])
