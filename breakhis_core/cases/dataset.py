"""Reviewed cases as a labelled data set: the loop from the pathologists' reviews back into training.

``export_dataset`` writes a manifest CSV that ``data.scan`` reads like any other (``path,label,patient,...``) with
one row per image of every case that has a final label: the image's own final label where the reviewer gave one,
else the case's (an addendum's when it changed it), the pseudonymous patient reference as the patient (so patient-wise
splits keep a patient's images together), and the stored file's path. Beside it, ``<name>.json`` lists the cases and
image hashes the manifest holds; ``run_setup.prepare_run`` copies that list into the run's ``run.json`` ("cases"),
so a model says which cases it was trained on, and ``unseen_cases`` picks the reviewed cases a model never saw.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from breakhis_core.errors import CaseError
from breakhis_core.files import read_json, write_json_atomic, write_text_atomic
from breakhis_core.cases.records import CaseRecord

DATASET_COLUMNS = ("path", "label", "patient", "magnification", "case_id", "accession", "sha256")
"""The manifest's columns (``data.MANIFEST_COLUMNS`` first, then where each image comes from)."""


@dataclass(frozen=True)
class DatasetCase:
    """One case of a data set: its id, accession number, patient reference and image SHA-256s."""

    id: int
    accession: str
    patient_ref: str
    images: tuple[str, ...]


@dataclass(frozen=True)
class CaseDataset:
    """An exported data set: the manifest, the list of its cases beside it (``.json``), and counts."""

    manifest: Path
    cases_file: Path
    n_images: int
    cases: tuple[DatasetCase, ...]

    def to_dict(self) -> dict:
        """JSON-ready fields (paths as text)."""
        return {"manifest": str(self.manifest), "cases_file": str(self.cases_file), "n_images": self.n_images,
                "n_cases": len(self.cases), "cases": [asdict(case) for case in self.cases]}


def dataset_rows(cases: list[CaseRecord], image_path) -> list[dict]:
    """One manifest row (``DATASET_COLUMNS``) per image of ``cases`` that has a final label.

    Args:
        image_path: ``CaseImageRecord`` → the path of its file (``CaseService.image_path``).
    """
    rows = []
    for case in cases:
        for image in case.images:
            label = image.review.final_label or case.final_label
            if label:
                rows.append({"path": str(image_path(image)), "label": label, "patient": case.patient_ref,
                             "magnification": image.magnification or "", "case_id": case.id,
                             "accession": case.accession, "sha256": image.sha256})
    return rows


def export_dataset(cases: list[CaseRecord], image_path, folder: str | Path, user: str, name: str | None = None) -> CaseDataset:
    """Write ``<folder>/<name>.csv`` and ``<name>.json`` for ``cases`` (``CaseService.reviewed_cases``).

    Args:
        name: file name without suffix (default ``reviewed-<UTC time>``).

    Raises:
        CaseError: when no case has a final label yet.
    """
    rows = dataset_rows(cases, image_path)
    if not rows:
        raise CaseError(f"no reviewed case with a final label yet; review cases before exporting a data set. "
                        f"Received: {len(cases)} case(s)")
    now = datetime.now(timezone.utc)
    name = name or f"reviewed-{now:%Y%m%d-%H%M%S}"
    folder = Path(folder)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=DATASET_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    included = {row["case_id"] for row in rows}
    listed = tuple(DatasetCase(case.id, case.accession, case.patient_ref,
                               tuple(row["sha256"] for row in rows if row["case_id"] == case.id))
                   for case in cases if case.id in included)
    manifest, cases_file = folder / f"{name}.csv", folder / f"{name}.json"
    write_json_atomic(cases_file, {"exported_at": now.isoformat(), "exported_by": user,
                                   "cases": [asdict(case) for case in listed]})
    write_text_atomic(manifest, text.getvalue())
    return CaseDataset(manifest, cases_file, len(rows), listed)


def dataset_cases(manifest: str | Path) -> list[dict] | None:
    """The cases (``DatasetCase`` as dicts) a manifest exported from reviewed cases holds, or None for another data
    source (no ``.json`` beside it)."""
    beside = read_json(Path(manifest).with_suffix(".json"))
    if not isinstance(beside, dict) or not isinstance(beside.get("cases"), list):
        return None
    return beside["cases"]


def unseen_cases(cases: list[CaseRecord], trained_on: list[dict] | None) -> list[CaseRecord]:
    """The cases of ``cases`` none of whose images a model was trained on (``trained_on``: run.json "cases")."""
    seen_ids = {case["id"] for case in trained_on or []}
    seen_images = {sha for case in trained_on or [] for sha in case["images"]}
    return [case for case in cases
            if case.id not in seen_ids and not any(image.sha256 in seen_images for image in case.images)]
