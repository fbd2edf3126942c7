"""Checkpoints of the bulk import (issue 14, `wpc import`).

``import_checkpoint``: one row per archive file an import has begun, written in the
transaction of each batch it commits (`adt_listener.bulk`), so that the row and the
messages stored agree whatever stops the import (Ctrl-C, kill, a power cut). A file is
known by its absolute path, size and modification time: a file changed since is
another file, imported from its start. ``content_offset`` is where the next message
begins in the file's content (decompressed, for gzip); ``done`` marks a file read to
its end, which a later run skips.

Revision ID: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "import_checkpoint",
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger, primary_key=True),
        sa.Column("mtime_ns", sa.BigInteger, primary_key=True),
        sa.Column("content_offset", sa.BigInteger, nullable=False),
        sa.Column("messages", sa.BigInteger, nullable=False),  # pieces read up to content_offset
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("import_checkpoint")
