"""End to end on a session recorded by the real live engine: scrambled live identities are recovered.

The live engine (``toxrt.tracking.run_tracking``) tracks a small simulated arena and records its
session folder; the identity column of ~20 % of the individual fragments is then rewritten in the
recorded blob chunks, the live trajectories are rewritten from those identities and the end of the
session's decision (``fragment_identities.npz``) is removed, as if the live stage had confused those
animals: refinement then starts from the recorded per-row identities. ``refine_session`` on that
folder must give trajectories that are >= 99.5 % correct outside crossings against the simulator's
ground truth.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from toxrt.config import build_config  # noqa: E402
from toxrt.evaluation.groundtruth import GroundTruth  # noqa: E402
from toxrt.evaluation.metrics import evaluate  # noqa: E402
from toxrt.io.trajectory_files import load_trajectories  # noqa: E402
from toxrt.config import RefineConfig  # noqa: E402
from toxrt.offline.refine import refine_session  # noqa: E402
from toxrt.trajectories import assemble_trajectories
from toxrt.io.trajectory_files import write_trajectories  # noqa: E402
from toxrt.io.layout import FRAGMENT_IDENTITIES  # noqa: E402
from toxrt.io.session_reader import load_session  # noqa: E402
from toxrt.tracking import run_tracking  # noqa: E402
from toxrt.sim.arena import SimulatedArena  # noqa: E402

ANIMALS = 5
FAST = dict(method="contrastive", min_batches=0, time_budget_s=0, device="cpu", network="small", image_size=16, batch_pairs=32, max_batches=300, eval_every=25,
            patience=3, min_improvement=0.005, silhouette_images=500, threads=1, seed=0, bf16="off")


@pytest.fixture(scope="module")
def engine_session(tmp_path_factory) -> tuple[Path, SimulatedArena]:
    """A 300-frame, 5-animal arena tracked and recorded by the live engine (no ZeroMQ sockets)."""
    values = {"name": "scrambled", "video_paths": ["sim:scrambled"], "number_of_animals": ANIMALS,
              "output_dir": str(tmp_path_factory.mktemp("engine")), "trajectories_formats": ["npy"],
              "sim": {"frames": 300, "seed": 3, "width": 320, "height": 240, "body_length_px": 20,
                      "appearance_spread": 0.6},
              "streaming": {"publish_address": "", "marker_address": ""}}
    arena = SimulatedArena(build_config(values).sim, ANIMALS)
    summary = run_tracking(build_config({**values, **arena.tracking_parameters()}), progress=False,
                          overwrite=True)
    return Path(summary["session"]), arena


def truth_of(arena: SimulatedArena) -> GroundTruth:
    return GroundTruth(np.arange(arena.n_frames), list(range(1, ANIMALS + 1)),
                       arena.positions.astype(np.float64), arena.crossing)


def scramble_recorded_identities(folder: Path, fraction: float, seed: int) -> np.ndarray:
    """Rewrite the identity column of ``fraction`` of the individual fragments in the blob chunks.

    Each chosen fragment gets another identity (i -> i % N + 1) on every row. Returns the ids of
    the scrambled fragments.
    """
    session = load_session(folder)
    rows = session.blobs[(session.blobs["fragment"] >= 0) & ~session.blobs["is_crossing"]]
    fragments = np.unique(rows["fragment"])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(fragments, size=max(1, int(round(fraction * fragments.size))), replace=False)
    for chunk in sorted((folder / "blobs").glob("chunk_*.npz")):
        with np.load(chunk) as data:
            arrays = {key: data[key] for key in data.files}
        blobs = arrays["blobs"]
        hit = np.isin(blobs["fragment"], chosen) & ~blobs["is_crossing"] & (blobs["identity"] > 0)
        blobs["identity"][hit] = blobs["identity"][hit] % ANIMALS + 1
        with open(chunk, "wb") as handle:
            np.savez(handle, **arrays)
    return chosen


def rewrite_live_trajectories(folder: Path) -> None:
    """Replace the live trajectories with ones built from the recorded per-row live identities."""
    session = load_session(folder)
    live = {int(r["fragment"]): (int(r["identity"]), 1.0) for r in session.fragments
            if r["identity"] > 0 and not r["is_crossing"]}
    trajectories, probabilities, status = assemble_trajectories(session.blobs, live, int(session.n_frames),
                                                                ANIMALS, max_crossing_gap=50)
    meta = {**session.meta, "body_length": session.meta.get("body_length_px"), "source": "toxrt-live"}
    write_trajectories(folder / "trajectories", trajectories, probabilities, status, meta, ["npy"])
    (folder / FRAGMENT_IDENTITIES).unlink()  # else the end-of-session decision would be refine's reference


def solo_accuracy(folder: Path, arena: SimulatedArena) -> float:
    return evaluate(load_trajectories(folder)[0], truth_of(arena), arena.body_length_px).accuracy_solo


@pytest.mark.slow
def test_refinement_recovers_scrambled_live_identities_of_an_engine_session(engine_session):
    folder, arena = engine_session
    assert load_trajectories(folder)[1]["source"] == "toxrt-live"
    chosen = scramble_recorded_identities(folder, 0.2, seed=0)
    rewrite_live_trajectories(folder)
    assert chosen.size >= 3
    assert solo_accuracy(folder, arena) < 0.9  # the rewrite really damaged the live identities

    summary = refine_session(folder, RefineConfig(**FAST), progress=False)

    assert summary.status == "refined" and summary.images_changed > 0
    trajectories, data, _ = load_trajectories(folder)
    assert data["source"] == "toxrt-refined"
    report = evaluate(trajectories, truth_of(arena), arena.body_length_px)
    assert report.accuracy_solo >= 0.995
    assert summary.fraction_identified == 1.0
    assert 0.9 < summary.estimated_accuracy <= 1.0
    assert (folder / "trajectories" / "trajectories_live.npy").exists()
