"""Identity evaluation of predicted trajectories against a ground truth.

Predicted identities are mapped to true identities once for the whole video: the Hungarian
algorithm maximises, over the (M true, N predicted) pairs, the number of frames in which the
pair lies within one body length. With that mapping:

* ``accuracy_all``: share of true points whose mapped prediction lies within one body length;
* ``accuracy_solo``: the same, leaving out true points in a crossing;
* ``detected``: share of true points with *any* prediction within one body length;
* ``label_changes``: per true animal, how often the nearest predicted identity within one body
  length changes from one matched solo frame to the next (frames without a match and frames in a
  crossing are skipped);
* IDF1, IDP, IDR, MOTA and CLEAR-MOT switches from ``motmetrics`` (``mot.py``; Ristani et al.
  2016, "Performance Measures and a Data Set for Multi-Target, Multi-Camera Tracking"), with one
  body length as the matching distance.

A true point is *in a crossing* when the ground-truth CSV says so (``crossing`` column, written
by the simulator) or, when the CSV has no such column, when another true animal lies within one
body length of it in the same frame.

Predicted identities are reported 1-based (column ``j`` of idtracker.ai's ``trajectories`` array
is identity ``j + 1``). Coordinates are pixels, (x, y); frames are 0-based.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import SessionError, ToxrtError
from ..io.trajectory_files import load_trajectories
from .groundtruth import GroundTruth, Label, frame_chunks, pairwise_d2
from .mot import motmetrics_summary

logger = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    """Identity metrics of one prediction against one ground truth.

    Accuracies and ``detected`` are fractions in [0, 1] (NaN when there is nothing to count).
    ``accuracy_per_animal`` is ``accuracy_all`` per true label. ``mapping`` gives, per true label, the 1-based predicted identity it was mapped to (None when
    there are fewer predicted identities than true ones). ``identity_switches`` is the sum of
    ``label_changes``; ``num_switches`` is motmetrics' CLEAR-MOT count.
    """

    accuracy_solo: float
    accuracy_all: float
    detected: float
    accuracy_per_animal: dict[Label, float]
    label_changes: dict[Label, int]
    identity_switches: int
    idf1: float
    idp: float
    idr: float
    mota: float
    num_switches: int
    mapping: dict[Label, int | None]
    n_frames: int
    n_true_points: int
    n_solo_points: int
    body_length: float

    def summary_lines(self) -> list[str]:
        """Human-readable lines for the CLI."""
        per_animal = ", ".join(f"{label}: {_pct(acc)}" for label, acc in self.accuracy_per_animal.items())
        changes = ", ".join(f"{label}: {n}" for label, n in self.label_changes.items())
        mapping = ", ".join(f"{label} -> {ident if ident is not None else '-'}" for label, ident in self.mapping.items())
        return [
            f"frames {self.n_frames}, true points {self.n_true_points} ({self.n_solo_points} solo), "
            f"body length {self.body_length:.1f} px",
            f"accuracy solo {_pct(self.accuracy_solo)}, all {_pct(self.accuracy_all)}, detected {_pct(self.detected)}",
            f"IDF1 {_pct(self.idf1)} (IDP {_pct(self.idp)}, IDR {_pct(self.idr)}), MOTA {_pct(self.mota)}, "
            f"MOT switches {self.num_switches}",
            f"accuracy per animal: {per_animal}",
            f"label changes {self.identity_switches} ({changes})",
            f"mapping true -> predicted: {mapping}",
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: labels become strings, NaN becomes None."""
        def number(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "accuracy_solo": number(self.accuracy_solo),
            "accuracy_all": number(self.accuracy_all),
            "detected": number(self.detected),
            "accuracy_per_animal": {str(k): number(v) for k, v in self.accuracy_per_animal.items()},
            "label_changes": {str(k): int(v) for k, v in self.label_changes.items()},
            "identity_switches": int(self.identity_switches),
            "idf1": number(self.idf1),
            "idp": number(self.idp),
            "idr": number(self.idr),
            "mota": number(self.mota),
            "num_switches": int(self.num_switches),
            "mapping": {str(k): v for k, v in self.mapping.items()},
            "n_frames": int(self.n_frames),
            "n_true_points": int(self.n_true_points),
            "n_solo_points": int(self.n_solo_points),
            "body_length": float(self.body_length),
        }


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}%"


