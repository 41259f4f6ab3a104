"""LangGraph's store for the agents app's ``/store`` API: items per owner, TTLs, embeddings.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_store_items",
        sa.Column("owner", sa.String(256), primary_key=True, comment="Principal that put it."),
        sa.Column("namespace", sa.Text, primary_key=True, comment="Its labels joined with `.`."),
        sa.Column("key", sa.String(1024), primary_key=True),
        sa.Column(
            "value",
            sa.JSON,
            nullable=False,
            comment="The JSON object, or its AES-256-GCM ciphertext (a string).",
        ),
        sa.Column(
            "embedding",
            sa.LargeBinary,
            nullable=True,
            comment="Unit vector of its indexed text as little-endian float32s, if indexed.",
        ),
        sa.Column(
            "ttl_minutes", sa.Float, nullable=True, comment="Life after a write (or a refreshing read)."
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        comment="LangGraph's store (/store API): items under namespaces, per owner.",
    )
    op.create_index("ix_agent_store_items_expires_at", "agent_store_items", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_agent_store_items_expires_at", table_name="agent_store_items")
    op.drop_table("agent_store_items")
