"""``CaseService``: every read and change of a case, for the pages and the CLI alike.

Roles are enforced here, not only by the pages (``access.GRANTS``): a viewer reads, a pathologist also creates,
reviews and signs cases and writes addenda, a trainer also exports reviewed cases as a data set, an admin does all.
Every read and change is an audit line (``audit.py``'s log, event "case") with the user and role; a change is
logged after its transaction committed, so the log never names a change that did not happen.

Changes are transactions (a process killed mid-save leaves no half case) and carry the case version they were made
from: when the case moved on meanwhile (another reviewer saved), the change is refused with
``CaseConflictError`` and nothing of it is saved. A signed case is immutable; later changes are addenda beside it.
Image files are stored (``imagefiles``) before the transaction, so a database that cannot be reached loses no
upload: the error says so and a retry finds the files there.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.exc import StaleDataError

from breakhis_core import CLASS_NAMES
from breakhis_core.lab import access, audit
from breakhis_core.task import TUMOUR_TYPES
from breakhis_core.errors import AccessionExistsError, CaseConflictError, CaseError, PermissionDeniedError
from breakhis_core.cases.database import CaseDatabase
from breakhis_core.cases.imagefiles import ImageFiles, StoredFile
from breakhis_core.cases.layout import images_dir
from breakhis_core.cases.models import ACCESSION_LENGTH, PATIENT_REF_LENGTH, Addendum, Case, CaseImage, StoredImage
from breakhis_core.cases.records import (
    Actor,
    AddendumRecord,
    CaseFilter,
    CaseImageRecord,
    CasePrediction,
    CaseRecord,
    CaseSummary,
    ImagePrediction,
    NewCase,
    Review,
)

OPEN, REVIEWED, SIGNED = "open", "reviewed", "signed"
STATUSES = (OPEN, REVIEWED, SIGNED)
ACCESSION = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._/-]{{0,{ACCESSION_LENGTH - 1}}}")
PATIENT_REF = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{PATIENT_REF_LENGTH - 1}}}")
COMMENT_LIMIT = 10_000
"""Characters of a review comment or an addendum."""


def utc(moment: datetime) -> datetime:
    """``moment`` as timezone-aware UTC (SQLite hands back naive UTC times)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _matching(text: str, pattern: re.Pattern, rule: str) -> str:
    """``text`` stripped, when all of it matches ``pattern``; else a ``CaseError`` stating ``rule``."""
    value = text.strip()
    if not pattern.fullmatch(value):
        raise CaseError(f"{rule}. Received: {text!r}")
    return value


def check_accession(text: str) -> str:
    """``text`` stripped, when it is an accession number: 1–32 letters, digits and ``. _ / -``, a letter or digit
    first.

    Raises:
        CaseError: otherwise.
    """
    return _matching(text, ACCESSION, f"an accession number is 1 to {ACCESSION_LENGTH} letters, digits and . _ / - "
                                      f"(a letter or digit first)")


def check_patient_ref(text: str) -> str:
    """``text`` stripped, when it is a pseudonymous patient reference: 1–32 letters, digits, ``_`` and ``-`` (no
    spaces, names or dates of birth).

    Raises:
        CaseError: otherwise.
    """
    return _matching(text, PATIENT_REF, f"a patient reference is a pseudonym of 1 to {PATIENT_REF_LENGTH} letters, "
                                        f"digits, _ and - (a letter or digit first; no names, spaces or other "
                                        f"characters)")


def check_review(review: Review) -> Review:
    """``review`` when its label, type and comment are valid.

    Raises:
        CaseError: a label other than ``CLASS_NAMES``, an unknown tumour type or one of the other class, a type
            without a label, a comment longer than ``COMMENT_LIMIT``.
    """
    if review.final_label is not None and review.final_label not in CLASS_NAMES:
        raise CaseError(f"a final label is one of {', '.join(CLASS_NAMES)}. Received: {review.final_label!r}")
    if review.final_type is not None:
        if review.final_type not in TUMOUR_TYPES:
            raise CaseError(f"a tumour type is one of {', '.join(TUMOUR_TYPES)}. Received: {review.final_type!r}")
        name, label = TUMOUR_TYPES[review.final_type]
        if review.final_label != CLASS_NAMES[label]:
            raise CaseError(f"{review.final_type} ({name}) is a {CLASS_NAMES[label]} type; the final label must be "
                            f"{CLASS_NAMES[label]}. Received: final_label={review.final_label!r}")
    if len(review.comment) > COMMENT_LIMIT:
        raise CaseError(f"a comment has at most {COMMENT_LIMIT:,} characters. Received: {len(review.comment):,}")
    return review


