"""Each service owns its outbox (issue 11): the ``service`` column.

Every row of ``outbox`` (and of its replay journal ``outbox_sent``) names the service that
wrote it, and each service's relay reads only its own rows (`services.outbox.OutboxTable`),
under a lock key of its own. The index serves that read: a service's rows in id order.

Rows written before this revision have no service (NULL). Nothing here guesses one from
the topic (topic names are settings, which a migration does not read): the relay of the
service whose topics a row names adopts it when it starts leading. The column stays
nullable for them; every writer sets it.

Revision ID: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("outbox", "outbox_sent"):
        op.add_column(table, sa.Column("service", sa.Text))
        op.create_index(f"{table}_service_id", table, ["service", "id"])


def downgrade() -> None:
    for table in ("outbox_sent", "outbox"):
        op.drop_index(f"{table}_service_id", table_name=table)
        op.drop_column(table, "service")
