"""Agent thread ids are per owner: an internal thread_key is the primary key.

Two principals may each have a thread ``t1``; LangGraph's checkpointer keys state by its
``thread_id``, which is now the thread's ``thread_key`` (derived from owner and id for new
threads). Threads made before keep their id as their key, so their checkpoints stay found.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _threads_table(name: str, *, per_owner: bool) -> None:
    key = (
        [
            sa.Column(
                "thread_key",
                sa.String(128),
                primary_key=True,
                comment="Internal id, the checkpointer's thread_id: derived from owner and thread_id.",
            ),
            sa.Column("thread_id", sa.String(64), nullable=False, comment="The owner's id for it."),
        ]
        if per_owner
        else [sa.Column("thread_id", sa.String(64), primary_key=True)]
    )
    constraints = (
        [sa.UniqueConstraint("owner", "thread_id", name="uq_agent_threads_owner_thread_id")]
        if per_owner
        else []
    )
    op.create_table(
        name,
        *key,
        sa.Column("owner", sa.String(256), nullable=False, comment="Principal that created it."),
        sa.Column("assistant_id", sa.String(64), nullable=True, comment="Graph of its first run."),
        sa.Column("status", sa.String(16), nullable=False, comment="idle | busy | interrupted | error"),
        sa.Column("thread_metadata", sa.JSON, nullable=False),
        sa.Column("active_run_id", sa.String(64), nullable=True, comment="The run holding the thread."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        *constraints,
        comment="Agent threads (Agent Protocol); their state lives in LangGraph's checkpoint tables.",
    )


def upgrade() -> None:
    # A new table rather than a primary key altered in place: the same steps on both dialects.
    _threads_table("agent_threads_0006", per_owner=True)
    # Literal SQL, the columns written out: nothing is formatted into a statement (bandit B608).
    op.execute(
        "INSERT INTO agent_threads_0006 (thread_key, thread_id, owner, assistant_id, status, "
        "thread_metadata, active_run_id, created_at, updated_at) "
        "SELECT thread_id, thread_id, owner, assistant_id, status, "
        "thread_metadata, active_run_id, created_at, updated_at FROM agent_threads"
    )
    op.drop_table("agent_threads")
    op.rename_table("agent_threads_0006", "agent_threads")
    op.create_index("ix_agent_threads_updated_at", "agent_threads", ["updated_at"])
    with op.batch_alter_table("agent_runs") as batch:
        batch.add_column(
            sa.Column("thread_key", sa.String(128), nullable=True, comment="Its thread's thread_key.")
        )
    op.execute("UPDATE agent_runs SET thread_key = thread_id")
    with op.batch_alter_table("agent_runs") as batch:
        batch.alter_column("thread_key", existing_type=sa.String(128), nullable=False)
    op.create_index("ix_agent_runs_thread_key", "agent_runs", ["thread_key"])


def downgrade() -> None:
    # Threads keep their key as their id (where their checkpoints are).
    op.drop_index("ix_agent_runs_thread_key", "agent_runs")
    op.execute("UPDATE agent_runs SET thread_id = thread_key")
    with op.batch_alter_table("agent_runs") as batch:
        batch.drop_column("thread_key")
    _threads_table("agent_threads_0005", per_owner=False)
    op.execute(
        "INSERT INTO agent_threads_0005 (thread_id, owner, assistant_id, status, "
        "thread_metadata, active_run_id, created_at, updated_at) "
        "SELECT thread_key, owner, assistant_id, status, "
        "thread_metadata, active_run_id, created_at, updated_at FROM agent_threads"
    )
    op.drop_table("agent_threads")
    op.rename_table("agent_threads_0005", "agent_threads")
    op.create_index("ix_agent_threads_owner", "agent_threads", ["owner"])
    op.create_index("ix_agent_threads_updated_at", "agent_threads", ["updated_at"])