def _check_prediction(prediction: ImagePrediction | CasePrediction | None) -> None:
    if prediction is None:
        return
    if prediction.verdict not in CLASS_NAMES or not 0.0 <= prediction.p_malignant <= 1.0:
        raise CaseError(f"a prediction has a verdict in {', '.join(CLASS_NAMES)} and P(malignant) in [0, 1]. "
                        f"Received: verdict={prediction.verdict!r}, p_malignant={prediction.p_malignant}")


def _review_of(row: Case | CaseImage) -> Review:
    return Review(row.review_agrees, row.final_label, row.final_type, row.review_comment or "")


def _set_review(row: Case | CaseImage, review: Review) -> None:
    row.review_agrees, row.final_label = review.agrees, review.final_label
    row.final_type, row.review_comment = review.final_type, review.comment


def _image_prediction(row: CaseImage) -> ImagePrediction | None:
    if row.model_id is None:
        return None
    return ImagePrediction(row.model_id, row.verdict, row.p_malignant, row.threshold, row.temperature, row.task)


def _case_prediction(case: Case) -> CasePrediction | None:
    if case.model_id is None:
        return None
    return CasePrediction(case.model_id, case.verdict, case.p_malignant, case.rule, case.threshold, case.temperature,
                          case.task)


def _addendum_record(addendum: Addendum) -> AddendumRecord:
    review = Review(**addendum.changes["review"]) if addendum.changes.get("review") else None
    return AddendumRecord(addendum.author, utc(addendum.created_at), addendum.text, review)


