"""Identity evaluation on synthetic trajectories with known answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from toxrt.evaluation import groundtruth
from toxrt.errors import SessionError, ToxrtError
from toxrt.evaluation.groundtruth import GroundTruth, GroundTruthError
from toxrt.evaluation.metrics import evaluate, evaluate_session

BODY = 20.0  # px


def circling(n_frames: int = 200, n_animals: int = 4, seed: int = 0) -> np.ndarray:
    """float64 (F, M, 2): each animal circles its own centre, centres 200 px apart (never within a body length)."""
    rng = np.random.default_rng(seed)
    centres = np.stack([200.0 * (1 + np.arange(n_animals)), np.full(n_animals, 300.0)], axis=1)
    phase = rng.uniform(0, 2 * np.pi, n_animals)
    angle = phase[None, :] + 0.05 * np.arange(n_frames)[:, None]
    return centres[None] + 40.0 * np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def truth_of(positions: np.ndarray, ids=None, crossing=None, first_frame: int = 0) -> GroundTruth:
    ids = list(range(positions.shape[1])) if ids is None else ids
    frames = np.arange(first_frame, first_frame + positions.shape[0])
    return GroundTruth(frames=frames, ids=ids, positions=positions, crossing=crossing)


def test_perfect_prediction_with_permuted_labels():
    true = circling()
    perm = np.array([2, 0, 3, 1])  # predicted column perm[m] holds true animal m
    pred = np.empty_like(true)
    pred[:, perm] = true
    pred += np.random.default_rng(1).normal(0, 1.0, pred.shape)  # small jitter stays within a body length
    report = evaluate(pred, truth_of(true, ids=["a", "b", "c", "d"]), BODY)
    assert report.mapping == {"a": 3, "b": 1, "c": 4, "d": 2}  # 1-based identities
    assert report.accuracy_all == 1.0 and report.accuracy_solo == 1.0 and report.detected == 1.0
    assert report.label_changes == {"a": 0, "b": 0, "c": 0, "d": 0}
    assert report.identity_switches == 0 and report.num_switches == 0
    assert report.idf1 == pytest.approx(1.0) and report.mota == pytest.approx(1.0)
    assert report.n_true_points == 800 and report.n_frames == 200


def test_swap_halfway_halves_accuracy_of_the_two_animals():
    true = circling(n_frames=200, n_animals=4)
    pred = true.copy()
    pred[100:, [0, 1]] = true[100:, [1, 0]]
    report = evaluate(pred, truth_of(true), BODY)
    assert report.accuracy_per_animal[0] == pytest.approx(0.5)
    assert report.accuracy_per_animal[1] == pytest.approx(0.5)
    assert report.accuracy_per_animal[2] == 1.0 and report.accuracy_per_animal[3] == 1.0
    assert report.accuracy_all == pytest.approx(0.75)
    assert report.detected == 1.0
    assert report.label_changes == {0: 1, 1: 1, 2: 0, 3: 0}
    assert report.identity_switches == 2
    # IDF1 = 2 IDTP / (true + predicted points); the global mapping keeps half of the swapped pair
    assert report.idf1 == pytest.approx((2 * 200 + 2 * 100) / 800)
    assert report.idf1 < 1.0
    assert report.num_switches >= 2


def test_mapping_follows_the_majority_of_frames():
    true = circling(n_frames=100, n_animals=2)
    pred = true[:, ::-1].copy()
    pred[:30] = true[:30]  # first 30 frames the labels are the other way round
    report = evaluate(pred, truth_of(true), BODY)
    assert report.mapping == {0: 2, 1: 1}
    assert report.accuracy_all == pytest.approx(0.7)
    assert report.label_changes == {0: 1, 1: 1}


def test_positions_off_by_more_than_a_body_length_are_wrong():
    true = circling(n_frames=100, n_animals=3)
    pred = true.copy()
    pred[:20, 0, 0] += 1.5 * BODY  # wrong
    pred[20:40, 1, 1] += 0.8 * BODY  # still right
    report = evaluate(pred, truth_of(true), BODY)
    assert report.accuracy_per_animal[0] == pytest.approx(0.8)
    assert report.accuracy_per_animal[1] == 1.0
    assert report.accuracy_all == pytest.approx((80 + 100 + 100) / 300)
    assert report.detected == pytest.approx(report.accuracy_all)


def test_nan_predictions_are_wrong_and_gaps_do_not_count_as_label_changes():
    true = circling(n_frames=100, n_animals=3)
    pred = true.copy()
    pred[10:35, 2] = np.nan
    report = evaluate(pred, truth_of(true), BODY)
    assert report.accuracy_per_animal[2] == pytest.approx(0.75)
    assert report.detected == pytest.approx((300 - 25) / 300)
    assert report.label_changes[2] == 0
    assert report.idr == pytest.approx((300 - 25) / 300)
    assert report.idp == pytest.approx(1.0)


def test_crossing_column_points_are_left_out_of_solo_accuracy():
    true = circling(n_frames=100, n_animals=3)
    crossing = np.zeros(true.shape[:2], bool)
    crossing[40:50, [0, 1]] = True
    pred = true.copy()
    pred[40:50, 0] = np.nan  # lost exactly while crossing
    report = evaluate(pred, truth_of(true, crossing=crossing), BODY)
    assert report.accuracy_solo == 1.0
    assert report.accuracy_all == pytest.approx(290 / 300)
    assert report.n_solo_points == 280


def test_crossing_from_proximity_when_the_csv_has_none():
    true = circling(n_frames=60, n_animals=3)
    true[20:30, 1] = true[20:30, 0] + [0.5 * BODY, 0.0]  # animal 1 touches animal 0
    truth = truth_of(true)
    mask = truth.crossing_mask(BODY)
    expected = np.zeros((60, 3), bool)
    expected[20:30, [0, 1]] = True
    np.testing.assert_array_equal(mask, expected)
    pred = true.copy()
    pred[20:30, 0] = np.nan  # animal 0 is lost while in contact
    report = evaluate(pred, truth, BODY)
    assert report.accuracy_solo == 1.0
    assert report.n_solo_points == 160
    assert report.accuracy_all == pytest.approx(170 / 180)


def test_different_numbers_of_frames_and_identities():
    true = circling(n_frames=100, n_animals=3)
    # truth starts at frame 5; the prediction stops at frame 84 and has one extra identity
    truth = truth_of(true, first_frame=5)
    pred = np.full((85, 4, 2), np.nan)
    pred[5:85, :3] = true[:80]
    pred[:, 3] = [5000.0, 5000.0]  # a spurious identity far away
    report = evaluate(pred, truth, BODY)
    assert report.mapping == {0: 1, 1: 2, 2: 3}
    assert report.accuracy_all == pytest.approx(0.8)  # last 20 truth frames have no prediction
    assert report.n_frames == 100
    # a longer prediction: frames past the truth are ignored
    longer = np.concatenate([pred, np.zeros((500, 4, 2))])
    longer[5:105, :3] = true
    assert evaluate(longer, truth, BODY).accuracy_all == 1.0


def test_fewer_predicted_identities_than_animals():
    true = circling(n_frames=50, n_animals=3)
    pred = true[:, [2, 0]]
    report = evaluate(pred, truth_of(true), BODY)
    assert report.mapping == {0: 2, 1: None, 2: 1}
    assert report.accuracy_per_animal[1] == 0.0
    assert report.accuracy_all == pytest.approx(2 / 3)
    empty = evaluate(np.zeros((50, 0, 2)), truth_of(true), BODY)
    assert empty.accuracy_all == 0.0 and empty.detected == 0.0
    assert set(empty.mapping.values()) == {None}


def test_chunked_computation_matches_a_single_block(monkeypatch):
    rng = np.random.default_rng(3)
    true = circling(n_frames=120, n_animals=5, seed=3)
    pred = true[:, rng.permutation(5)] + rng.normal(0, 8.0, true.shape)
    pred[rng.random((120, 5)) < 0.1] = np.nan
    whole = evaluate(pred, truth_of(true), BODY)
    monkeypatch.setattr(groundtruth, "CHUNK_ELEMENTS", 7)
    chunked = evaluate(pred, truth_of(true), BODY)
    assert chunked.to_dict() == whole.to_dict()


def test_rejects_bad_inputs():
    true = circling(n_frames=10, n_animals=2)
    with pytest.raises(ToxrtError, match="shape"):
        evaluate(np.zeros((10, 2)), truth_of(true), BODY)
    with pytest.raises(ToxrtError, match="body_length"):
        evaluate(true, truth_of(true), 0.0)


def test_report_to_dict_is_json_and_summary_names_animals():
    true = circling(n_frames=50, n_animals=2)
    report = evaluate(true[:, ::-1], truth_of(true, ids=["female", "male"]), BODY)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["mapping"] == {"female": 2, "male": 1}
    assert data["accuracy_all"] == 1.0
    text = "\n".join(report.summary_lines())
    assert "female -> 2" in text and "male -> 1" in text and "IDF1" in text
    no_points = evaluate(true, truth_of(np.full_like(true, np.nan)), BODY)
    assert math.isnan(no_points.accuracy_all)
    assert no_points.to_dict()["accuracy_all"] is None


# --- ground-truth CSV ---------------------------------------------------------------------------

def test_csv_with_string_ids_in_any_row_order(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("frame,id,x,y\n1,male,5.5,6\n0,female,1,2\n0,male,3,4\n2,female,7,8\n")
    truth = GroundTruth.from_csv(path)
    assert truth.ids == ["female", "male"]
    np.testing.assert_array_equal(truth.frames, [0, 1, 2])
    np.testing.assert_array_equal(truth.positions[0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(truth.positions[1, 1], [5.5, 6])
    assert np.isnan(truth.positions[1, 0]).all() and np.isnan(truth.positions[2, 1]).all()
    assert truth.crossing is None
    assert truth.positions.dtype == np.float64


def test_csv_integer_ids_sort_numerically_and_crossing_column(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("frame,id,x,y,crossing\n0,10,1,1,0\n0,2,2,2,1\n3,10,3,3,1\n")
    truth = GroundTruth.from_csv(path)
    assert truth.ids == [2, 10]
    np.testing.assert_array_equal(truth.frames, [0, 3])
    np.testing.assert_array_equal(truth.crossing, [[True, False], [False, True]])


def test_csv_round_trip_and_evaluate_session(tmp_path):
    true = circling(n_frames=80, n_animals=3)
    crossing = np.zeros((80, 3), bool)
    crossing[5:9, 2] = True
    truth = truth_of(true, ids=["track_0", "track_1", "track_2"], crossing=crossing)
    csv_path = tmp_path / "groundtruth.csv"
    truth.to_csv(csv_path)
    again = GroundTruth.from_csv(csv_path)
    assert again.ids == truth.ids
    np.testing.assert_array_equal(again.positions, truth.positions)
    np.testing.assert_array_equal(again.crossing, crossing)

    session = tmp_path / "session_test"
    (session / "trajectories").mkdir(parents=True)
    npy = session / "trajectories" / "trajectories.npy"
    np.save(npy, {"trajectories": true[:, [1, 2, 0]], "body_length": BODY, "frames_per_second": 25.0},
            allow_pickle=True)
    report = evaluate_session(session, csv_path)
    assert report.body_length == BODY
    assert report.mapping == {"track_0": 3, "track_1": 1, "track_2": 2}
    assert report.accuracy_all == 1.0
    assert evaluate_session(npy, csv_path, body_length=5.0).body_length == 5.0

    np.save(npy, {"trajectories": true}, allow_pickle=True)
    with pytest.raises(SessionError, match="body_length"):
        evaluate_session(session, csv_path)
    with pytest.raises(SessionError, match="not found"):
        evaluate_session(tmp_path / "nowhere", csv_path)


@pytest.mark.parametrize("content, problem", [
    ("frame,animal,x,y\n0,a,1,2\n", "lacks column"),
    ("frame,id,x,y\n0,a,one,2\n", "line 2"),
    ("frame,id,x,y\n0,a,1,2\n0,a,3,4\n", "twice"),
    ("frame,id,x,y\n0,a\n", "fields"),
    ("frame,id,x,y\n", "no data rows"),
    ("", "empty file"),
    ("frame,id,x,y,crossing\n0,a,1,2,maybe\n", "crossing"),
    ("frame,id,x,y\n-1,a,1,2\n", "negative frame"),
])
def test_malformed_csv_names_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(GroundTruthError, match=problem) as info:
        GroundTruth.from_csv(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_csv(tmp_path):
    with pytest.raises(GroundTruthError, match="not found"):
        GroundTruth.from_csv(tmp_path / "missing.csv")
