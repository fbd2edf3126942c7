"""A reused control id with different content is a new message (issue 10 part 7).

Until now an accepted message was unique per (MSH-4, MSH-10), so a different message
under a reused control id was taken for a retransmission and dropped. From here the
unique key of accepted messages is (MSH-4, MSH-10, content digest), the digest being
`adt_listener.digest.content_digest` of the raw message (the same message but for
MSH-7 and segment terminators has the same digest).

Existing rows stay valid: every row gets the digest of its stored raw message, computed
here with the listener's own function (the definition is stored data, and a resend
arriving after the upgrade must find its original). Their ``event_id`` is left as it
was published (MSH-4 + MSH-10 alone); new messages get ids that include the digest.

``content_digest`` may be NULL only for rows written by hand or by tools: the listener
always sets it, and such a row takes part in no deduplication.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from adt_listener.digest import content_digest

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BATCH = 1000

_FIRST = "SELECT id, raw FROM adt_message ORDER BY id LIMIT :n"
_NEXT = "SELECT id, raw FROM adt_message WHERE id > :after ORDER BY id LIMIT :n"
_SET = (
    "UPDATE adt_message m SET content_digest = d.digest "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:digests AS bytea[])) AS d(id, digest) WHERE m.id = d.id"
)
_REUSED = (
    "SELECT count(*) FROM (SELECT 1 FROM adt_message WHERE ack_code = 'AA' "
    "GROUP BY sending_facility, control_id HAVING count(*) > 1) AS r"
)


def upgrade() -> None:
    op.add_column("adt_message", sa.Column("content_digest", sa.LargeBinary))
    conn = op.get_bind()
    # In id order, a batch at a time: the raw messages of a large table never sit in memory at once.
    rows = conn.execute(sa.text(_FIRST), {"n": _BATCH}).all()
    while rows:
        conn.execute(
            sa.text(_SET),
            {"ids": [r.id for r in rows], "digests": [content_digest(bytes(r.raw)) for r in rows]},
        )
        rows = conn.execute(sa.text(_NEXT), {"after": rows[-1].id, "n": _BATCH}).all()

    op.drop_index("adt_message_accepted_uq", table_name="adt_message")
    # A retransmission of an accepted message (same MSH-4 + MSH-10 + digest) must not
    # create a second row; a different message under the same control id must.
    op.create_index(
        "adt_message_accepted_uq",
        "adt_message",
        ["sending_facility", "control_id", "content_digest"],
        unique=True,
        postgresql_where=sa.text("ack_code = 'AA'"),
    )


def downgrade() -> None:
    reused = op.get_bind().execute(sa.text(_REUSED)).scalar_one()
    if reused:
        raise RuntimeError(
            f"cannot downgrade below 0006: {reused} control ids each hold several accepted messages, "
            "which the (MSH-4, MSH-10) unique index of 0001 cannot hold; keep 0006"
        )
    op.drop_index("adt_message_accepted_uq", table_name="adt_message")
    op.create_index(
        "adt_message_accepted_uq",
        "adt_message",
        ["sending_facility", "control_id"],
        unique=True,
        postgresql_where=sa.text("ack_code = 'AA'"),
    )
    op.drop_column("adt_message", "content_digest")
