"""The live appearance learner: seeding, publishing a model, bounded memory, never blocking."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from toxrt import live_appearance
from toxrt.appearance import FeatureShape
from toxrt.config import AppearanceConfig
from toxrt.live_appearance import LiveAppearance, Observation

SHAPE = FeatureShape(16, 0.4)
N = 3


def _frames(count: int, rng: np.random.Generator, first: int = 0):
    """N animals with distinct mean features, all apart in every frame; fragment ids change every 40 frames."""
    centres = rng.normal(0, 1, (N, SHAPE.size)).astype(np.float32) * 3
    for t in range(first, first + count):
        block = t // 40
        fragment = np.arange(N, dtype=np.int64) + N * block
        features = centres + rng.normal(0, 1, (N, SHAPE.size)).astype(np.float32)
        yield Observation(t, fragment, features, np.arange(1, N + 1, dtype=np.int32), True)


def test_the_learner_seeds_from_a_global_fragment_and_accepts_later_fragments():
    learner = LiveAppearance(AppearanceConfig(live_retrain_interval_s=1.0), SHAPE, N, fps=25, synchronous=True)
    rng = np.random.default_rng(0)
    assert learner.snapshot() is None
    for observation in _frames(200, rng):
        learner.observe(observation)
    model = learner.snapshot()
    assert model is not None and learner.stats.seeded_at_frame >= 3
    assert learner.stats.accepted_fragments > N  # fragments after the seed were accepted too
    # the published numbering is the live one: fragment k of every block is identity k + 1
    assert all(model.accepted[f] == f % N + 1 for f in model.accepted)
    assert model.temperature >= 1.0


def test_images_per_fragment_zero_keeps_every_image_up_to_a_bound():
    learner = live_appearance.AppearanceLearner(AppearanceConfig(images_per_fragment=0), SHAPE, N, fps=25)
    for observation in _frames(39, np.random.default_rng(3)):  # one block: 39 images per fragment
        learner.ingest(observation)
    assert learner.stats.seeded_at_frame >= 0
    kept = [len(learner._fragments[f].images) for f in range(N)]
    assert kept == [39] * N  # "all", not 2 (what 0 used to give)
    assert live_appearance.LIVE_IMAGES_PER_FRAGMENT_LIMIT < 10_000  # and bounded for endless fragments


@pytest.mark.slow
def test_the_learner_forgets_old_fragments_and_keeps_a_bounded_pool():
    cfg = AppearanceConfig(live_retrain_interval_s=0.4, live_images_per_identity=100)
    learner = LiveAppearance(cfg, SHAPE, N, fps=25, synchronous=True)
    rng = np.random.default_rng(1)
    for observation in _frames(2000, rng):
        learner.observe(observation)
    inner = learner._learner
    assert len(inner._fragments) <= N * (1 + live_appearance.FORGET_AFTER_RETRAINS * 10 // 40 + 2)
    assert inner._pool.shape == (N, 100, SHAPE.size)


def test_the_learner_learns_in_a_child_process_and_the_frame_loop_never_waits_for_it():
    """A stopped learner process (as if stuck in a long fit) blocks no observe(): frames beyond
    its queue are dropped and counted; once it runs again, its model arrives."""
    learner = LiveAppearance(AppearanceConfig(live_retrain_interval_s=1.0), SHAPE, N, fps=25)
    rng = np.random.default_rng(2)
    try:
        for observation in _frames(100, rng):
            learner.observe(observation)
        os.kill(learner._process.pid, signal.SIGSTOP)
        for observation in _frames(learner.capacity + 200, rng, first=100):
            learner.observe(observation)  # returns at once although nobody takes the frames
        assert learner.stats.dropped_frames >= 200 - 100  # the queue took what it could
        os.kill(learner._process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60  # the learner catches up with its queue in its own time
        while learner.snapshot() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        learner.close()  # stops at once, whatever is still queued
    assert learner.snapshot() is not None and learner.stats.trainings >= 1


def test_the_learner_process_leaves_with_its_tracker_and_never_reruns_the_callers_script(tmp_path):
    """A script without a main guard starts a learner and dies as after kill -9: the script is not
    run again in the learner, and the learner leaves once its parent is gone."""
    import subprocess
    import sys
    import time

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import os\n"
        "from toxrt.appearance import FeatureShape\n"
        "from toxrt.config import AppearanceConfig\n"
        "from toxrt.live_appearance import LiveAppearance\n"
        "learner = LiveAppearance(AppearanceConfig(), FeatureShape(16, 0.4), 3, 25)\n"
        "print(learner._process.pid, flush=True)\n"
        "os._exit(0)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RuntimeError" not in done.stderr  # the script was not imported again by the child
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}"), "the learner outlived its tracker"


def test_an_animal_hidden_at_first_is_opened_when_it_is_met_beside_all_the_others():
    """For 100 frames one of 4 animals is inside a crossing (no frame shows all apart): the 3 seen
    apart seed the model; once all 4 are apart, the fourth is opened with its live identity."""
    rng = np.random.default_rng(4)
    n = 4
    centres = rng.normal(0, 1, (n, SHAPE.size)).astype(np.float32) * 3
    learner = LiveAppearance(AppearanceConfig(live_retrain_interval_s=1.0), SHAPE, n, fps=25, synchronous=True)
    for t in range(300):
        animals = np.arange(1, n) if t < 100 else np.arange(n)
        fragment = animals + n * (t // 100)  # each 100-frame block: new fragments
        features = centres[animals] + rng.normal(0, 1, (animals.size, SHAPE.size)).astype(np.float32)
        learner.observe(Observation(t, fragment.astype(np.int64), features, (animals + 1).astype(np.int32),
                                    animals.size == n))
    model = learner.snapshot()
    assert model is not None and 25 <= learner.stats.seeded_at_frame < 100
    assert sorted(model.identities.tolist()) == [1, 2, 3, 4]
    assert all(model.accepted[f] == f % n + 1 for f in model.accepted)
