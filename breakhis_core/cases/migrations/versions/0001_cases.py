"""Cases, their images and the stored image files.

Revision ID: 0001_cases
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_cases"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_images",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("suffix", sa.String(8), nullable=False),
        sa.Column("n_bytes", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("accession", sa.String(32), nullable=False, unique=True),
        sa.Column("patient_ref", sa.String(32), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("created_by", sa.String(320), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("model_id", sa.String(200)),
        sa.Column("task", sa.String(64)),
        sa.Column("temperature", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("rule", sa.String(16)),
        sa.Column("verdict", sa.String(16), index=True),
        sa.Column("p_malignant", sa.Float),
        sa.Column("review_agrees", sa.Boolean),
        sa.Column("final_label", sa.String(16)),
        sa.Column("final_type", sa.String(8)),
        sa.Column("review_comment", sa.Text),
        sa.Column("reviewed_by", sa.String(320), index=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True)),
        sa.Column("signed_by", sa.String(320)),
        sa.Column("signed_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "case_images",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("image_sha256", sa.String(64), sa.ForeignKey("stored_images.sha256"), nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("magnification", sa.Integer),
        sa.Column("model_id", sa.String(200)),
        sa.Column("task", sa.String(64)),
        sa.Column("temperature", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("verdict", sa.String(16)),
        sa.Column("p_malignant", sa.Float),
        sa.Column("review_agrees", sa.Boolean),
        sa.Column("final_label", sa.String(16)),
        sa.Column("final_type", sa.String(8)),
        sa.Column("review_comment", sa.Text),
        sa.UniqueConstraint("case_id", "image_sha256"),
    )


def downgrade() -> None:
    op.drop_table("case_images")
    op.drop_table("cases")
    op.drop_table("stored_images")
