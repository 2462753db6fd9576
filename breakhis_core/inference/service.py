"""Diagnosis of a batch of uploaded images, one way for every caller: the Diagnose page, the CLI's ``predict`` and the
tests go through :class:`DiagnosisService`.

The steps, in order:

1. ``uploads.decode_uploads``: the uploads (files, zip members; ``uploads.Upload``) decoded in memory into
   ``uploads.DecodedUpload`` (RGB uint8); undecodable ones become ``uploads.Skipped`` with their reason;
2. :meth:`DiagnosisService.refusals`: which images no model of the router may take (their magnification, given or
   read from the BreakHis name, has no model), each with its reason;
3. :meth:`DiagnosisService.diagnose`: the other images predicted in chunks (each chunk one model pass, inside the
   caller's ``turn`` so passes of several sessions take turns; ``on_progress`` after each), then one audit line per
   image (never pixels: the file's SHA-256) → :class:`Diagnosis`, whose :meth:`Diagnosis.cases` groups them into
   case verdicts by any grouping and rule without predicting again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from breakhis_core.data.uploads import DecodedUpload, Skipped
from breakhis_core.inference.predict import Case, ModelRouter, Prediction, group_cases
from breakhis_core.lab import audit

PASS_IMAGES = 8
"""Images per model pass of :meth:`DiagnosisService.diagnose` (one progress step, one turn at the models)."""


def batch_digest(inputs: Sequence[DecodedUpload]) -> str:
    """A short key of a batch's file contents (SHA-1 over the files' SHA-1s, hex): the same files give the same key."""
    return hashlib.sha1(b"".join(hashlib.sha1(item.data).digest() for item in inputs)).hexdigest()


@dataclass(frozen=True)
class DiagnosisOptions:
    """How to predict: ``tta`` averages the 8 flips/rotations; ``cam`` is None or a heat-map method ("gradcam",
    "gradcam++", "scorecam"); ``tile`` cuts images much larger than the BreakHis field into tiles."""

    tta: bool = False
    cam: str | None = None
    tile: bool = False


@dataclass
class Diagnosis:
    """A diagnosed batch.

    Attributes:
        inputs: the images predicted, in upload order.
        magnifications: the magnification given for each of them (None: read from the name, or unknown).
        predictions: one per input, in the same order.
        skipped: the uploads not predicted (undecodable, or refused by the router), each with its reason.
    """

    inputs: list[DecodedUpload]
    magnifications: list[int | None]
    predictions: list[Prediction]
    skipped: list[Skipped] = field(default_factory=list)

    def cases(self, by: str = "slide", rule: str = "mean") -> list[Case]:
        """Case verdicts (``predict.group_cases``): ``by`` "slide" (from BreakHis names) or "upload" (all one case);
        ``rule`` "mean" (mean probability against the threshold) or "majority"."""
        return group_cases(self.predictions, by=by, rule=rule)


class DiagnosisService:
    """Diagnoses batches with one router's models and records each prediction in the audit log.

    Args:
        router: the models (``ModelRouter``: one run's model, or the registry's by magnification).
        source: who predicts, as the audit log records it ("app", "cli", ...).
        runs_root: the runs folder whose ``audit.jsonl`` gets the lines (default ``paths.runs_dir``).
        user: the signed-in user who asked, recorded with each line (None without sign-in).
    """

    def __init__(self, router: ModelRouter, source: str, runs_root: str | Path | None = None, user: str | None = None):
        self.router = router
        self.source = source
        self.runs_root = runs_root
        self.user = user

    def refusals(self, inputs: Sequence[DecodedUpload], magnifications: Sequence[int | None] | None = None) -> list[str | None]:
        """For each input, why no model of the router may take it (None: it can be predicted)."""
        magnifications = list(magnifications) if magnifications is not None else [None] * len(inputs)
        return [self.router.refusal(item.name, magnification) for item, magnification in zip(inputs, magnifications)]

    def diagnose(
        self,
        inputs: Sequence[DecodedUpload],
        magnifications: Sequence[int | None] | None = None,
        options: DiagnosisOptions = DiagnosisOptions(),
        on_progress: Callable[[int, int], None] | None = None,
        turn: Callable[[], AbstractContextManager] = nullcontext,
    ) -> Diagnosis:
        """Predict every input the router may take; the others are skipped with the router's reason.

        Args:
            inputs: decoded uploads (``uploads.decode_uploads``).
            magnifications: one per input, overriding the name's (None entries: from the name).
            options: TTA, heat map, tiling.
            on_progress: called with (images done, images to do) after each pass.
            turn: a context manager factory each pass runs inside (the app's ``model_turn``: one pass at a time).

        Returns:
            The :class:`Diagnosis`; its predictions are already in the audit log.
        """
        magnifications = list(magnifications) if magnifications is not None else [None] * len(inputs)
        served, given, skipped = [], [], []
        for item, magnification, reason in zip(inputs, magnifications, self.refusals(inputs, magnifications)):
            if reason is None:
                served.append(item)
                given.append(magnification)
            else:
                skipped.append(Skipped(item.label, reason))
        predictions: list[Prediction] = []
        for start in range(0, len(served), PASS_IMAGES):
            chunk = slice(start, start + PASS_IMAGES)
            with turn():
                predictions += self.router.predict([item.image for item in served[chunk]],
                                                   [item.name for item in served[chunk]], given[chunk],
                                                   tta=options.tta, cam=options.cam, tile=options.tile)
            if on_progress is not None:
                on_progress(len(predictions), len(served))
        audit.record_predictions(predictions, [item.sha256 for item in served], self.source,
                                 runs_root=self.runs_root, user=self.user)
        return Diagnosis(served, given, predictions, skipped)
