"""The identities written at the end of a session: one decision per recorded fragment.

``decide_identities(session, config, n)`` picks the method the recording allows:

* ``accumulation`` (``session_identities.py``): the appearance model learned from the session's
  identification images; the default whenever they were recorded and there are 2 animals or more;
* ``single``: one animal, every individual fragment is identity 1;
* ``toxid``: no identification images were recorded: the ToxId fragment fusion of histograms
  and Hu moments (``fusion.py``), with a warning that identities are less reliable.

The decision is also saved as ``fragment_identities.npz`` (plain arrays, no pickle) so that
``toxrt refine`` and other tools read the session's identities without re-deriving them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .accumulation import LOW_ESTIMATED_ACCURACY
from .config import Config
from .fragments import build_fragment_table
from .fusion import fuse_fragments
from .io.atomic import atomic_open
from .io.layout import FRAGMENT_IDENTITIES

log = logging.getLogger(__name__)

@dataclass
class SessionDecision:
    """fragment id -> (identity, probability), and the quality measures of the decision."""

    method: str
    identities: dict[int, tuple[int, float]]
    estimated_accuracy: float = float("nan")
    accumulated_fraction: float = float("nan")
    fragment_connectivity: float = float("nan")
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def quality(self) -> dict:
        return {"identity_method": self.method, "estimated_accuracy": self.estimated_accuracy,
                "accumulated_fraction": self.accumulated_fraction,
                "fragment_connectivity": self.fragment_connectivity,
                "identity_seconds": self.seconds, "warnings": list(self.warnings)}


def decide_identities(session, config: Config, number_of_animals: int) -> SessionDecision:
    """Identities of the recorded individual fragments (see the module docstring)."""
    n = int(number_of_animals)
    individual = session.fragments[~session.fragments["is_crossing"]]
    if n <= 0:
        return SessionDecision("none", {})
    if n == 1:
        return SessionDecision("single", {int(f): (1, 1.0) for f in individual["fragment"]}, 1.0, 1.0)
    images = session.crop_size > 0 and bool(session.has_crop.any())
    if images and individual.size:
        from .session_identities import identify_session

        live = build_fragment_table(session.blobs).live_identity
        result = identify_session(session, n, config.appearance, live)
        decision = SessionDecision("accumulation", result.fragment_identity(), result.estimated_accuracy(),
                                   result.accumulated_fraction(), result.graph.connectivity(n), result.seconds,
                                   list(result.result.warnings))
    else:
        rng = np.random.default_rng(0)
        samples = session.fragment_samples(config.identity.fusion_samples, rng)
        fused = fuse_fragments(session.fragments, samples, n, config.identity)
        decision = SessionDecision("toxid", fused, warnings=[
            "recorded without identification images: identities come from the ToxId histogram similarity "
            "and may be unreliable for look-alike animals"])
    if decision.estimated_accuracy < LOW_ESTIMATED_ACCURACY:
        decision.warnings.append(f"estimated identity accuracy {100 * decision.estimated_accuracy:.1f}% < "
                                 f"{100 * LOW_ESTIMATED_ACCURACY:.0f}%: check the identities (toxrt refine may help)")
    for warning in decision.warnings:
        log.warning(warning)
    return decision


def save_fragment_identities(folder: Path, decision: SessionDecision) -> Path:
    """``fragment_identities.npz``: fragment, identity, probability (int64, int64, float64), atomically."""
    ids = np.array(sorted(decision.identities), np.int64)
    identity = np.array([decision.identities[int(f)][0] for f in ids], np.int64)
    probability = np.array([decision.identities[int(f)][1] for f in ids], np.float64)
    path = Path(folder) / FRAGMENT_IDENTITIES
    with atomic_open(path) as handle:
        np.savez(handle, fragment=ids, identity=identity, probability=probability, method=np.array(decision.method))
    return path


def load_fragment_identities(folder: Path) -> dict[int, tuple[int, float]] | None:
    """What ``save_fragment_identities`` wrote, None when absent or unreadable (never unpickles)."""
    path = Path(folder) / FRAGMENT_IDENTITIES
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, identity, probability = data["fragment"], data["identity"], data["probability"]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: unreadable (%s)", path, exc)
        return None
    return {int(f): (int(i), float(p)) for f, i, p in zip(ids, identity, probability)}
