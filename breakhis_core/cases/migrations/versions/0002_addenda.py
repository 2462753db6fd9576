"""Addenda: changes to signed cases, kept beside them.

Revision ID: 0002_addenda
Revises: 0001_cases
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_addenda"
down_revision = "0001_cases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "addenda",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("author", sa.String(320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("changes", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("addenda")
