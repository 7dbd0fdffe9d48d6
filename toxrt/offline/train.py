"""Contrastive training of the embedding network, stopped by the silhouette score.

Torrents et al. 2025, Methods "Training" and Appendix 2 "Stopping criteria": Adam (lr 1e-3),
balanced batches of positive and negative pairs, and every m batches a K-means clustering of a
sample of embedded images; training stops after ``patience`` evaluations without improvement, or
after 2 without improvement once the silhouette reached its target (0.91); the best model is kept.

A checkpoint (model, optimiser, sampler and random states, the best model so far) is written at
every evaluation, so an interrupted run resumes where it was; Ctrl+C stops training, saves, and
the caller continues with the best model so far.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..config import RefineConfig
from ..fragments import FragmentTable
from ..io.atomic import atomic_path
from . import cluster
from .dataset import ImageLoader
from .loss import D_NEG, D_POS, contrastive_loss, pair_distances
from .model import build_model
from .sampler import PairSampler

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "toxrt-refine-checkpoint-1"


class SilhouetteStopper:
    """The paper's stopping rule over a sequence of silhouette scores.

    ``update(score)`` returns True when training should stop: ``patience`` consecutive scores
    without improving on the best, or ``target_patience`` of them once the best reached
    ``target``. A score improves only when it beats the best by more than ``min_improvement``
    (0 = the paper's rule); a positive margin stops on a plateau below the target, which is
    where a CPU run on look-alike animals ends (see docs/offline.md).
    """

    def __init__(self, patience: int = 30, target: float = 0.91, target_patience: int = 2,
                 min_improvement: float = 0.0) -> None:
        self.patience = patience
        self.target = target
        self.target_patience = target_patience
        self.min_improvement = float(min_improvement)
        self.best = -np.inf
        self.since_best = 0  # evaluations since the last improvement by more than min_improvement
        self.improved = False  # the last score is the best so far (keep that model)

    def update(self, score: float) -> bool:
        significant = score > self.best + self.min_improvement
        self.improved = score > self.best
        if self.improved:
            self.best = float(score)
        if significant:
            self.since_best = 0
            return False
        self.since_best += 1
        if self.best >= self.target and self.since_best >= self.target_patience:
            return True
        return self.since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "since_best": self.since_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.since_best = int(state["since_best"])


@dataclass
class TrainResult:
    model: torch.nn.Module  # the best model (by silhouette), in eval mode
    silhouette: float  # its silhouette score (-1 when never evaluated)
    batches: int  # training batches done, including those before a resume
    history: list[tuple[int, float]] = field(default_factory=list)  # (batch, silhouette)
    interrupted: bool = False  # Ctrl+C stopped training
    resumed_from: int = 0  # batch the run resumed at (0 = fresh)
    seconds: float = 0.0


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from ..errors import ToxrtError
        raise ToxrtError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (bf16 inference is then faster than float32)."""
    with contextlib.suppress(Exception):
        if "AMX" in torch.backends.cpu.get_cpu_capability().upper():
            return True
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    return False


def embed(model: torch.nn.Module, loader: ImageLoader, rows: np.ndarray, device: torch.device,
          batch_size: int = 2048, bf16: bool = False) -> np.ndarray:
    """float32 (n, d): embeddings of the images of ``rows``, read in batches (memory stays flat)."""
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 and device.type == "cpu" \
        else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for lo in range(0, rows.shape[0], batch_size):
            x = torch.from_numpy(loader.load(rows[lo:lo + batch_size])).to(device)
            out.append(model(x).float().cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, 8), np.float32)
    return np.concatenate(out)


class Evaluator:
    """Silhouette of a fixed, seeded sample of images (comparable across evaluations).

    K-means starts from the centres of the live identities on the sample (or k-means++ when a
    live identity is missing from it), which is cheaper and keeps clusters tied to animals.
    """

    def __init__(self, table: FragmentTable, loader: ImageLoader, k: int, n_images: int, seed: int,
                 device: torch.device, bf16: bool) -> None:
        rng = np.random.default_rng(seed + 7919)
        n = min(n_images, table.rows.shape[0]) if n_images > 0 else table.rows.shape[0]
        pick = np.sort(rng.choice(table.rows.shape[0], size=n, replace=False))
        self.rows = table.rows[pick]
        self.live = table.live_identity[table.fragment_of_image()[pick]]
        self.loader, self.k, self.seed = loader, k, seed
        self.device, self.bf16 = device, bf16

    def __call__(self, model: torch.nn.Module) -> float:
        z = embed(model, self.loader, self.rows, self.device, bf16=self.bf16)
        if not np.isfinite(z).all():
            return -1.0
        init = cluster.group_centers(z, self.live, self.k)
        _, labels = cluster.kmeans(z, self.k, init, self.seed)
        return cluster.silhouette(z, labels, max_samples=10000, seed=self.seed)


