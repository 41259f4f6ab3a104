"""LoRA adapters and model aliases.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapters",
        sa.Column(
            "id", sa.String(128), primary_key=True, comment="Model id clients send: <name>-v<version>."
        ),
        sa.Column("name", sa.String(64), nullable=False, comment="Registered model name."),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("base_model_id", sa.String(128), nullable=False, comment="Serving id of the base model."),
        sa.Column("uri", sa.Text, nullable=False, comment="Adapter folder: local path or s3:// URL."),
        sa.Column("kind", sa.String(16), nullable=False, comment="sft | grpo"),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column(
            "lineage", sa.JSON, nullable=False, comment="Base model, dataset and config hashes, commit."
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_adapters_name_version"),
        comment="LoRA adapters the gateway may hot-load into their base model's engine.",
    )
    op.create_index("ix_adapters_name", "adapters", ["name"])
    op.create_table(
        "model_aliases",
        sa.Column("alias", sa.String(128), primary_key=True, comment="Model id clients send."),
        sa.Column("target", sa.String(128), nullable=False, comment="A served model id or an adapter id."),
        sa.Column("previous", sa.String(128), nullable=True, comment="Target before the last switch."),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=True),
        sa.Column("decision", sa.JSON, nullable=True, comment="The gate that allowed the switch, if any."),
        comment="Names the gateway routes to another model; `welip promote` switches them.",
    )


def downgrade() -> None:
    op.drop_table("model_aliases")
    op.drop_table("adapters")
