"""End to end: refinement recovers scrambled identities of a synthetic session."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from toxrt.config import RefineConfig, build_config  # noqa: E402
from toxrt.errors import ConfigError, SessionError  # noqa: E402
from toxrt.offline.refine import refine, refine_config, refine_session, resolved  # noqa: E402

from .helpers import FakeSession, make_fake_session, write_as_session  # noqa: E402

FAST = dict(method="contrastive", min_batches=0, time_budget_s=0, device="cpu", network="small", image_size=16, batch_pairs=32, max_batches=150, eval_every=25,
            patience=3, silhouette_target=0.85, silhouette_images=400, threads=1, seed=0)


def image_accuracy(result, session: FakeSession, identity: np.ndarray) -> float:
    truth = np.array([session.truth[int(f)] for f in result.table.ids])
    n = result.table.n_images
    return float(n[identity == truth].sum() / n.sum())


@pytest.fixture(scope="module")
def fake() -> FakeSession:
    return make_fake_session(n_frames=240, seed=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ck") / "ck.pt"


@pytest.fixture(scope="module")
def refined(fake, checkpoint):
    return refine(fake, RefineConfig(**FAST), checkpoint=checkpoint, progress=False)


@pytest.mark.slow
def test_refinement_recovers_scrambled_identities(fake, refined):
    live = image_accuracy(refined, fake, refined.table.live_identity)
    assert live < 0.9  # the live labelling is scrambled
    assert refined.status == "refined"
    assert image_accuracy(refined, fake, refined.identity) >= 0.99
    assert refined.silhouette > 0.8
    assert refined.fraction_identified() == 1.0
    fragments_changed, images_changed = refined.changes()
    assert fragments_changed > 0 and images_changed > 0
    assert 0.95 < refined.estimated_accuracy() <= 1.0


@pytest.mark.slow
def test_refined_coexisting_fragments_never_share_an_identity(refined):
    a, b = refined.identity[refined.table.pairs[:, 0]], refined.identity[refined.table.pairs[:, 1]]
    assert not ((a == b) & (a > 0)).any()


def test_too_few_coexisting_fragments_keeps_live_identities():
    # only animal 1 was ever seen: no fragment coexists with another
    lonely = make_fake_session(n_frames=120, seed=3)
    keep = np.array([lonely.truth.get(int(f), 0) == 1 for f in lonely.blobs["fragment"]])
    keep |= lonely.blobs["is_crossing"] & (np.arange(len(keep)) % 4 == 0)
    lonely.blobs, lonely.images = lonely.blobs[keep], lonely.images[keep]
    lonely.fragments = lonely.fragments[np.isin(lonely.fragments["fragment"], lonely.blobs["fragment"])]
    result = refine(lonely, RefineConfig(**FAST), progress=False)
    assert result.status == "kept_live"
    np.testing.assert_array_equal(result.identity, result.table.live_identity)
    assert any("too few coexisting fragments" in w for w in result.warnings)
    assert any("connectivity" in w for w in result.warnings)


def test_bad_options_and_input_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="network"):
        build_config({"refine": {"network": "vgg"}})
    with pytest.raises(SessionError, match="not a session folder"):
        refine_session(tmp_path / "missing", RefineConfig(**FAST), progress=False)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "session.json").write_text(json.dumps({"format": "toxrt-session-0"}))
    with pytest.raises(SessionError, match="format"):
        refine_session(tmp_path / "old", RefineConfig(**FAST), progress=False)


@pytest.mark.slow
def test_refine_session_writes_refined_and_keeps_live(fake, refined, checkpoint, tmp_path):
    folder = tmp_path / "session_fake"
    write_as_session(fake, folder)
    # the checkpoint of the in-memory run fits this recording of the same session: no retraining
    options = RefineConfig(**FAST, checkpoint=str(checkpoint))
    summary = refine_session(folder, options, progress=False)
    assert summary.resumed_from == refined.batches
    out = folder / "trajectories"
    assert (out / "trajectories_live.npy").exists() and (out / "trajectories.npy").exists()
    data = np.load(out / "trajectories.npy", allow_pickle=True).item()
    live = np.load(out / "trajectories_live.npy", allow_pickle=True).item()
    assert data["trajectories"].shape == live["trajectories"].shape == (fake.n_frames, 4, 2)
    assert data["source"] == "toxrt-refined" and live["source"] != "toxrt-refined"
    assert data["silhouette_score"] == pytest.approx(summary.silhouette)
    assert data["fragment_connectivity"] == pytest.approx(summary.fragment_connectivity)
    # positions of each true animal land on one identity column (the fake's x/y are per row)
    correct = []
    for row in fake.blobs[~fake.blobs["is_crossing"]]:
        hit = np.flatnonzero(data["trajectories"][row["frame"], :, 0] == row["x"])
        correct.append(hit.size == 1 and fake.truth[int(row["fragment"])] == hit[0] + 1)
    assert np.mean(correct) >= 0.99
    assert summary.status == "refined" and summary.images_changed > 0
    lines = "\n".join(summary.summary_lines())
    assert "silhouette" in lines and "changed identity" in lines
    assert json.loads((folder / "offline" / "refine_summary.json").read_text())["status"] == "refined"
    # a second run keeps the first live file
    again = refine_session(folder, options, progress=False)
    assert again.fragments_changed == summary.fragments_changed
    assert np.load(out / "trajectories_live.npy", allow_pickle=True).item()["source"] == live["source"]


def test_auto_options_resolve_per_device():
    cpu = resolved(RefineConfig(), "cpu", 8)
    assert (cpu.network, cpu.batch_pairs, cpu.eval_every, cpu.patience) == ("small", 100, 25, 8)
    assert (cpu.min_batches, cpu.time_budget_s) == (500, 600.0)
    assert (cpu.min_improvement, cpu.silhouette_images, cpu.max_batches) == (0.01, 2000, 3000)
    gpu = resolved(RefineConfig(), "cuda", 30)
    assert (gpu.network, gpu.batch_pairs, gpu.eval_every, gpu.patience) == ("resnet18", 400, 150, 30)
    assert (gpu.min_batches, gpu.time_budget_s) == (0, 0.0)
    assert (gpu.min_improvement, gpu.silhouette_images, gpu.max_batches) == (0.0, 30000, 15000)
    # explicit values are kept
    mine = resolved(RefineConfig(network="resnet18", batch_pairs=7, min_improvement=0.0), "cpu", 8)
    assert (mine.network, mine.batch_pairs, mine.min_improvement) == ("resnet18", 7, 0.0)
    with pytest.raises(ConfigError, match=r"refine.min_improvement: 2.0 is out of range \(-1 \(auto\) or from 0 to below 1\)"):
        build_config({"refine": {"min_improvement": 2.0}})


def test_auto_network_does_not_fall_back_to_resnet18_on_a_cpu(fake, monkeypatch):
    """With network = auto on a CPU, a small network stuck below silhouette 0.5 is replaced by ResNet18."""
    from toxrt.offline import train as train_module

    real_train = train_module.train_embedding
    networks = []

    def recording_train(table, loader, n, settings, *args, **kwargs):
        networks.append(settings.network)
        result = real_train(table, loader, n, dataclasses.replace(settings, network="small"), *args, **kwargs)
        if settings.network == "small":  # pretend the small network could not separate the animals
            result = dataclasses.replace(result, silhouette=0.2)
        return result

    monkeypatch.setattr(train_module, "train_embedding", recording_train)
    options = RefineConfig(**{**FAST, "network": "auto", "max_batches": 50})
    result = refine(fake, options, progress=False)
    assert networks == ["small"]  # no automatic ResNet18 on a CPU: it never converged there
    assert not any("ResNet18" in w for w in result.warnings)


def test_a_refine_run_takes_its_settings_from_the_sessions_refine_table_then_the_flags(tmp_path):
    folder = tmp_path / "session_tabled"
    write_as_session(make_fake_session(n_frames=40, seed=4), folder)
    assert refine_config(folder) == RefineConfig()  # no [refine] table: the defaults
    (folder / "parameters.toml").write_text('[refine]\nmethod = "contrastive"\nmax_batches = 7\n')
    cfg = refine_config(folder, {"max_batches": 100, "network": "small"})
    assert (cfg.method, cfg.max_batches, cfg.network) == ("contrastive", 100, "small")
    with pytest.raises(ConfigError, match=r"refine.max_batches: expected an integer, got 'x'"):
        refine_config(folder, {"max_batches": "x"})
    with pytest.raises(ConfigError, match=r"refine.patience: -3 is out of range \(0 or from 1 to 1000000\)"):
        refine_config(folder, {"patience": -3})
    with pytest.raises(ConfigError, match="unknown key 'refine.max_batch'"):
        refine_config(folder, {"max_batch": 3})
    (folder / "parameters.toml").write_text("[linking]\nmax_gap = 3\n")  # another version's file
    assert refine_config(folder, {"seed": 5}) == RefineConfig(seed=5)
