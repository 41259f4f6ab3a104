"""Daily usage per principal and model, kept with the audit rows.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("principal", sa.String(256), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True, comment="Empty when the request named none."),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False, comment="Requests answered with status >= 400."),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        comment="Per principal, model and UTC day; added to in the transaction that inserts audit rows.",
    )
    # Usage of the audit rows written before this table existed.
    op.execute(
        """
        INSERT INTO usage_daily (day, principal, model, key_id, requests, errors, prompt_tokens,
                                 completion_tokens)
        SELECT CAST(ts AS DATE), COALESCE(principal, ''), COALESCE(model, ''), MAX(key_id), COUNT(*),
               SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), COALESCE(SUM(prompt_tokens), 0),
               COALESCE(SUM(completion_tokens), 0)
        FROM audit_log
        GROUP BY CAST(ts AS DATE), COALESCE(principal, ''), COALESCE(model, '')
        """
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