class CaseService:
    """The case operations for one ``actor`` (see the module docstring).

    Args:
        database: the open case database.
        files: where image files are stored.
        actor: the signed-in user and role.
        audit_log: the audit log file (``audit.audit_path``).
    """

    def __init__(self, database: CaseDatabase, files: ImageFiles, actor: Actor, audit_log: str | Path):
        self.database = database
        self.files = files
        self.actor = actor
        self.audit_log = Path(audit_log)

    @classmethod
    def open(cls, actor: Actor, runs_root: str | Path | None = None, database: CaseDatabase | None = None) -> CaseService:
        """The service on the runs folder's case store: ``database`` (default: ``CaseDatabase.open`` of
        ``database.database_url``; ``close`` the service when done), the image files in ``layout.images_dir`` and the
        audit log ``audit.audit_path``.

        Raises:
            DatabaseError: see ``CaseDatabase.open``.
        """
        database = database or CaseDatabase.open(runs_root=runs_root)
        return cls(database, ImageFiles(images_dir(runs_root)), actor, audit.audit_path(runs_root))

    def close(self) -> None:
        """Close the database's connections."""
        self.database.close()

    # ------------------------------------------------------------------ plumbing

    def _require(self, needed: str, what: str) -> None:
        if not access.allows(self.actor.role, needed):
            has = f"the {self.actor.role} role" if self.actor.role else "no role"
            raise PermissionDeniedError(f"{what} needs the {needed} role; {self.actor.user} has {has}. "
                                        f"Received: role={self.actor.role}")

    def _audit(self, action: str, cases: list[CaseRecord], **fields) -> None:
        """One audit line: the action, who (user and role), the cases (id, accession number, version) and ``fields``."""
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": "case",
                  "action": action, "user": self.actor.user, "role": self.actor.role,
                  "cases": [{"id": case.id, "accession": case.accession, "version": case.version} for case in cases],
                  **fields}
        audit.append([record], self.audit_log)

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A session in one transaction; database failures become ``DatabaseError``, a lost version race
        ``CaseConflictError``."""
        try:
            with self.database.session() as session, session.begin():
                yield session
        except StaleDataError:
            raise CaseConflictError("the case was changed by someone else while this change was being saved; "
                                    "nothing was saved. Reload the case (your text is kept) and save again. "
                                    "Received: a stale case version") from None
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise self.database.unreachable(exc) from None

    def _find(self, session: Session, ref: int | str) -> Case:
        """The case of id ``ref`` (an int) or accession number ``ref`` (text; digits alone also try the id)."""
        query = sa.select(Case).options(selectinload(Case.images).selectinload(CaseImage.image),
                                        selectinload(Case.addenda))
        text = str(ref).strip()
        case = None if isinstance(ref, int) else session.scalar(query.where(Case.accession == text))
        if case is None and text.isdigit():
            case = session.scalar(query.where(Case.id == int(text)))
        if case is None:
            raise CaseError(f"no such case (an accession number or case id). Received: {ref!r}")
        return case

    def _record(self, session: Session, case: Case) -> CaseRecord:
        shas = [row.image_sha256 for row in case.images]
        others: dict[str, list[str]] = {}
        if shas:
            rows = session.execute(sa.select(CaseImage.image_sha256, Case.accession).join(Case)
                                   .where(CaseImage.image_sha256.in_(shas), Case.id != case.id)
                                   .order_by(Case.accession))
            for sha, accession in rows:
                others.setdefault(sha, []).append(accession)
        images = tuple(CaseImageRecord(row.image_sha256, row.image.suffix, row.name, row.magnification,
                                       row.image.width, row.image.height, _image_prediction(row), _review_of(row),
                                       tuple(others.get(row.image_sha256, ())))
                       for row in case.images)
        return CaseRecord(case.id, case.accession, case.patient_ref, case.status, case.version, utc(case.created_at),
                          case.created_by, utc(case.updated_at), _case_prediction(case), _review_of(case),
                          case.reviewed_by, case.reviewed_at and utc(case.reviewed_at), case.signed_by,
                          case.signed_at and utc(case.signed_at), images,
                          tuple(_addendum_record(a) for a in case.addenda))

    def _check_version(self, case: Case, version: int) -> None:
        if case.version != version:
            by = case.signed_by or case.reviewed_by or case.created_by
            raise CaseConflictError(
                f"case {case.accession} was changed (by {by}, {utc(case.updated_at):%Y-%m-%d %H:%M} UTC) after you "
                f"opened it; nothing of your change was saved. Reload the case, your text is kept, and save again. "
                f"Received: version {version}, the case is at version {case.version}")

    # ------------------------------------------------------------------ reads

    def get_case(self, ref: int | str) -> CaseRecord:
        """The case with accession number or id ``ref`` (viewer).

        Raises:
            CaseError: no such case. PermissionDeniedError, DatabaseError.
        """
        self._require(access.VIEWER, "reading a case")
        with self._transaction() as session:
            record = self._record(session, self._find(session, ref))
        self._audit("read", [record])
        return record

    def list_cases(self, where: CaseFilter = CaseFilter()) -> list[CaseSummary]:
        """The cases ``where`` selects, newest first (viewer)."""
        self._require(access.VIEWER, "listing cases")
        n_images = (sa.select(sa.func.count(CaseImage.id)).where(CaseImage.case_id == Case.id)
                    .correlate(Case).scalar_subquery())
        query = sa.select(Case, n_images).order_by(Case.created_at.desc(), Case.id.desc()).limit(where.limit)
        if where.text.strip():
            pattern = f"%{where.text.strip().lower()}%"
            query = query.where(sa.or_(sa.func.lower(Case.accession).like(pattern),
                                       sa.func.lower(Case.patient_ref).like(pattern)))
        for column, value in ((Case.status, where.status), (Case.verdict, where.verdict),
                              (Case.reviewed_by, where.reviewer)):
            if value:
                query = query.where(column == value)
        if where.since is not None:
            query = query.where(Case.created_at >= utc(where.since))
        if where.until is not None:
            query = query.where(Case.created_at <= utc(where.until))
        with self._transaction() as session:
            summaries = [CaseSummary(case.id, case.accession, case.patient_ref, case.status, utc(case.created_at),
                                     case.verdict, case.final_label, case.reviewed_by, case.signed_by, count)
                         for case, count in session.execute(query)]
        self._audit("list", [], filter={k: v for k, v in asdict(where).items() if v not in (None, "")},
                    n_cases=len(summaries))
        return summaries

    def reviewed_cases(self, purpose: str) -> list[CaseRecord]:
        """Every case with a final label (reviewed or signed), oldest first (trainer): what a data set is made of.

        Args:
            purpose: why they are read, for the audit line ("export-dataset", "evaluate").
        """
        self._require(access.TRAINER, "using reviewed cases as data")
        query = (sa.select(Case).where(Case.status.in_((REVIEWED, SIGNED))).order_by(Case.id)
                 .options(selectinload(Case.images).selectinload(CaseImage.image), selectinload(Case.addenda)))
        with self._transaction() as session:
            records = [self._record(session, case) for case in session.scalars(query)]
        self._audit("read", records, purpose=purpose)
        return records

    def image_path(self, image: CaseImageRecord) -> Path:
        """The file of a case image (it was read with the case, so no audit line of its own)."""
        return self.files.path(image.sha256, image.suffix)

    def heatmap(self, image: CaseImageRecord) -> np.ndarray | None:
        """The heat map its model made of a case image (``(H, W)`` float32 in [0, 1]), or None."""
        return self.files.heatmap(image.sha256, image.prediction.model_id) if image.prediction else None

    # ------------------------------------------------------------------ changes

    def create_case(self, new: NewCase) -> CaseRecord:
        """Store a new case with its images (pathologist).

        The image files are written first; an image already stored (in this case or another) is linked, not copied.

        Raises:
            AccessionExistsError: the accession number is taken (``case_id`` names that case).
            CaseError: a bad accession number or patient reference, no image, a bad prediction.
            ImageDecodeError: an image that does not decode. PermissionDeniedError, DatabaseError.
        """
        self._require(access.PATHOLOGIST, "saving a case")
        patient_ref = check_patient_ref(new.patient_ref)
        accession = check_accession(new.accession) if new.accession and new.accession.strip() else None
        if not new.images:
            raise CaseError(f"a case needs at least one image. Received: 0 images for patient {patient_ref}")
        _check_prediction(new.prediction)
        for image in new.images:
            _check_prediction(image.prediction)
        stored: dict[str, tuple[StoredFile, int]] = {}
        for index, file in enumerate(self.files.keep(new.images)):
            stored.setdefault(file.sha256, (file, index))  # the same bytes twice in one upload: one image
        for attempt in range(2):
            try:
                with self._transaction() as session:
                    record = self._record(session, self._insert_case(session, new, accession, patient_ref, stored))
                break
            except sa.exc.IntegrityError:  # a concurrent save took the accession number or stored the same image
                with self._transaction() as session:
                    self._refuse_taken_accession(session, accession)
                if attempt:
                    raise
        self._audit("create", [record], images=[image.sha256 for image in record.images])
        return record

    def _refuse_taken_accession(self, session: Session, accession: str | None) -> None:
        if accession is None:
            return
        existing = session.scalar(sa.select(Case.id).where(Case.accession == accession))
        if existing is not None:
            raise AccessionExistsError(f"accession number {accession} is already case {existing}; open that case "
                                       f"or give another number. Received: {accession}", case_id=existing)

    def _new_accession(self, session: Session, now: datetime) -> str:
        while True:
            accession = f"C{now:%Y%m%d}-{secrets.token_hex(3).upper()}"
            if session.scalar(sa.select(Case.id).where(Case.accession == accession)) is None:
                return accession

    def _insert_case(self, session: Session, new: NewCase, accession: str | None, patient_ref: str,
                     stored: dict[str, tuple[StoredFile, int]]) -> Case:
        now = datetime.now(timezone.utc)
        self._refuse_taken_accession(session, accession)
        prediction = new.prediction
        case = Case(accession=accession or self._new_accession(session, now), patient_ref=patient_ref, status=OPEN,
                    created_at=now, created_by=self.actor.user, updated_at=now)
        if prediction is not None:
            case.model_id, case.task, case.temperature = prediction.model_id, prediction.task, prediction.temperature
            case.threshold, case.rule = prediction.threshold, prediction.rule
            case.verdict, case.p_malignant = prediction.verdict, prediction.p_malignant
        for position, (file, index) in enumerate(stored.values()):
            if session.get(StoredImage, file.sha256) is None:
                session.add(StoredImage(sha256=file.sha256, suffix=file.suffix, n_bytes=file.n_bytes,
                                        width=file.width, height=file.height, created_at=now))
            image = new.images[index]
            row = CaseImage(image_sha256=file.sha256, position=position, name=image.name[:255],
                            magnification=image.magnification)
            if image.prediction is not None:
                p = image.prediction
                row.model_id, row.task, row.temperature, row.threshold = p.model_id, p.task, p.temperature, p.threshold
                row.verdict, row.p_malignant = p.verdict, p.p_malignant
            case.images.append(row)
        session.add(case)
        session.flush()
        return case

    def review(self, ref: int | str, version: int, case_review: Review | None = None,
               image_reviews: dict[str, Review] | None = None) -> CaseRecord:
        """Save a review of the case and/or of its images (by SHA-256) made from the case at ``version``
        (pathologist). A case whose review gives a final label is "reviewed".

        Raises:
            CaseConflictError: the case moved on since ``version``; nothing is saved.
            CaseError: a signed case (write an addendum), an image not in the case, a bad review.
            PermissionDeniedError, DatabaseError.
        """
        self._require(access.PATHOLOGIST, "reviewing a case")
        image_reviews = {sha: check_review(review) for sha, review in (image_reviews or {}).items()}
        if case_review is not None:
            check_review(case_review)
        with self._transaction() as session:
            case = self._find(session, ref)
            self._refuse_signed(case)
            self._check_version(case, version)
            rows = {row.image_sha256: row for row in case.images}
            unknown = sorted(set(image_reviews) - set(rows))
            if unknown:
                raise CaseError(f"these images are not in case {case.accession}. Received: {', '.join(unknown)}")
            for sha, review in image_reviews.items():
                _set_review(rows[sha], review)
            now = datetime.now(timezone.utc)
            if case_review is not None:
                _set_review(case, case_review)
                case.reviewed_by, case.reviewed_at = self.actor.user, now
            case.status = REVIEWED if case.final_label else OPEN
            case.updated_at = now
            session.flush()
            record = self._record(session, case)
        self._audit("review", [record], images=sorted(image_reviews))
        return record

    def _refuse_signed(self, case: Case) -> None:
        if case.status == SIGNED:
            raise CaseError(f"case {case.accession} was signed by {case.signed_by} on "
                            f"{utc(case.signed_at):%Y-%m-%d %H:%M} UTC and cannot change; add an addendum instead. "
                            f"Received: a change to a signed case")

    def sign(self, ref: int | str, version: int) -> CaseRecord:
        """Sign the case as reviewed at ``version`` (pathologist); it needs a final label.

        Raises:
            CaseConflictError, CaseError (already signed, no final label), PermissionDeniedError, DatabaseError.
        """
        self._require(access.PATHOLOGIST, "signing a case")
        with self._transaction() as session:
            case = self._find(session, ref)
            self._refuse_signed(case)
            self._check_version(case, version)
            if not case.final_label:
                raise CaseError(f"case {case.accession} has no final label yet; review it before signing. "
                                f"Received: status {case.status}")
            now = datetime.now(timezone.utc)
            case.status, case.signed_by, case.signed_at, case.updated_at = SIGNED, self.actor.user, now, now
            session.flush()
            record = self._record(session, case)
        self._audit("sign", [record])
        return record

    def add_addendum(self, ref: int | str, version: int, text: str, review: Review | None = None) -> CaseRecord:
        """Add an addendum to a signed case (pathologist): text and, optionally, a new final label, type and comment
        that hold from now on (``CaseRecord.final_label``); the signed review stays as it was.

        Raises:
            CaseConflictError, CaseError (not signed: change the review; empty or too long text),
            PermissionDeniedError, DatabaseError.
        """
        self._require(access.PATHOLOGIST, "adding an addendum")
        text = text.strip()
        if not text or len(text) > COMMENT_LIMIT:
            raise CaseError(f"an addendum needs a text of 1 to {COMMENT_LIMIT:,} characters. Received: {len(text):,}")
        if review is not None:
            check_review(review)
        with self._transaction() as session:
            case = self._find(session, ref)
            if case.status != SIGNED:
                raise CaseError(f"case {case.accession} is not signed; change its review instead of adding an "
                                f"addendum. Received: status {case.status}")
            self._check_version(case, version)
            now = datetime.now(timezone.utc)
            case.addenda.append(Addendum(author=self.actor.user, created_at=now, text=text,
                                         changes={"review": asdict(review) if review else None}))
            case.updated_at = now
            session.flush()
            record = self._record(session, case)
        self._audit("addendum", [record])
        return record
