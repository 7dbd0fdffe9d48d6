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
* IDF1, IDP, IDR, MOTA and CLEAR-MOT switches from ``motmetrics`` (Ristani et al. 2016,
  "Performance Measures and a Data Set for Multi-Target, Multi-Camera Tracking"), with one body
  length as the matching distance.

A true point is *in a crossing* when the ground-truth CSV says so (``crossing`` column, written
by the simulator) or, when the CSV has no such column, when another true animal lies within one
body length of it in the same frame.

Predicted identities are reported 1-based (column ``j`` of idtracker.ai's ``trajectories`` array
is identity ``j + 1``). Coordinates are pixels, (x, y); frames are 0-based.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import SessionError, ToxrtError
from ..extras import require

logger = logging.getLogger(__name__)

Label = Union[int, str]

# Elements of a (frames, M, N) block computed at once; bounds memory to tens of MB.
_CHUNK_ELEMENTS = 2_000_000
_TRUTHY = {"1", "true", "True", "TRUE", "yes"}
_FALSY = {"0", "false", "False", "FALSE", "no", ""}


class GroundTruthError(ToxrtError):
    """A ground-truth CSV is missing, malformed, or does not fit the predictions."""


@dataclass
class GroundTruth:
    """True positions of M animals over F annotated frames.

    frames    int64   (F,)       0-based frame indices, strictly increasing
    ids       list of M labels   as written in the CSV (ints when every id is an integer)
    positions float64 (F, M, 2)  x, y in pixels; NaN where the animal is not annotated
    crossing  bool    (F, M)     or None when the CSV has no ``crossing`` column; then
                                 :meth:`crossing_mask` derives it from proximity
    """

    frames: np.ndarray
    ids: list[Label]
    positions: np.ndarray
    crossing: np.ndarray | None = None

    @staticmethod
    def from_csv(path: str | Path) -> "GroundTruth":
        """Read a long-format CSV with header ``frame,id,x,y`` and an optional ``crossing`` (0/1).

        Rows may come in any order; an empty or ``nan`` x/y marks an absent point.
        """
        path = Path(path)
        try:
            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))
        except FileNotFoundError:
            raise GroundTruthError(f"{path}: ground-truth file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise GroundTruthError(f"{path}: cannot read ground-truth file: {exc}") from None
        if not rows:
            raise GroundTruthError(f"{path}: empty file; expected a header frame,id,x,y")
        header = [name.strip().lower() for name in rows[0]]
        missing = [name for name in ("frame", "id", "x", "y") if name not in header]
        if missing:
            raise GroundTruthError(f"{path}: header {rows[0]!r} lacks column(s) {missing}; expected frame,id,x,y")
        col = {name: header.index(name) for name in ("frame", "id", "x", "y")}
        crossing_col = header.index("crossing") if "crossing" in header else None
        return _parse_rows(path, rows[1:], col, crossing_col)

    def to_csv(self, path: str | Path) -> None:
        """Write the long format read by :meth:`from_csv` (absent points are left out)."""
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["frame", "id", "x", "y"] + (["crossing"] if self.crossing is not None else []))
            rows, cols = np.nonzero(~np.isnan(self.positions).any(axis=-1))
            for f, m in zip(rows, cols):
                x, y = self.positions[f, m]
                row = [int(self.frames[f]), self.ids[m], repr(float(x)), repr(float(y))]
                if self.crossing is not None:
                    row.append(int(self.crossing[f, m]))
                writer.writerow(row)

    @property
    def present(self) -> np.ndarray:
        """bool (F, M): the animal is annotated in the frame."""
        return ~np.isnan(self.positions).any(axis=-1)

    def crossing_mask(self, body_length: float) -> np.ndarray:
        """bool (F, M): the CSV's crossing flags, else another animal within ``body_length`` px."""
        if self.crossing is not None:
            return self.crossing & self.present
        m = self.positions.shape[1]
        near = np.zeros(self.positions.shape[:2], bool)
        not_self = ~np.eye(m, dtype=bool)
        for sl in _frame_chunks(len(self.frames), m * m):
            d2 = _pairwise_d2(self.positions[sl], self.positions[sl])
            near[sl] = ((d2 <= body_length ** 2) & not_self).any(axis=-1)
        return near