def align_predictions(predicted: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Rows of ``predicted`` (F_pred, N, 2) at the truth's ``frames`` (F,); NaN past its end."""
    aligned = np.full((frames.size, predicted.shape[1], 2), np.nan)
    inside = frames < predicted.shape[0]
    aligned[inside] = predicted[frames[inside]]
    return aligned


def evaluate(predicted: np.ndarray, truth: GroundTruth, body_length: float) -> EvaluationReport:
    """Evaluate predicted trajectories float (F_pred, N, 2), NaN where missing, indexed by frame.

    Prediction rows past the truth's frames are ignored; truth frames past the prediction's
    end count as missing predictions. ``body_length`` is in pixels and is the matching radius.
    """
    predicted = np.asarray(predicted, np.float64)
    if predicted.ndim != 3 or predicted.shape[2] != 2:
        raise ToxrtError(f"predicted trajectories must have shape (frames, animals, 2), got {predicted.shape}")
    if not (body_length > 0 and math.isfinite(body_length)):
        raise ToxrtError(f"body_length must be a positive number of pixels, got {body_length!r}")
    bl2 = float(body_length) ** 2
    pred = align_predictions(predicted, truth.frames)
    true = truth.positions
    n_frames, m = true.shape[:2]
    n = pred.shape[1]

    # One pass over frame chunks: pair counts for the mapping and the nearest prediction.
    counts = np.zeros((m, n), np.int64)
    nearest = np.full((n_frames, m), -1, np.int64)
    for sl in frame_chunks(n_frames, m * n):
        if n == 0:
            break
        d2 = pairwise_d2(true[sl], pred[sl])
        within = d2 <= bl2  # NaN compares False: absent points never match
        counts += within.sum(axis=0)
        d2 = np.where(within, d2, np.inf)
        best = d2.argmin(axis=-1)
        nearest[sl] = np.where(within.any(axis=-1), best, -1)

    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapped = np.full(m, -1, np.int64)
    mapped[rows] = cols

    present = truth.present
    solo = present & ~truth.crossing_mask(body_length)
    correct = np.zeros((n_frames, m), bool)
    has_map = mapped >= 0
    if has_map.any():
        delta = true[:, has_map] - pred[:, mapped[has_map]]
        correct[:, has_map] = np.einsum("fmk,fmk->fm", delta, delta) <= bl2

    label_changes: dict[Label, int] = {}
    for j, label in enumerate(truth.ids):
        # Inside a crossing several identities stand on one blob, so "nearest" is arbitrary there.
        seq = nearest[:, j][(nearest[:, j] >= 0) & solo[:, j]]
        label_changes[label] = int(np.count_nonzero(seq[1:] != seq[:-1]))

    mot = motmetrics_summary(true, pred, truth.frames, bl2)
    return EvaluationReport(
        accuracy_solo=_fraction(correct[solo]),
        accuracy_all=_fraction(correct[present]),
        detected=_fraction((nearest >= 0)[present]),
        accuracy_per_animal={label: _fraction(correct[present[:, j], j]) for j, label in enumerate(truth.ids)},
        label_changes=label_changes,
        identity_switches=sum(label_changes.values()),
        idf1=mot["idf1"],
        idp=mot["idp"],
        idr=mot["idr"],
        mota=mot["mota"],
        num_switches=int(mot["num_switches"]),
        mapping={label: (int(mapped[j]) + 1 if mapped[j] >= 0 else None) for j, label in enumerate(truth.ids)},
        n_frames=int(n_frames),
        n_true_points=int(present.sum()),
        n_solo_points=int(solo.sum()),
        body_length=float(body_length),
    )


def _fraction(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def evaluate_session(session_or_npy: str | Path, ground_truth_csv: str | Path,
                     body_length: float | None = None) -> EvaluationReport:
    """Evaluate a session folder (or a trajectories.npy) against a ``frame,id,x,y`` CSV.

    Without ``body_length`` the trajectories' own ``body_length`` entry is used.
    """
    trajectories, data, npy = load_trajectories(session_or_npy)
    if body_length is None:
        value = data.get("body_length")
        try:
            body_length = float(value)
        except (TypeError, ValueError):
            raise SessionError(f"{npy}: no usable 'body_length' ({value!r}); pass a body length") from None
        if not (body_length > 0 and math.isfinite(body_length)):
            raise SessionError(f"{npy}: 'body_length' is {body_length!r}; pass a body length")
    truth = GroundTruth.from_csv(ground_truth_csv)
    logger.info("evaluating %s (%d x %d) against %s (%d frames, %d animals), body length %.1f px",
                npy, trajectories.shape[0], trajectories.shape[1], ground_truth_csv,
                truth.frames.size, len(truth.ids), body_length)
    return evaluate(trajectories, truth, body_length)
