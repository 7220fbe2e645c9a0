"""Initial schema: API keys, studies, answers, audit events.

Revision ID: 0001
Revises:
Create Date: 2026-12-05

A revision is frozen once released: it names plain SQLAlchemy types, never the live models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)  # db.UTCDateTime's column type


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=12), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created", UTC, nullable=False),
        sa.Column("revoked", UTC, nullable=True),
        sa.Column("rate_per_minute", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("name", name="uq_api_keys_name"),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", UTC, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("path", sa.String(length=300), nullable=False),
        sa.Column("study_id", sa.String(length=32), nullable=True),
        sa.Column("adapter", sa.String(length=200), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])

    op.create_table(
        "studies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("created", UTC, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("series", sa.JSON(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("folder", sa.String(length=1024), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_studies"),
    )
    op.create_index("ix_studies_owner_created", "studies", ["owner", "created"])

    op.create_table(
        "answers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("created", UTC, nullable=False),
        sa.Column("study_id", sa.String(length=32), nullable=True),
        sa.Column("adapter", sa.String(length=200), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=True),
        sa.Column("view", sa.JSON(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("sr_uid", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], name="fk_answers_study_id_studies",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_answers"),
    )
    op.create_index("ix_answers_owner_created", "answers", ["owner", "created"])
    op.create_index("ix_answers_study_id", "answers", ["study_id"])


def downgrade() -> None:
    for table in ("answers", "studies", "audit_events", "api_keys"):
        op.drop_table(table)  # its indexes go with it