def _label_key(label: str) -> list[Any]:
    """Natural sort key: 'track_10' after 'track_2'."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label) if part]


def _parse_rows(path: Path, rows: list[list[str]], col: dict[str, int], crossing_col: int | None) -> GroundTruth:
    width = max(list(col.values()) + [crossing_col or 0]) + 1
    frames_raw: list[int] = []
    labels_raw: list[str] = []
    xy_raw: list[tuple[float, float]] = []
    cross_raw: list[bool] = []
    for line, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < width:
            raise GroundTruthError(f"{path}: line {line} has {len(row)} fields, expected {width}")
        try:
            frame = int(float(row[col["frame"]]))
            x = float(row[col["x"]]) if row[col["x"]].strip() else math.nan
            y = float(row[col["y"]]) if row[col["y"]].strip() else math.nan
        except ValueError:
            raise GroundTruthError(f"{path}: line {line}: frame, x and y must be numbers, got {row!r}") from None
        if frame < 0:
            raise GroundTruthError(f"{path}: line {line}: negative frame {frame}")
        label = row[col["id"]].strip()
        if not label:
            raise GroundTruthError(f"{path}: line {line}: empty id")
        frames_raw.append(frame)
        labels_raw.append(label)
        xy_raw.append((x, y))
        if crossing_col is not None:
            text = row[crossing_col].strip()
            if text not in _TRUTHY and text not in _FALSY:
                raise GroundTruthError(f"{path}: line {line}: crossing must be 0 or 1, got {text!r}")
            cross_raw.append(text in _TRUTHY)
    if not frames_raw:
        raise GroundTruthError(f"{path}: no data rows after the header")

    unique_labels = sorted(set(labels_raw), key=_label_key)
    if all(re.fullmatch(r"-?\d+", label) for label in unique_labels):
        ids: list[Label] = sorted(int(label) for label in unique_labels)
        column_of = {str(label): m for m, label in enumerate(ids)}
        # "007" and "7" are the same animal once read as integers
        column_of.update({label: column_of[str(int(label))] for label in unique_labels})
    else:
        ids = list(unique_labels)
        column_of = {label: m for m, label in enumerate(ids)}

    frame_arr = np.asarray(frames_raw, np.int64)
    frames, row_of = np.unique(frame_arr, return_inverse=True)
    cols = np.fromiter((column_of[label] for label in labels_raw), np.int64, len(labels_raw))
    flat = row_of * len(ids) + cols
    if np.unique(flat).size != flat.size:
        dup = np.flatnonzero(np.bincount(flat) > 1)[0]
        raise GroundTruthError(f"{path}: frame {frames[dup // len(ids)]} lists id {ids[dup % len(ids)]!r} twice")
    positions = np.full((frames.size, len(ids), 2), np.nan)
    positions[row_of, cols] = np.asarray(xy_raw, np.float64)
    crossing = None
    if crossing_col is not None:
        crossing = np.zeros((frames.size, len(ids)), bool)
        crossing[row_of, cols] = cross_raw
    logger.debug("%s: %d frames, %d animals", path, frames.size, len(ids))
    return GroundTruth(frames=frames, ids=ids, positions=positions, crossing=crossing)


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


def _frame_chunks(n_frames: int, elements_per_frame: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, elements_per_frame))
    for start in range(0, n_frames, step):
        yield slice(start, min(start + step, n_frames))


def _pairwise_d2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances float64 (F, M, N) between a (F, M, 2) and b (F, N, 2); NaN if either is."""
    delta = a[:, :, None, :] - b[:, None, :, :]
    return np.einsum("fmnk,fmnk->fmn", delta, delta)


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
    for sl in _frame_chunks(n_frames, m * n):
        if n == 0:
            break
        d2 = _pairwise_d2(true[sl], pred[sl])
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

    mot = _motmetrics_summary(true, pred, truth.frames, bl2)
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


def _motmetrics_summary(true: np.ndarray, pred: np.ndarray, frames: np.ndarray, bl2: float) -> dict[str, float]:
    """IDF1, IDP, IDR, MOTA and switches from motmetrics, fed frame by frame."""
    mm = require("motmetrics", "eval", "IDF1 and MOTA")  # pandas-heavy: imported only when evaluating

    acc = mm.MOTAccumulator(auto_id=False)
    true_ok = ~np.isnan(true).any(axis=-1)
    pred_ok = ~np.isnan(pred).any(axis=-1)
    for i, frame in enumerate(frames):
        oids = np.flatnonzero(true_ok[i])
        hids = np.flatnonzero(pred_ok[i])
        delta = true[i, oids][:, None, :] - pred[i, hids][None, :, :]
        d2 = np.einsum("mnk,mnk->mn", delta, delta)
        d2[d2 > bl2] = np.nan  # motmetrics: NaN means "may not pair"
        acc.update(oids.tolist(), (hids + 1).tolist(), d2, frameid=int(frame))
    names = ["idf1", "idp", "idr", "mota", "num_switches"]
    summary = mm.metrics.create().compute(acc, metrics=names, name="eval")
    return {name: float(summary[name].iloc[0]) for name in names}


def load_predicted(session_or_npy: str | Path) -> tuple[np.ndarray, dict[str, Any], Path]:
    """Trajectories (F, N, 2) and the whole dict from a session folder or a trajectories.npy."""
    path = Path(session_or_npy)
    npy = path / "trajectories" / "trajectories.npy" if path.is_dir() else path
    if not npy.is_file():
        raise SessionError(f"{npy}: trajectories file not found")
    try:
        loaded = np.load(npy, allow_pickle=True)
        data = loaded.item() if loaded.dtype == object and loaded.shape == () else None
    except (OSError, ValueError, EOFError) as exc:
        raise SessionError(f"{npy}: cannot read trajectories: {exc}") from None
    if not isinstance(data, dict) or "trajectories" not in data:
        raise SessionError(f"{npy}: not an idtracker.ai-style dict with a 'trajectories' key")
    trajectories = np.asarray(data["trajectories"], np.float64)
    if trajectories.ndim != 3 or trajectories.shape[2] != 2:
        raise SessionError(f"{npy}: 'trajectories' has shape {trajectories.shape}, expected (frames, animals, 2)")
    return trajectories, data, npy


def evaluate_session(session_or_npy: str | Path, ground_truth_csv: str | Path,
                     body_length: float | None = None) -> EvaluationReport:
    """Evaluate a session folder (or a trajectories.npy) against a ``frame,id,x,y`` CSV.

    Without ``body_length`` the trajectories' own ``body_length`` entry is used.
    """
    trajectories, data, npy = load_predicted(session_or_npy)
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
