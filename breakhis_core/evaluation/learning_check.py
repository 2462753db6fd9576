"""Did a trained model learn? A check that a small validation split cannot fool, and its wording.

Each split a model predicted (validation, test) is judged on its images' P(malignant), malignant
positive, with the ROC AUC's 95 % confidence interval from the patient-resampled bootstrap of
``evaluate.compute_metrics`` (patients drawn with replacement, all their images kept):

- **undetermined** when the split has fewer than ``MIN_PATIENTS`` (5) patients or lacks a patient
  of either class (a patient's class is the majority label of its images): too small to say anything;
- **did not learn** when every image gets the same class at the decision threshold
  (``p_malignant >= 0.5`` is malignant: all malignant or all benign, whatever the ranking), or when
  the AUC's CI upper bound is ``<= MAX_AUC_NOT_LEARNED`` (0.55): it ranks at chance, or reversed
  (an AUC well below 0.5 means malignant images score *lower* than benign ones);
- **undetermined** too when the CI reaches down to chance (lower bound ``<= 0.5``): too wide to say;
- **learned** (state "ok") otherwise: the CI lies above chance.

A subtype model (``task.py``: 8 tumour types) is judged the same way on its classes: the macro one-vs-rest
ROC AUC's CI (``evaluate.compute_class_metrics``) instead of the binary AUC, "every image predicted one tumour type"
instead of one class, and undetermined when a split has fewer than ``MIN_PATIENTS`` patients or patients of fewer
than two types; its balanced accuracy is recorded beside the AUC (``SplitCheck.measure`` names the AUC).

A model's state over its splits: "did not learn" when any split says so, or when every image of
all its splits together (at least ``MIN_PATIENTS`` patients) is predicted one class; else "ok"
when any split shows it learned; else "undetermined". Training records it in ``run.json`` as ``"learning_check":
{stage: {"state", "ok", "reasons", "splits": {split: SplitCheck}}}`` (``ok`` is ``state == "ok"``).
Records written before the confidence intervals (``{"ok", "reasons", "splits"}`` without ``state``)
read as "ok" or "did not learn" with their reasons, marked as checked without patient CIs.

:class:`LearningStatus` is the one wording of the state for every surface (pages, reports, CSV,
GeoJSON, CLI). The registry never makes a model that did not learn or is undetermined the active
one by itself, and the app asks for an explicit confirmation before a person does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from breakhis_core import CLASS_NAMES
from breakhis_core.config import DEFAULT_THRESHOLD
from breakhis_core.evaluation.metrics import compute_class_metrics, compute_metrics, patients_per_class, roc_curve
from breakhis_core.task import Task

MAX_AUC_NOT_LEARNED = 0.55
"""Upper bound of the AUC's 95 % CI at or below which a model ranks no better than chance (or reversed)."""
CHANCE_AUC = 0.5
"""A CI whose lower bound is at or below this cannot rule out chance: undetermined."""
REVERSED_BELOW = 0.45
"""An AUC below this ranks reversed (malignant images score lower than benign), not at chance."""
MIN_PATIENTS = 5
"""Fewest patients (with both classes among them) a split needs for its check to decide anything."""
N_BOOTSTRAP = 1000
"""Patient resamples of the AUC's confidence interval."""
SPLIT_NAMES = {"val": "validation", "test": "test"}
BINARY_AUC, MACRO_AUC = "ROC AUC", "macro one-vs-rest ROC AUC"
"""What ``SplitCheck.roc_auc`` measures: the malignancy AUC, or the subtype task's mean AUC over its classes."""

OK, DID_NOT_LEARN, UNDETERMINED, NOT_CHECKED = "ok", "did_not_learn", "undetermined", "not_checked"
STATE_LABELS = {OK: "learned", DID_NOT_LEARN: "did not learn", UNDETERMINED: "undetermined", NOT_CHECKED: "not checked"}
"""How each state is named wherever a person reads it."""
LEGACY_NOTE = "checked without patient confidence intervals (a run of an earlier version)"


