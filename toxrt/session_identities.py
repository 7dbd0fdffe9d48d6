"""Identities of a recorded session's fragments by accumulation (``accumulation.py``).

The end of ``toxrt track`` and ``toxrt refine --method accumulation`` both call
:func:`identify_session`: the individual fragments and their coexistence come from the blob rows
(``fragments.py``), the identification images are read from the session's
image file a block at a time and turned into identity features, and the accumulation decides.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .accumulation import AccumulationResult, accumulate, spread_rows
from .appearance import FeatureShape, identity_features
from .config import AppearanceConfig
from .errors import SessionError
from .fragments import FragmentGraph, FragmentTable, build_fragment_table, fragment_graph

log = logging.getLogger(__name__)

READ_BLOCK_IMAGES = 8192  # identification images read and converted at a time (bounded memory)
MAX_FEATURE_BYTES = 256 * 2**20  # identity features of a whole session held at once
MIN_IMAGES_PER_FRAGMENT = 8


@dataclass
class SessionIdentities:
    """The fragments of a session and what the accumulation decided for them."""

    table: FragmentTable
    graph: FragmentGraph
    result: AccumulationResult
    seconds: float

    def fragment_identity(self) -> dict[int, tuple[int, float]]:
        """fragment id -> (identity, probability), identified fragments only."""
        keep = np.flatnonzero(self.result.identity > 0)
        return {int(self.table.ids[f]): (int(self.result.identity[f]), float(self.result.probability[f]))
                for f in keep}

    def estimated_accuracy(self) -> float:
        """Expected share of the identified images that have the right identity.

        Fragments left without an identity coexist with N identified ones all along: they are extra
        blobs (a shadow, a speck), not an animal, and leave the estimate alone.
        """
        n = self.table.n_images * (self.result.identity > 0)
        return float((n * self.result.probability).sum() / n.sum()) if n.sum() else float("nan")

    def fraction_identified(self) -> float:
        n = self.table.n_images
        return float(n[self.result.identity > 0].sum() / n.sum()) if n.sum() else 0.0

    def accumulated_fraction(self) -> float:
        n = self.table.n_images
        return float(n[self.result.accepted].sum() / n.sum()) if n.sum() else 0.0


def session_features(session, table: FragmentTable, shape: FeatureShape, per_fragment: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(features float16 (R, d), fragment int64 (R,)) of up to ``per_fragment`` images per fragment.

    Grey levels 0..255 keep 0.1 of a level in float16. A long session with many fragments scores
    fewer images of each (at least ``MIN_IMAGES_PER_FRAGMENT``) so that the features stay within
    ``MAX_FEATURE_BYTES``.
    """
    budget = max(MIN_IMAGES_PER_FRAGMENT, MAX_FEATURE_BYTES // (2 * shape.size * max(len(table), 1)))
    per_fragment = min(per_fragment, budget) if per_fragment > 0 else budget
    if per_fragment < 64:
        log.info("%d fragments: at most %d images of each are scored", len(table), per_fragment)
    picks = spread_rows(table.n_images, per_fragment)
    rows = table.rows[picks]
    fragment = table.fragment_of_image()[picks]
    features = np.empty((rows.size, shape.size), np.float16)
    for lo in range(0, rows.size, READ_BLOCK_IMAGES):
        features[lo:lo + READ_BLOCK_IMAGES] = identity_features(session.crops(rows[lo:lo + READ_BLOCK_IMAGES]), shape)
    return features, fragment


def identify_session(session, number_of_animals: int, settings: AppearanceConfig,
                     reference_identity: np.ndarray | None = None) -> SessionIdentities:
    """Accumulation over a loaded session (``session_reader.Session``) that has identification images.

    ``reference_identity`` int (F,) per row of the fragment table (e.g. the live identities): the
    identities are renumbered to agree with it as much as possible.
    """
    t0 = time.monotonic()
    table = build_fragment_table(session.blobs)
    graph = fragment_graph(table, session.blobs, number_of_animals)
    shape = FeatureShape(int(session.crop_size), settings.band_fraction)
    usable = session.has_crop[table.rows].all() if table.rows.size else True
    if not usable:
        raise SessionError(f"{session.session_dir}: identification images are missing for some fragments "
                           "(recorded without them, or the image file was cut short)")
    features, fragment = session_features(session, table, shape, settings.images_per_fragment)
    log.info("accumulation over %d fragments (%d images scored, %d global fragments)",
             len(table), fragment.size, len(graph.global_sets))
    result = accumulate(graph, features, fragment, shape, number_of_animals, settings, reference_identity)
    return SessionIdentities(table, graph, result, time.monotonic() - t0)
