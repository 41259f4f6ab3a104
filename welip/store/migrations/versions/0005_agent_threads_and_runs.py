"""Agent threads and runs.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_threads",
        sa.Column("thread_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False, comment="Principal that created it."),
        sa.Column("assistant_id", sa.String(64), nullable=True, comment="Graph of its first run."),
        sa.Column("status", sa.String(16), nullable=False, comment="idle | busy | interrupted | error"),
        sa.Column("thread_metadata", sa.JSON, nullable=False),
        sa.Column("active_run_id", sa.String(64), nullable=True, comment="The run holding the thread."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        comment="Agent threads (Agent Protocol); their state lives in LangGraph's checkpoint tables.",
    )
    op.create_index("ix_agent_threads_owner", "agent_threads", ["owner"])
    op.create_index("ix_agent_threads_updated_at", "agent_threads", ["updated_at"])
    op.create_table(
        "agent_runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("thread_id", sa.String(64), nullable=False),
        sa.Column("assistant_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column(
            "status", sa.String(16), nullable=False, comment="pending | running | success | error | ..."
        ),
        sa.Column("multitask_strategy", sa.String(16), nullable=False),
        sa.Column("kwargs", sa.JSON, nullable=False, comment="input or command, stream modes, config."),
        sa.Column("run_metadata", sa.JSON, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("replica", sa.String(128), nullable=True, comment="Replica executing it."),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        comment="Agent runs: queued, executing or finished, on whichever replica took them.",
    )
    op.create_index("ix_agent_runs_thread_id", "agent_runs", ["thread_id"])


def downgrade() -> None:
    op.drop_table("agent_runs")
    op.drop_table("agent_threads")