@dataclass
class SplitCheck:
    """The check on one split.

    Attributes:
        split: "val" or "test".
        n_images: images predicted.
        n_patients: distinct patients among them.
        malignant_fraction: share predicted malignant at ``DEFAULT_THRESHOLD``, in [0, 1].
        roc_auc: ROC AUC in [0, 1], or None when the split holds one class only.
        roc_auc_ci: its patient-resampled 95 % CI ``[low, high]``, or None when undefined.
        state: "ok", "did_not_learn" or "undetermined".
        reasons: why the split says the model did not learn or cannot tell (empty for "ok").
        measure: what ``roc_auc`` is: ``BINARY_AUC`` or, for a subtype model, ``MACRO_AUC``.
        balanced_accuracy: a subtype model's balanced accuracy over its classes, else None.
    """

    split: str
    n_images: int
    n_patients: int
    malignant_fraction: float
    roc_auc: float | None
    roc_auc_ci: list[float] | None
    state: str
    reasons: list[str] = field(default_factory=list)
    measure: str = BINARY_AUC
    balanced_accuracy: float | None = None


@dataclass
class LearningCheck:
    """The check of one model over its splits: its ``state`` and the reasons behind it."""

    state: str
    reasons: list[str]
    splits: dict[str, SplitCheck]

    def to_dict(self) -> dict:
        """The run.json record: ``{"state", "ok", "reasons", "splits"}``."""
        return {"state": self.state, "ok": self.state == OK, "reasons": list(self.reasons),
                "splits": {name: dataclasses.asdict(check) for name, check in self.splits.items()}}


@dataclass(frozen=True)
class LearningStatus:
    """A model's learning-check state as a person reads it (from run.json; see :meth:`from_record`).

    Attributes:
        state: "ok", "did_not_learn", "undetermined" or "not_checked" (no record: an imported model or an
            unevaluated run).
        reasons: why it did not learn or is undetermined (empty otherwise).
    """

    state: str = NOT_CHECKED
    reasons: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: dict | None) -> "LearningStatus":
        """The status of a run.json ``learning_check`` entry of one stage (new or older format, or None)."""
        if not record:
            return cls()
        if record.get("state") in STATE_LABELS:
            return cls(record["state"], tuple(record.get("reasons") or ()))
        if record.get("ok", True):  # an older record: one-class or AUC <= 0.55 on the point estimate
            return cls(OK)
        reasons = [_legacy_reason(check) for check in (record.get("splits") or {}).values()]
        reasons = [r for r in reasons if r] or list(record.get("reasons") or ["failed the learning check"])
        return cls(DID_NOT_LEARN, tuple(reasons) + (LEGACY_NOTE,))

    def to_dict(self) -> dict:
        """``{"state", "reasons", "text"}``: what a saved analysis records (read back by :meth:`from_record`)."""
        return {"state": self.state, "reasons": list(self.reasons), "text": self.text}

    @property
    def label(self) -> str:
        """"learned", "did not learn", "undetermined" or "not checked"."""
        return STATE_LABELS[self.state]

    @property
    def needs_confirmation(self) -> bool:
        """True when the model must not become the active one without a person confirming it."""
        return self.state in (DID_NOT_LEARN, UNDETERMINED)

    @property
    def text(self) -> str:
        """The state and its reasons on one line, e.g. "did not learn: validation ROC AUC 0.000 …" (CSV, GeoJSON, CLI)."""
        return f"{self.label}: {'; '.join(self.reasons)}" if self.reasons else self.label

    def warning(self, model: str) -> str:
        """The sentence shown beside a verdict of ``model`` when the state is not "learned"; "" when it is."""
        if self.state == DID_NOT_LEARN:
            return f"Model {model} did not learn: {'; '.join(self.reasons)}. Its verdicts are not informative."
        if self.state == UNDETERMINED:
            return (f"Model {model}: learning undetermined — {'; '.join(self.reasons)}. Whether it learned cannot "
                    "be told from its held-out patients; treat its verdicts with extra caution.")
        if self.state == NOT_CHECKED:
            return (f"Model {model} has no learning check (imported, or not evaluated): nothing shows that it "
                    "learned.")
        return ""


