"""Training loop of the offline stage: stopping rule, checkpoint resume, Ctrl+C."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from toxrt.offline.dataset import ImageLoader  # noqa: E402
from toxrt.fragments import build_fragment_table  # noqa: E402
from toxrt.config import RefineConfig  # noqa: E402
from toxrt.offline.train import SilhouetteStopper, train_embedding  # noqa: E402

from .helpers import make_fake_session  # noqa: E402

CPU = torch.device("cpu")


def run_stopper(scores, **kwargs):
    stopper = SilhouetteStopper(**kwargs)
    for k, score in enumerate(scores):
        if stopper.update(score):
            return k
    return None


def test_stopper_patience_without_reaching_target():
    scores = [0.1, 0.2, 0.3, 0.25, 0.29, 0.3, 0.28]  # best 0.3 at index 2, equal is no improvement
    assert run_stopper(scores, patience=4, target=0.91) == 6
    assert run_stopper(scores, patience=5, target=0.91) is None


def test_stopper_stops_two_evaluations_after_target_stops_improving():
    scores = [0.5, 0.85, 0.92, 0.95, 0.94, 0.96, 0.955, 0.95, 0.99]
    assert run_stopper(scores, patience=30, target=0.91, target_patience=2) == 7
    # below the target, the same plateau does not stop early
    assert run_stopper([0.5, 0.6, 0.59, 0.58, 0.57], patience=30, target=0.91) is None


def test_stopper_min_improvement_stops_on_a_slow_plateau_but_keeps_the_best_model():
    # a slow creep (+0.002 per evaluation) below the target: the paper's rule never stops ...
    scores = [0.5, 0.7, 0.78, 0.782, 0.784, 0.786, 0.788, 0.79]
    assert run_stopper(scores, patience=4, target=0.91) is None
    # ... a margin of 0.005 counts the creep as no improvement: 4 evaluations after 0.78
    assert run_stopper(scores, patience=4, target=0.91, min_improvement=0.005) == 6
    stopper = SilhouetteStopper(patience=4, min_improvement=0.005)
    improved = []
    for score in scores[:4]:
        stopper.update(score)
        improved.append(stopper.improved)
    # a small gain is not significant, yet it is the best model so far and is kept
    assert improved == [True, True, True, True] and stopper.best == 0.782 and stopper.since_best == 1


def test_stopper_state_round_trip():
    a = SilhouetteStopper(patience=3)
    for s in (0.2, 0.5, 0.4):
        a.update(s)
    b = SilhouetteStopper(patience=3)
    b.load_state_dict(a.state_dict())
    assert (b.best, b.since_best) == (0.5, 1)
    assert not b.update(0.45) and b.update(0.3)


# every automatic value of the [refine] table given (train_embedding takes them resolved)
SETTINGS = dict(network="small", image_size=16, batch_pairs=16, eval_every=5, patience=100,
                silhouette_images=200, seed=3, min_improvement=0.0, min_batches=0, time_budget_s=0.0)


@pytest.fixture(scope="module")
def data():
    s = make_fake_session(n_frames=160, seed=5)
    return build_fragment_table(s.blobs), ImageLoader(s, 16)


def test_resumed_training_equals_an_uninterrupted_run(data, tmp_path):
    table, loader = data
    torch.set_num_threads(1)  # equal thread counts give bit-equal runs; 1 is robust on a busy machine
    straight = train_embedding(table, loader, 4, RefineConfig(max_batches=20, **SETTINGS), CPU,
                               tmp_path / "a.pt", progress=False)
    first = train_embedding(table, loader, 4, RefineConfig(max_batches=10, **SETTINGS), CPU,
                            tmp_path / "b.pt", progress=False)
    assert first.batches == 10 and (tmp_path / "b.pt").exists()
    resumed = train_embedding(table, loader, 4, RefineConfig(max_batches=20, **SETTINGS), CPU,
                              tmp_path / "b.pt", progress=False)
    assert resumed.resumed_from == 10 and resumed.batches == 20
    assert [b for b, _ in resumed.history] == [5, 10, 15, 20]
    np.testing.assert_allclose([s for _, s in resumed.history], [s for _, s in straight.history], atol=1e-6)
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, atol=1e-5, rtol=1e-5)
    assert straight.silhouette == max(s for _, s in straight.history)
    # a checkpoint made with other settings is not resumed
    other = train_embedding(table, loader, 4, RefineConfig(max_batches=5, **{**SETTINGS, "seed": 4}), CPU,
                            tmp_path / "b.pt", progress=False)
    assert other.resumed_from == 0


class InterruptingLoader:
    """Raises KeyboardInterrupt at the n-th training batch, as Ctrl+C would."""

    def __init__(self, loader: ImageLoader, batch_size: int, at_call: int) -> None:
        self.loader, self.batch_size, self.at_call, self.calls = loader, batch_size, at_call, 0
        self.image_size = loader.image_size

    def load(self, rows):
        if len(rows) == self.batch_size:
            self.calls += 1
            if self.calls == self.at_call:
                raise KeyboardInterrupt
        return self.loader.load(rows)


def test_ctrl_c_keeps_the_best_model_and_saves_a_checkpoint(data, tmp_path):
    table, loader = data
    interrupting = InterruptingLoader(loader, 4 * SETTINGS["batch_pairs"], at_call=13)
    result = train_embedding(table, interrupting, 4, RefineConfig(max_batches=50, **SETTINGS), CPU,
                             tmp_path / "c.pt", progress=False)
    assert result.interrupted and result.batches == 12
    assert [b for b, _ in result.history] == [5, 10]
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["batches"] == 12 and not state["finished"]
    best = state["best_model"]
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(best[key], value)
