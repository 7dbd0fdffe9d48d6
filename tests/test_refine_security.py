"""`toxrt refine` reads nothing that can run code, and says clearly what a session lacks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from toxrt.config import RecordingConfig  # noqa: E402
from toxrt.errors import SessionError  # noqa: E402
from toxrt.config import RefineConfig  # noqa: E402
from toxrt.offline.refine import refine, refine_session  # noqa: E402
from toxrt.io.trajectory_files import read_plain_npz  # noqa: E402
from toxrt.io.recording import SessionWriter  # noqa: E402
from toxrt.types import Blobs, FrameResult  # noqa: E402

from .helpers import make_fake_session, write_as_session  # noqa: E402

QUICK = dict(method="contrastive", min_batches=0, time_budget_s=0, device="cpu", network="small", image_size=16, batch_pairs=16, max_batches=10, eval_every=5,
             patience=1, silhouette_images=100, threads=1, seed=0)


class RunsCode:
    """Unpickling this runs a shell command: what a crafted file in a shared folder could hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def plant(path: Path, proof: Path) -> None:
    """A malicious file at ``path`` in the format its name promises; unpickling it creates ``proof``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"trajectories": RunsCode(f"touch {proof}"), "source": "toxrt-live"}
    if path.suffix == ".pt":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            np.save(handle, np.array(payload, dtype=object), allow_pickle=True)


def test_the_planted_files_do_run_code_when_unpickled(tmp_path):
    """The test's bait is real: the usual ``np.load(allow_pickle=True)`` / ``torch.load`` runs it."""
    npy, pt = tmp_path / "t.npy", tmp_path / "c.pt"
    plant(npy, tmp_path / "ran_npy")
    plant(pt, tmp_path / "ran_pt")
    code = (f"import numpy, torch; numpy.load({str(npy)!r}, allow_pickle=True); "
            f"torch.load({str(pt)!r}, weights_only=False)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "ran_npy").exists() and (tmp_path / "ran_pt").exists()


def test_refine_runs_nothing_from_a_crafted_session_folder(tmp_path, caplog):
    fake = make_fake_session(n_frames=120, seed=1)
    folder = tmp_path / "session_shared"
    write_as_session(fake, folder)
    proof = tmp_path / "code_ran"
    out = folder / "trajectories"
    for name in ("trajectories.npy", "trajectories_live.npy"):
        plant(out / name, proof)
    (out / "trajectories.npz").unlink()  # an older session: only the npy is there
    checkpoint = folder / "offline" / "checkpoint.pt"
    plant(checkpoint, proof)
    with caplog.at_level("WARNING"):
        summary = refine_session(folder, RefineConfig(**QUICK), progress=False)
    assert not proof.exists()  # nothing was unpickled
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "unreadable checkpoint" in messages
    assert summary.batches == QUICK["max_batches"]  # trained afresh, the planted checkpoint ignored
    # the refined output has its pickle-free twin, which loads with allow_pickle=False
    assert read_plain_npz(out / "trajectories.npz")["trajectories"].shape == (fake.n_frames, 4, 2)
    # the checkpoint written now loads with weights_only=True
    assert torch.load(checkpoint, weights_only=True)["batches"] == QUICK["max_batches"]


def test_refine_keeps_the_live_trajectories_and_their_plain_npz(tmp_path):
    fake = make_fake_session(n_frames=120, seed=1)
    folder = tmp_path / "session_plain"
    write_as_session(fake, folder)
    plain = read_plain_npz(folder / "trajectories" / "trajectories.npz")
    legacy = np.load(folder / "trajectories" / "trajectories.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(plain["trajectories"], legacy["trajectories"])
    assert str(plain["source"]) == legacy["source"] and list(plain["identities_labels"]) == legacy["identities_labels"]
    refine_session(folder, RefineConfig(**QUICK), progress=False)
    kept = read_plain_npz(folder / "trajectories" / "trajectories_live.npz")  # kept beside the refined one
    np.testing.assert_array_equal(kept["trajectories"], legacy["trajectories"])


def record_without_images(folder: Path) -> None:
    meta = {"number_of_animals": 2, "frames_per_second": 25.0}
    with SessionWriter(folder, RecordingConfig(identification_images=False), meta, "", None, 12, 4) as writer:
        for frame in range(5):
            blobs = Blobs(centroid=np.array([[10.0, 10.0], [50.0, 50.0]]), area=np.full(2, 100.0),
                          orientation=np.zeros(2), bbox=np.zeros((2, 4), np.int32), hu=np.zeros((2, 7)),
                          histogram=np.full((2, 4), 0.25, np.float32), crop=np.zeros((2, 12, 12), np.uint8),
                          oversized=np.zeros(2, bool))
            writer.write_frame(FrameResult(frame, frame / 25.0, blobs, np.array([1, 2]), np.zeros(2, bool),
                                           np.array([1, 2], np.int32),
                                           np.full(2, 0.9, np.float32), np.zeros(2, np.uint8)))


def test_refine_without_identification_images_says_so(tmp_path):
    record_without_images(tmp_path / "s")
    with pytest.raises(SessionError, match="recorded without identification images"):
        refine_session(tmp_path / "s", RefineConfig(**QUICK), progress=False)


def test_refine_with_a_missing_image_file_says_so(tmp_path):
    fake = make_fake_session(n_frames=60, seed=2)
    write_as_session(fake, tmp_path / "s")
    (tmp_path / "s" / "identification_images.u8").unlink()
    with pytest.raises(SessionError, match="identification images file is missing"):
        refine_session(tmp_path / "s", RefineConfig(**QUICK), progress=False)


def test_a_single_animal_gets_no_identification_error_warning():
    lonely = make_fake_session(n_animals=1, n_frames=120, seed=3)
    result = refine(lonely, RefineConfig(**QUICK), progress=False)
    assert not any("expect identification errors" in w for w in result.warnings)
