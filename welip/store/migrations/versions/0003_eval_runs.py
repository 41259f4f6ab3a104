"""Evaluation runs.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(32), primary_key=True, comment="Eval run id (also the results folder)."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("target_kind", sa.String(16), nullable=False, comment="endpoint | batch"),
        sa.Column("status", sa.String(16), nullable=False, comment="finished | failed"),
        sa.Column("dataset_sha256", sa.String(64), nullable=True),
        sa.Column("template_sha256", sa.String(64), nullable=True),
        sa.Column("engine_version", sa.String(64), nullable=True),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False, comment="Rows in the dataset file."),
        sa.Column("scored", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False, comment="Samples whose request failed for good."),
        sa.Column("malformed", sa.Integer, nullable=False, comment="Rows that could not be rendered."),
        sa.Column("metrics", sa.JSON, nullable=False, comment="Metric name -> mean."),
        sa.Column("results_url", sa.Text, nullable=False, comment="Folder with samples.jsonl, summary.json."),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text, nullable=True, comment="Why a failed run failed."),
        comment="One row per evaluation job run; per-sample results live in storage and MLflow.",
    )
    for column in ("created_at", "task", "model"):
        op.create_index(f"ix_eval_runs_{column}", "eval_runs", [column])


def downgrade() -> None:
    op.drop_table("eval_runs")
