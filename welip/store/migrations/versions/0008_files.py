"""Files uploaded through the OpenAI ``/v1/files`` API (content in the artifact storage).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True, comment="OpenAI-style id: file-<hex>."),
        sa.Column("owner", sa.String(256), nullable=False, comment="Principal that uploaded it."),
        sa.Column("purpose", sa.String(16), nullable=False, comment="batch | fine-tune | evals"),
        sa.Column("filename", sa.String(255), nullable=False, comment="Name the client gave it."),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, comment="Digest of the content."),
        sa.Column(
            "content_url", sa.Text, nullable=False, comment="Where the content lives: path or s3:// URL."
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        comment="Files uploaded through /v1/files; their content lives in the artifact storage.",
    )
    op.create_index("ix_files_owner", "files", ["owner"])
    op.create_index("ix_files_expires_at", "files", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_files_expires_at", table_name="files")
    op.drop_index("ix_files_owner", table_name="files")
    op.drop_table("files")
