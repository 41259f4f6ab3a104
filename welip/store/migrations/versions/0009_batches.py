"""Batches created through the OpenAI ``/v1/batches`` API.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TIMES = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at")


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True, comment="OpenAI-style id: batch_<hex>."),
        sa.Column("owner", sa.String(256), nullable=False, comment="Principal that created it."),
        sa.Column("endpoint", sa.String(64), nullable=False, comment="/v1/chat/completions | /v1/embeddings"),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column(
            "status", sa.String(16), nullable=False, comment="validating | in_progress | ... | cancelled"
        ),
        sa.Column("output_file_id", sa.String(64), nullable=True),
        sa.Column("error_file_id", sa.String(64), nullable=True),
        sa.Column("request_total", sa.Integer, nullable=False),
        sa.Column("request_completed", sa.Integer, nullable=False),
        sa.Column("request_failed", sa.Integer, nullable=False),
        sa.Column(
            "batch_metadata", sa.JSON, nullable=True, comment="The caller's metadata (16 pairs at most)."
        ),
        sa.Column("errors", sa.JSON, nullable=True, comment="Why it failed: OpenAI's errors.data."),
        sa.Column("job_id", sa.String(128), nullable=True, comment="The Ray Job running it."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(name, sa.DateTime(timezone=True), nullable=True) for name in _TIMES),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        comment="Batches (/v1/batches): one Ray Job each runs an input file's requests through the gateway.",
    )
    op.create_index("ix_batches_owner", "batches", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_batches_owner", table_name="batches")
    op.drop_table("batches")