def report_fields(models: Mapping[str, LearningStatus]) -> dict:
    """A report's model fields for the models (id → learning-check state) that served its verdicts:
    ``{"model_id": "a, b", "learning_check": text (each prefixed with its model when several), "warnings":
    [the warning of each model not seen to learn]}`` (see ``report.html_report``)."""
    ordered = sorted(models.items())
    return {"model_id": ", ".join(model for model, _ in ordered),
            "learning_check": "; ".join(status.text if len(ordered) == 1 else f"{model}: {status.text}"
                                        for model, status in ordered),
            "warnings": [status.warning(model) for model, status in ordered if status.warning(model)]}


def roc_auc(labels, p_malignant) -> float | None:
    """ROC AUC (malignant positive, ties counting one half), or None when a class is absent."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or labels.min() == labels.max():
        return None
    fpr, tpr, _ = roc_curve(labels, p_malignant)
    return float(np.trapezoid(tpr, fpr))


def auc_text(split_name: str, auc: float, ci: list[float] | None = None, measure: str = BINARY_AUC) -> str:
    """The AUC and what it means, e.g. "validation ROC AUC 0.000 (95 % CI 0.000–0.120): ranks reversed, malignant
    images score lower than benign ones"."""
    value = f"{split_name} {measure} {auc:.3f}" + (f" (95 % CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
    if auc < REVERSED_BELOW:
        return value + (": ranks reversed, malignant images score lower than benign ones" if measure == BINARY_AUC
                        else ": ranks reversed, each type's images score lower for their own type than the rest")
    if auc <= MAX_AUC_NOT_LEARNED:
        return value + ": ranks at chance level"
    return value


def check_split(split: str, labels, p_malignant, patients, threshold: float = DEFAULT_THRESHOLD,
                n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> SplitCheck:
    """Check one split's predictions (see the module docstring for the rule).

    Args:
        split: "val" or "test" (named in the reasons).
        labels: ``(N,)`` int, 0 benign / 1 malignant; N > 0.
        p_malignant: ``(N,)`` float probabilities of malignant.
        patients: ``(N,)`` patient id of each image (the bootstrap resamples patients).
        threshold: decision threshold on ``p_malignant``.
        n_bootstrap, seed: patient resamples of the AUC's CI and their seed.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(p_malignant, dtype=np.float64)
    name = SPLIT_NAMES.get(split, split)
    auc_metric = compute_metrics(labels, scores, patients, threshold=threshold, n_bootstrap=n_bootstrap,
                                 seed=seed)["overall"]["roc_auc"]
    auc, ci = auc_metric["value"], auc_metric["ci"]
    predicted = scores >= threshold
    n_benign, n_malignant = patients_per_class(labels, patients)
    n_patients = n_benign + n_malignant

    one_class = _one_class_text(name, predicted, threshold)
    if n_patients < MIN_PATIENTS or not n_malignant or not n_benign:
        state = UNDETERMINED
        reasons = [f"too few {name} patients ({n_benign} benign, {n_malignant} malignant; at least {MIN_PATIENTS} "
                   "with both classes needed)"] + [text for text in (one_class,) if text] \
            + ([auc_text(name, auc, ci)] if auc is not None else [])
    elif one_class:
        state, reasons = DID_NOT_LEARN, [one_class]
    elif ci is None:
        state, reasons = UNDETERMINED, [auc_text(name, auc) + "; no confidence interval (too few patients of a class)"]
    elif ci[1] <= MAX_AUC_NOT_LEARNED:
        state, reasons = DID_NOT_LEARN, [auc_text(name, auc, ci) + f"; the CI's upper bound is <= {MAX_AUC_NOT_LEARNED:g}"]
    elif ci[0] <= CHANCE_AUC:
        state, reasons = UNDETERMINED, [auc_text(name, auc, ci) + f"; the CI reaches chance ({CHANCE_AUC:g}): too wide to "
                                        f"say with {n_patients} patients"]
    else:
        state, reasons = OK, []
    return SplitCheck(split, int(len(scores)), int(n_patients), round(float(predicted.mean()), 4),
                      None if auc is None else round(auc, 4), None if ci is None else [round(c, 4) for c in ci],
                      state, reasons)


def check_learning(predictions: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], threshold: float = DEFAULT_THRESHOLD,
                   n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> LearningCheck:
    """Check one model on each split of ``predictions`` (``{split: (labels, p_malignant, patients)}``, each
    ``(N,)``; empty splits skipped). No split at all gives "undetermined". Splits too small on their own still
    decide "did not learn" together when every image of all of them (at least ``MIN_PATIENTS`` patients) is
    predicted one class."""
    predictions = {name: split for name, split in predictions.items() if len(split[0])}
    splits = {name: check_split(name, labels, scores, patients, threshold, n_bootstrap, seed)
              for name, (labels, scores, patients) in predictions.items()}
    states = {check.state for check in splits.values()}
    if DID_NOT_LEARN not in states and len(predictions) > 1:
        labels, scores, patients = (np.concatenate([np.asarray(split[i]) for split in predictions.values()])
                                    for i in range(3))
        n_benign, n_malignant = patients_per_class(labels, patients.astype(str))
        pooled = _one_class_text(" and ".join(SPLIT_NAMES.get(name, name) for name in predictions),
                                 scores >= threshold, threshold)
        if pooled and n_benign and n_malignant and n_benign + n_malignant >= MIN_PATIENTS:
            return LearningCheck(DID_NOT_LEARN, [f"{pooled} ({n_benign} benign and {n_malignant} malignant patients)"],
                                 splits)
    return _combined(states, splits)


def check_split_classes(split: str, labels, probabilities, patients, task: Task, n_bootstrap: int = N_BOOTSTRAP,
                        seed: int = 0) -> SplitCheck:
    """Check one split of a K-class (subtype) model (module docstring): ``labels`` ``(N,)`` class indices,
    ``probabilities`` ``(N, K)`` softmax, ``patients`` ``(N,)``; N > 0."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    name = SPLIT_NAMES.get(split, split)
    metrics = compute_class_metrics(labels, probabilities, patients, task.codes, n_bootstrap, seed)
    auc, ci = metrics["macro_auc"]["value"], metrics["macro_auc"]["ci"]
    predicted = probabilities.argmax(axis=1)
    _, patient_of = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    patient_types = len({(int(np.bincount(labels[patient_of == p], minlength=task.n_classes).argmax()))
                         for p in range(patient_of.max() + 1)})
    n_patients = int(patient_of.max()) + 1
    one_type = _one_type_text(name, predicted, task)
    if n_patients < MIN_PATIENTS or patient_types < 2:
        state = UNDETERMINED
        reasons = [f"too few {name} patients ({n_patients}, of {patient_types} tumour type(s); at least {MIN_PATIENTS} "
                   "of two types or more needed)"] + [text for text in (one_type,) if text] \
            + ([auc_text(name, auc, ci, MACRO_AUC)] if auc is not None else [])
    elif one_type:
        state, reasons = DID_NOT_LEARN, [one_type]
    elif auc is None or ci is None:
        state, reasons = UNDETERMINED, [(auc_text(name, auc, None, MACRO_AUC) if auc is not None else f"{name} {MACRO_AUC} "
                                         "undefined") + "; no confidence interval (too few patients)"]
    elif ci[1] <= MAX_AUC_NOT_LEARNED:
        state, reasons = DID_NOT_LEARN, [auc_text(name, auc, ci, MACRO_AUC)
                                         + f"; the CI's upper bound is <= {MAX_AUC_NOT_LEARNED:g}"]
    elif ci[0] <= CHANCE_AUC:
        state, reasons = UNDETERMINED, [auc_text(name, auc, ci, MACRO_AUC) + f"; the CI reaches chance ({CHANCE_AUC:g}): "
                                        f"too wide to say with {n_patients} patients"]
    else:
        state, reasons = OK, []
    malignant = task.malignancy_probability(probabilities) >= DEFAULT_THRESHOLD
    balanced = metrics["balanced_accuracy"]["value"]
    return SplitCheck(split, int(len(labels)), n_patients, round(float(malignant.mean()), 4),
                      None if auc is None else round(auc, 4), None if ci is None else [round(c, 4) for c in ci],
                      state, reasons, MACRO_AUC, None if balanced is None else round(balanced, 4))


def check_learning_classes(predictions: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], task: Task,
                           n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> LearningCheck:
    """:func:`check_learning` for a K-class (subtype) model: ``{split: (class labels (N,), probabilities (N, K),
    patients (N,))}``, each split by :func:`check_split_classes`; splits too small on their own still decide "did not
    learn" together when every image of all of them (at least ``MIN_PATIENTS`` patients) gets one tumour type."""
    predictions = {name: split for name, split in predictions.items() if len(split[0])}
    splits = {name: check_split_classes(name, labels, probabilities, patients, task, n_bootstrap, seed)
              for name, (labels, probabilities, patients) in predictions.items()}
    states = {check.state for check in splits.values()}
    if DID_NOT_LEARN not in states and len(predictions) > 1:
        predicted = np.concatenate([np.asarray(split[1]).argmax(axis=1) for split in predictions.values()])
        n_patients = len(set(np.concatenate([np.asarray(split[2]).astype(str) for split in predictions.values()])))
        pooled = _one_type_text(" and ".join(SPLIT_NAMES.get(name, name) for name in predictions), predicted, task)
        if pooled and n_patients >= MIN_PATIENTS:
            return LearningCheck(DID_NOT_LEARN, [f"{pooled} ({n_patients} patients)"], splits)
    return _combined(states, splits)


def _one_type_text(split_name: str, predicted: np.ndarray, task: Task) -> str:
    """ "every validation image is predicted ductal carcinoma (DC)" when ``predicted`` (``(N,)`` class indices, N > 0)
    holds one class, else ""."""
    if not len(predicted) or len(set(predicted.tolist())) > 1:
        return ""
    return f"every {split_name} image is predicted {task.class_label(int(predicted[0]))}"


def card_lines(checks: dict) -> list[str]:
    """The model card's lines (Markdown) of run.json's ``learning_check``: each stage's state and reasons, and for
    a model that learned the AUC (with its CI and patients) of each split."""
    lines = []
    for stage, record in checks.items():
        status = LearningStatus.from_record(record)
        line = f"- Learning check, {stage} model: **{status.label}**"
        if status.reasons:
            line += f" — {'; '.join(status.reasons)}"
        if status.needs_confirmation:
            line += "; it is never made the active model automatically"
        elif status.state == OK:
            evidence = [auc_text(SPLIT_NAMES.get(name, name), split["roc_auc"], split.get("roc_auc_ci"),
                                 split.get("measure", BINARY_AUC))
                        + (f", balanced accuracy {split['balanced_accuracy']:.3f}"
                           if split.get("balanced_accuracy") is not None else "")
                        + f" ({split.get('n_patients')} patients)"
                        for name, split in (record.get("splits") or {}).items() if split.get("roc_auc") is not None]
            line += f" ({'; '.join(evidence)})" if evidence else ""
        lines.append(line)
    return lines


def _one_class_text(split_name: str, predicted: np.ndarray, threshold: float) -> str:
    """ "every validation image is predicted benign at p_malignant 0.5" when ``predicted`` (``(N,)`` bool, N > 0) is one
    class, else ""."""
    if not len(predicted) or (predicted.any() and not predicted.all()):
        return ""
    return f"every {split_name} image is predicted {CLASS_NAMES[int(predicted[0])]} at p_malignant {threshold:g}"


def _legacy_reason(check: dict) -> str:
    """The reason an older record's split failed, in today's wording ("" when it passed)."""
    if not check.get("reasons"):
        return ""
    name = SPLIT_NAMES.get(check.get("split"), check.get("split"))
    fraction, auc = check.get("malignant_fraction"), check.get("roc_auc")
    if fraction in (0.0, 1.0):
        return f"every {name} image is predicted {CLASS_NAMES[int(fraction)]} at p_malignant {DEFAULT_THRESHOLD:g}"
    return auc_text(name, auc) if auc is not None else "; ".join(check["reasons"])


def _combined(states, splits: dict) -> LearningCheck:
    """The run's state from its splits' ``states``: did not learn if any split says so, else learned if any split
    learned, else undetermined; the reasons are those of the splits in that state."""
    if DID_NOT_LEARN in states:
        state = DID_NOT_LEARN
    elif OK in states:
        return LearningCheck(OK, [], splits)
    else:
        state = UNDETERMINED
    reasons = [reason for check in splits.values() if check.state == state for reason in check.reasons]
    return LearningCheck(state, reasons or ["no validation or test images to check on"], splits)