def train_embedding(table: FragmentTable, loader: ImageLoader, number_of_animals: int,
                    settings: RefineConfig, device: torch.device, checkpoint: Path | None = None,
                    progress: bool = True, bf16_inference: bool = False) -> TrainResult:
    """Train the embedding network on the session's fragments; see the module docstring.

    ``settings``: the ``[refine]`` table with its automatic values resolved (``refine.resolved``).
    """
    t0 = time.monotonic()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = build_model(settings.network).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    sampler = PairSampler(table, rng, settings.images_per_fragment, settings.alpha)
    stopper = SilhouetteStopper(settings.patience, settings.silhouette_target, settings.target_patience,
                                settings.min_improvement)
    eval_every = settings.eval_every or max(100, 5 * number_of_animals)
    evaluator = Evaluator(table, loader, number_of_animals,
                          settings.silhouette_images or 1000 * number_of_animals, settings.seed, device,
                          bf16_inference)
    result = TrainResult(model=model, silhouette=-1.0, batches=0)
    best_state = copy.deepcopy(model.state_dict())
    fingerprint = _fingerprint(settings, table)
    if checkpoint is not None and checkpoint.exists():
        state = _load_checkpoint(checkpoint, fingerprint)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            sampler.load_state_dict(state["sampler"])
            stopper.load_state_dict(state["stopper"])
            torch.set_rng_state(state["torch_rng"])
            best_state = state["best_model"]
            result.batches = result.resumed_from = int(state["batches"])
            result.history = list(state["history"])
            result.silhouette = float(stopper.best) if result.history else -1.0
            log.info("resuming training at batch %d from %s", result.batches, checkpoint)
            if state["finished"]:
                model.load_state_dict(best_state)
                result.model = model.eval()
                result.seconds = time.monotonic() - t0
                return result

    finished = False
    model.train()
    bar = tqdm(total=settings.max_batches, initial=result.batches, disable=not progress,
               desc="contrastive training", unit="batch", leave=False)
    try:
        while result.batches < settings.max_batches:
            _train_step(model, optimizer, sampler, loader, settings.batch_pairs, device)
            result.batches += 1
            bar.update(1)
            out_of_time = settings.time_budget_s > 0 and time.monotonic() - t0 > settings.time_budget_s
            if result.batches % eval_every == 0 or result.batches == settings.max_batches or out_of_time:
                score = evaluator(model)
                result.history.append((result.batches, score))
                # On real animals the silhouette peaks early (zebrafish14: 0.41 at batch 25) and falls
                # while the identities keep improving; before min_batches nothing is kept or stops.
                warm = result.batches >= min(settings.min_batches, settings.max_batches)
                stop = stopper.update(score) if warm else False
                if out_of_time:
                    log.info("time budget of %.0f s used at batch %d", settings.time_budget_s, result.batches)
                    stop = True
                if (warm and stopper.improved) or (out_of_time and result.silhouette < 0):
                    best_state = copy.deepcopy(model.state_dict())
                    result.silhouette = score
                bar.set_postfix(silhouette=f"{score:.3f}", best=f"{stopper.best:.3f}")
                log.debug("batch %d silhouette %.4f (best %.4f)", result.batches, score, stopper.best)
                finished = stop  # a larger max_batches later continues a run that only ran out
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, fingerprint, model, optimizer, sampler, stopper,
                                     best_state, result, finished)
                if stop:
                    break
    except KeyboardInterrupt:
        result.interrupted = True
        log.warning("training interrupted at batch %d; continuing with the best model so far "
                    "(silhouette %.3f)", result.batches, result.silhouette)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, fingerprint, model, optimizer, sampler, stopper, best_state,
                             result, finished=False)
    finally:
        bar.close()
    model.load_state_dict(best_state)
    result.model = model.eval()
    result.seconds = time.monotonic() - t0
    return result


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: PairSampler,
                loader: ImageLoader, n_pairs: int, device: torch.device) -> float:
    """One balanced batch: 2 * n_pairs pairs, 4 * n_pairs images in one forward pass."""
    batch = sampler.sample(n_pairs)
    rows = np.concatenate([batch.positive_a, batch.negative_a, batch.positive_b, batch.negative_b])
    x = torch.from_numpy(loader.load(rows)).to(device)
    z = model(x)
    half = 2 * n_pairs
    distance = pair_distances(z[:half], z[half:])
    negative = torch.zeros(half, dtype=torch.bool, device=device)
    negative[n_pairs:] = True
    loss = contrastive_loss(distance, negative, D_POS, D_NEG)
    optimizer.zero_grad(set_to_none=True)
    loss.mean().backward()
    optimizer.step()
    per_pair = loss.detach().cpu().numpy()
    sampler.update(batch, per_pair[:n_pairs], per_pair[n_pairs:])
    return float(per_pair.mean())


def _fingerprint(settings: RefineConfig, table: FragmentTable) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (max_batches may grow between runs)."""
    keys = ("network", "image_size", "batch_pairs", "eval_every", "images_per_fragment", "alpha",
            "learning_rate", "seed", "silhouette_images")
    return {"settings": {k: getattr(settings, k) for k in keys}, "fragments": int(len(table)),
            "images": int(table.rows.shape[0])}


def _save_checkpoint(path: Path, fingerprint: dict[str, Any], model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, sampler: PairSampler, stopper: SilhouetteStopper,
                     best_state: dict[str, Any], result: TrainResult, finished: bool) -> None:
    """Write atomically (temp file + rename): a kill during the write keeps the previous one."""
    state = {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
             "stopper": stopper.state_dict(), "torch_rng": torch.get_rng_state(), "best_model": best_state,
             "batches": result.batches, "history": result.history, "finished": finished}
    state = _weights_only(state)  # loadable with torch.load(weights_only=True): no pickled code
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _weights_only(value: Any) -> Any:
    """numpy arrays as tensors and numpy scalars as Python numbers, the rest as it is, recursively."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _weights_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_weights_only(v) for v in value)
    return value


def _load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as exc:  # a damaged file: start again rather than fail the run
        log.warning("ignoring unreadable checkpoint %s (%s)", path, str(exc).strip().splitlines()[0][:200])
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        log.warning("ignoring checkpoint %s: unknown format", path)
        return None
    if state["fingerprint"] != fingerprint:
        log.warning("ignoring checkpoint %s: it was made with other settings or another session", path)
        return None
    return state


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside the block (0 = leave torch's choice)."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
