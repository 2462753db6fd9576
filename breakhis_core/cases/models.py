"""The case store's tables (SQLAlchemy 2 typed ORM). The schema is made and changed by the Alembic migrations in
``migrations/versions``, never by ``create_all``; a test checks that the migrated schema is the one declared here.

- ``StoredImage``: an image file kept once, named by the SHA-256 of its bytes (the file lies in ``imagefiles``).
- ``Case``: an accession number (unique), a pseudonymous patient reference, the case prediction (model, task,
  calibration temperature, threshold, rule), the pathologist's case review and the sign-off. ``version`` counts
  saved changes; SQLAlchemy checks it on every update (``version_id_col``), so a change made from a stale read is
  refused instead of overwriting another reviewer's.
- ``CaseImage``: one image of a case (the same stored image may belong to several cases), its prediction and its
  review.
- ``Addendum``: a change to a signed case, kept beside it (the signed fields stay as they were signed).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ACCESSION_LENGTH = 32
PATIENT_REF_LENGTH = 32
USER_LENGTH = 320
"""Longest e-mail address."""


class Base(DeclarativeBase):
    """The declarative base of the case store's tables."""


class StoredImage(Base):
    """An image file stored once: ``imagefiles.ImageFiles`` keeps its bytes at a path made of ``sha256``."""

    __tablename__ = "stored_images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    suffix: Mapped[str] = mapped_column(String(8))
    n_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Case(Base):
    """One case (see the module docstring); times are UTC."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    accession: Mapped[str] = mapped_column(String(ACCESSION_LENGTH), unique=True)
    patient_ref: Mapped[str] = mapped_column(String(PATIENT_REF_LENGTH), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_by: Mapped[str] = mapped_column(String(USER_LENGTH))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer)
    # the case prediction
    model_id: Mapped[str | None] = mapped_column(String(200))
    task: Mapped[str | None] = mapped_column(String(64))
    temperature: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    rule: Mapped[str | None] = mapped_column(String(16))
    verdict: Mapped[str | None] = mapped_column(String(16), index=True)
    p_malignant: Mapped[float | None] = mapped_column(Float)
    # the pathologist's case review
    review_agrees: Mapped[bool | None] = mapped_column(Boolean)
    final_label: Mapped[str | None] = mapped_column(String(16))
    final_type: Mapped[str | None] = mapped_column(String(8))
    review_comment: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(String(USER_LENGTH), index=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # sign-off
    signed_by: Mapped[str | None] = mapped_column(String(USER_LENGTH))
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    images: Mapped[list[CaseImage]] = relationship(back_populates="case", order_by="CaseImage.position",
                                                   cascade="all, delete-orphan")
    addenda: Mapped[list[Addendum]] = relationship(back_populates="case", order_by="Addendum.id",
                                                   cascade="all, delete-orphan")

    __mapper_args__ = {"version_id_col": version}


class CaseImage(Base):
    """One image of a case, with its prediction and the pathologist's review of it."""

    __tablename__ = "case_images"
    __table_args__ = (UniqueConstraint("case_id", "image_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("stored_images.sha256"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    magnification: Mapped[int | None] = mapped_column(Integer)
    # the prediction
    model_id: Mapped[str | None] = mapped_column(String(200))
    task: Mapped[str | None] = mapped_column(String(64))
    temperature: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(String(16))
    p_malignant: Mapped[float | None] = mapped_column(Float)
    # the review
    review_agrees: Mapped[bool | None] = mapped_column(Boolean)
    final_label: Mapped[str | None] = mapped_column(String(16))
    final_type: Mapped[str | None] = mapped_column(String(8))
    review_comment: Mapped[str | None] = mapped_column(Text)

    case: Mapped[Case] = relationship(back_populates="images")
    image: Mapped[StoredImage] = relationship()


class Addendum(Base):
    """A change to a signed case: who, when, the text and the fields it changes (``{field: value}``)."""

    __tablename__ = "addenda"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    author: Mapped[str] = mapped_column(String(USER_LENGTH))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    text: Mapped[str] = mapped_column(Text)
    changes: Mapped[dict] = mapped_column(JSON)

    case: Mapped[Case] = relationship(back_populates="addenda")
