"""Plain data passed between the live stages.

Coordinates are pixels, (x, y) with the origin at the top-left of the full frame.
Frame indices are 0-based, in the order the source delivers frames.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np


class Status(enum.IntEnum):
    """Where a published position comes from."""

    MEASURED = 0  # an individual blob matched to the animal's fragment
    PREDICTED = 1  # no blob this frame; the Kalman prediction stands in
    CROSSING = 2  # the animal is inside a blob that holds several animals


STATUS_NAMES = {int(s): s.name.lower() for s in Status}  # 0 measured, 1 predicted, 2 crossing
MISSING_STATUS = -1  # the status of a (frame, animal) cell without a position in the trajectory files


@dataclass(frozen=True)
class Frame:
    """One grey image from a source."""

    index: int
    time_s: float  # capture time (UNIX seconds for live sources, index / fps for files)
    image: np.ndarray  # uint8, (height, width)
    blobs: Blobs | None = None  # found beside decoding, in the reader thread (None: not yet)


@dataclass
class Blobs:
    """The blobs of one frame as a struct of arrays; n may be 0.

    centroid    float64 (n, 2)  x, y in pixels
    area        float64 (n,)    pixels
    orientation float64 (n,)    main-axis angle in radians, in (-pi/2, pi/2]
    bbox        int32   (n, 4)  x, y, width, height
    hu          float64 (n, 7)  Hu moment invariants of the blob's masked grey image
    histogram   float32 (n, bins) intensity histogram of the blob's pixels, sums to 1
    crop        uint8   (n, s, s) identification image: background set to 0, main axis horizontal
    oversized   bool    (n,)    larger than ``crossing_area_ratio`` single animals: maybe several
                                (the linker decides what is a crossing: ``LinkResult.is_crossing``)

    Made by segmentation and never changed afterwards.
    """

    centroid: np.ndarray
    area: np.ndarray
    orientation: np.ndarray
    bbox: np.ndarray
    hu: np.ndarray
    histogram: np.ndarray
    crop: np.ndarray
    oversized: np.ndarray

    def __len__(self) -> int:
        return int(self.area.shape[0])

    @staticmethod
    def empty(histogram_bins: int, crop_size: int) -> "Blobs":
        return Blobs(
            centroid=np.zeros((0, 2)),
            area=np.zeros(0),
            orientation=np.zeros(0),
            bbox=np.zeros((0, 4), np.int32),
            hu=np.zeros((0, 7)),
            histogram=np.zeros((0, histogram_bins), np.float32),
            crop=np.zeros((0, crop_size, crop_size), np.uint8),
            oversized=np.zeros(0, bool),
        )

    def subset(self, keep: np.ndarray) -> "Blobs":
        return Blobs(*(getattr(self, name)[keep] for name in BLOB_FIELDS))


BLOB_FIELDS = ("centroid", "area", "orientation", "bbox", "hu", "histogram", "crop", "oversized")


@dataclass
class FrameResult:
    """What the live stage knows after one frame, one row per blob.

    fragment    int64   (n,) fragment id of each blob (crossing blobs have their own fragments)
    is_crossing bool    (n,) the blob's fragment is a crossing (several animals), as the linker decided
    identity    int32   (n,) 1..N, 0 while undecided or for crossing blobs
    probability float32 (n,) the identity's probability, 0 when identity is 0
    status      uint8   (n,) Status of each blob's position
    """

    frame_index: int
    time_s: float
    blobs: Blobs
    fragment: np.ndarray
    is_crossing: np.ndarray
    identity: np.ndarray
    probability: np.ndarray
    status: np.ndarray
    # IdentityEvent decisions and revisions, and {"type": "fragment_start" | "fragment_end", ...} dicts
    events: list = field(default_factory=list)
    # Individual fragments with no blob this frame, at their Kalman prediction.
    predicted_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # float64 (p, 2)
    predicted_identity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # int32 (p,)
    predicted_probability: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # float32 (p,)
    predicted_fragment: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 (p,)
    # Crossing fragment id -> [(identity, probability)] of the animals known to be inside it.
    crossing_identities: dict = field(default_factory=dict)


@dataclass(frozen=True)
class IdentityEvent:
    """A live identity decision or revision of one fragment."""

    frame: int
    fragment: int
    old_identity: int  # 0 when the fragment had none
    new_identity: int
    probability: float

    def as_event(self) -> dict:
        """The event as a plain dict (see :func:`event_dict`), ``type = "identity"``."""
        return {"type": "identity", "frame": self.frame, "fragment": self.fragment,
                "old_identity": self.old_identity, "new_identity": self.new_identity,
                "probability": self.probability}


def event_dict(event: IdentityEvent | Mapping[str, Any]) -> dict:
    """An event as events.jsonl records it and the ``event`` topic sends it: one schema for both.

    Every event is a plain dict with a ``type`` and, where it concerns a frame, the key ``frame``:
    an :class:`IdentityEvent` becomes ``type = "identity"``; a dict must already have a ``type``.
    """
    if isinstance(event, IdentityEvent):
        return event.as_event()
    if isinstance(event, Mapping):
        if "type" not in event:
            raise ValueError(f"an event dict needs a 'type' key, got keys {sorted(event)}")
        return dict(event)
    raise TypeError(f"an event must be a dict or an IdentityEvent, got {type(event).__name__}")


# One row per blob per frame, as recorded in a session (see recording.py).
BLOB_RECORD_DTYPE = np.dtype([
    ("frame", "i8"),
    ("time_s", "f8"),
    ("x", "f8"),
    ("y", "f8"),
    ("area", "f4"),
    ("orientation", "f4"),
    ("fragment", "i8"),
    ("identity", "i4"),
    ("status", "u1"),
    ("probability", "f4"),
    ("is_crossing", "?"),
])

# One row per fragment, derived from the blob rows (fragments.derive_fragments).
# Fragments coexist when their [start, end] frame intervals overlap.
FRAGMENT_RECORD_DTYPE = np.dtype([
    ("fragment", "i8"),
    ("start", "i8"),  # first frame
    ("end", "i8"),  # last frame (inclusive)
    ("n_samples", "i8"),  # blobs in the fragment
    ("is_crossing", "?"),  # a crossing fragment holds blobs of several animals
    ("identity", "i4"),  # live identity when the fragment ended (0 = none)
])


def blob_records(result: FrameResult) -> np.ndarray:
    """The recorded rows of one frame's blobs."""
    n = len(result.blobs)
    rows = np.empty(n, BLOB_RECORD_DTYPE)
    rows["frame"] = result.frame_index
    rows["time_s"] = result.time_s
    rows["x"] = result.blobs.centroid[:, 0]
    rows["y"] = result.blobs.centroid[:, 1]
    rows["area"] = result.blobs.area
    rows["orientation"] = result.blobs.orientation
    rows["fragment"] = result.fragment
    rows["identity"] = result.identity
    rows["status"] = result.status
    rows["probability"] = result.probability
    rows["is_crossing"] = result.is_crossing
    return rows
