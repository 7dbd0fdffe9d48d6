"""Offline identity refinement of a recorded session (idtracker.ai v6's contrastive protocol).

Stages, each a function call (Torrents et al. 2025, Appendix 2):

1. fragments, coexistence and global fragments from the session's blob rows (``dataset``);
2. contrastive training of the embedding network, stopped by the silhouette score (``train``);
3. every identification image embedded; K-means with K = N, initialised from the global fragment
   whose shortest fragment is longest, else from the live identities (``cluster``);
4. image identity probabilities (inverse 7th power of the distance to each centre), one identity
   per fragment, coexisting fragments never sharing one (``assign``);
5. trajectories with crossing gaps filled from the identities before and after
   (``toxrt.io.trajectory_files.assemble``), written like the live ones; the live result is kept
   as ``trajectories_live.npy``.

Usage::

    from toxrt.offline.refine import RefineOptions, refine_session
    summary = refine_session(Path("out/session_x"), RefineOptions(network="small"))
    print("\\n".join(summary.summary_lines()))
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import ConfigError, SessionError
from . import assign, cluster
from .dataset import (FragmentTable, ImageLoader, SessionLike, build_fragment_table, check_session,
                      global_fragments, live_identities_from_trajectories, trainable)

log = logging.getLogger(__name__)

OFFLINE_DIR = "offline"
LOW_CONNECTIVITY = 0.25  # paper: below 0.25 (N - 1) coexisting fragments per fragment, expect errors
# Below this silhouette the clusters overlap: on zebrafish14 the small network ended at 0.44 and made
# the identities worse than live (75 -> 71 % solo), resnet18 reached 0.53 and 91 % (docs/offline.md)
LOW_SILHOUETTE = 0.5


@dataclass(frozen=True)
class RefineOptions:
    """Settings of the offline refinement; the defaults follow the paper, tuned for CPU speed."""

    method: str = "accumulation"
    """``accumulation``: the appearance model learned by accumulation (``toxrt.accumulation``, no
    torch, seconds on a CPU; its settings are the session's ``[appearance]`` table); or
    ``contrastive``: idtracker.ai v6's contrastive network + K-means, for a GPU, a long time budget,
    or a video without any frame that shows every animal apart."""
    device: str = "auto"
    """``auto`` (cuda when available, else cpu), ``cpu`` or ``cuda``."""
    image_size: int = 32
    """Side in pixels the identification images are resized to (32 trains ~2x faster than 40)."""
    network: str = "auto"
    """``resnet18`` (the paper's, 11.17 M parameters), ``small`` (a 0.1 M CNN, ~4x faster per batch on a
    CPU) or ``auto``: small on a CPU, resnet18 on a GPU."""
    batch_pairs: int = 0
    """Positive pairs per batch, as many negative pairs; 0 = auto: 100 on a CPU (400 images: per image
    ~1.7x cheaper than the paper's 1600), 400 on a GPU (the paper's 400 + 400 = 1600 images)."""
    max_batches: int = 0
    """Hard limit on training batches (a resumed run continues up to this); 0 = auto: 3000 on a CPU,
    15000 on a GPU."""
    eval_every: int = 0
    """Batches between silhouette evaluations; 0 = auto: 25 on a CPU, max(100, 5 N) on a GPU (paper)."""
    patience: int = 0
    """Stop after this many evaluations without a better silhouette; 0 = auto: 4 on a CPU, 30 on a GPU."""
    target_patience: int = 2
    """... or after this many once the silhouette reached ``silhouette_target``."""
    silhouette_target: float = 0.91
    """Silhouette at which training may stop early (paper: 0.91 ~ < 1 % image error)."""
    min_improvement: float = -1.0
    """A silhouette counts as better only when it beats the best by more than this; -1 = auto: 0.01
    on a CPU (stops on a plateau), 0 on a GPU (paper)."""
    silhouette_images: int = 0
    """Images clustered at each evaluation; 0 = auto: 250 N on a CPU, 1000 N on a GPU (paper)."""
    images_per_fragment: int = 0
    """Training samples at most this many evenly spaced images of each fragment; 0 = all."""
    alpha: float = 0.5
    """Weight of size-based against loss-based fragment-pair sampling."""
    learning_rate: float = 1e-3
    """Adam learning rate (paper: 1e-3)."""
    seed: int = 0
    """Seeds training, sampling and K-means: equal seeds and threads give equal results."""
    threads: int = 0
    """torch intra-op threads; 0 = one per core."""
    bf16: str = "auto"
    """bf16 inference for embedding: ``auto`` (when the CPU has AMX), ``on`` or ``off``."""
    checkpoint: str = ""
    """Checkpoint file; empty = ``<session>/offline/checkpoint.pt``. An existing one is resumed."""
    resume: bool = True
    """Resume from an existing checkpoint made with the same settings; False starts afresh."""
    max_crossing_gap: int = 0
    """Longest crossing (frames) filled from the identities around it; 0 = 2 s at the session fps."""
    min_batches: int = -1
    """Contrastive: batches before the silhouette may stop training or choose the kept model; -1 =
    auto: 500 on a CPU (on zebrafish14 the silhouette peaked at batch 25 while the identities kept
    improving until batch 300 and beyond), 0 on a GPU."""
    time_budget_s: float = -1.0
    """Contrastive: stop after this many seconds with the best model so far; 0 = none; -1 = auto:
    600 on a CPU, none on a GPU."""

    def resolved(self, device_type: str, number_of_animals: int) -> "RefineOptions":
        """These options with every ``auto`` / 0 default replaced by its value for ``device_type``."""
        gpu = device_type == "cuda"
        n = max(int(number_of_animals), 1)
        auto = {
            "network": ("auto", "resnet18" if gpu else "small"),
            "batch_pairs": (0, 400 if gpu else 100),
            "max_batches": (0, 15000 if gpu else 3000),
            "eval_every": (0, max(100, 5 * n) if gpu else 25),
            "patience": (0, 30 if gpu else 8),
            "min_batches": (-1, 0 if gpu else 500),
            "time_budget_s": (-1.0, 0.0 if gpu else 600.0),
            "min_improvement": (-1.0, 0.0 if gpu else 0.01),
            "silhouette_images": (0, (1000 if gpu else 250) * n),
        }
        changes = {key: value for key, (unset, value) in auto.items() if getattr(self, key) == unset}
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        checks = [
            ("method", self.method in ("accumulation", "contrastive"), "accumulation or contrastive"),
            ("device", self.device in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
            ("min_batches", self.min_batches >= -1, "-1 (auto) or 0 or more"),
            ("time_budget_s", self.time_budget_s == -1.0 or 0.0 <= self.time_budget_s <= 1e7,
             "-1 (auto), 0 (none) or seconds"),
            ("image_size", 8 <= self.image_size <= 256, "8..256"),
            ("network", self.network in ("auto", "resnet18", "small"), "auto, resnet18 or small"),
            ("batch_pairs", self.batch_pairs >= 0, "0 (auto) or more"),
            ("max_batches", self.max_batches >= 0, "0 (auto) or more"),
            ("eval_every", self.eval_every >= 0, "0 (auto) or more"),
            ("patience", self.patience >= 0, "0 (auto) or more"),
            ("min_improvement", self.min_improvement == -1.0 or 0.0 <= self.min_improvement < 1.0,
             "-1 (auto) or in [0, 1)"),
            ("target_patience", self.target_patience >= 1, "1 or more"),
            ("silhouette_target", -1.0 <= self.silhouette_target <= 1.0, "in [-1, 1]"),
            ("silhouette_images", self.silhouette_images >= 0, "0 or more"),
            ("images_per_fragment", self.images_per_fragment == 0 or self.images_per_fragment >= 2,
             "0 (all) or 2 or more"),
            ("alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1]"),
            ("learning_rate", self.learning_rate > 0, "positive"),
            ("threads", self.threads >= 0, "0 or more"),
            ("bf16", self.bf16 in ("auto", "on", "off"), "auto, on or off"),
            ("max_crossing_gap", self.max_crossing_gap >= 0, "0 or more"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"refine option {key}: {getattr(self, key)!r} is out of range ({why})")


@dataclass
class RefineResult:
    """What refinement decided, in memory (no files). Arrays are per row of ``table``."""

    table: FragmentTable
    number_of_animals: int
    identity: np.ndarray  # int64 (F,) refined identity 1..N, 0 = unidentified
    probability: np.ndarray  # float64 (F,) probability of that identity
    status: str  # "refined", or "kept_live" when there was too little to learn from
    silhouette: float
    connectivity: float
    batches: int = 0
    interrupted: bool = False
    resumed_from: int = 0
    train_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def fragment_identity(self) -> dict[int, tuple[int, float]]:
        """fragment id -> (identity, probability), identified fragments only."""
        keep = np.flatnonzero(self.identity > 0)
        return {int(self.table.ids[f]): (int(self.identity[f]), float(self.probability[f])) for f in keep}

    def estimated_accuracy(self) -> float:
        """Expected share of the identified images with the right identity (image-weighted mean
        probability; unidentified fragments are extra blobs, see ``SessionIdentities``)."""
        n = self.table.n_images * (self.identity > 0)
        return float((n * self.probability).sum() / n.sum()) if n.sum() else float("nan")

    def fraction_identified(self) -> float:
        """Fraction of individual images whose fragment has an identity."""
        total = self.table.n_images.sum()
        return float(self.table.n_images[self.identity > 0].sum() / total) if total else 0.0

    def changes(self) -> tuple[int, int]:
        """(fragments, images) whose identity differs from the live one."""
        changed = self.identity != self.table.live_identity
        return int(changed.sum()), int(self.table.n_images[changed].sum())


@dataclass
class RefineSummary:
    """The refinement's account, as printed by ``toxrt refine`` and stored as JSON."""

    session_dir: str
    status: str
    number_of_animals: int
    fragments: int
    images: int
    silhouette: float
    estimated_accuracy: float
    fraction_identified: float
    fragment_connectivity: float
    fragments_changed: int
    images_changed: int
    batches: int
    resumed_from: int
    interrupted: bool
    seconds: float
    outputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary_lines(self) -> list[str]:
        lines = [
            f"session:      {self.session_dir}",
            f"result:       {self.status} ({self.number_of_animals} animals, {self.fragments} fragments, "
            f"{self.images} images)",
            (f"training:     {self.batches} batches in {self.seconds:.0f} s" if self.batches else
             f"time:         {self.seconds:.1f} s")
            + (f" (resumed at {self.resumed_from})" if self.resumed_from else "")
            + (" (interrupted: best model so far)" if self.interrupted else ""),
            f"quality:      silhouette {self.silhouette:.3f}, estimated accuracy {self.estimated_accuracy:.4f}, "
            f"identified {100 * self.fraction_identified:.1f}% of images",
            f"connectivity: {self.fragment_connectivity:.2f} coexisting fragments per fragment / (N - 1)",
            f"vs live:      {self.fragments_changed} fragments ({self.images_changed} images) changed identity",
        ]
        lines += [f"WARNING:      {w}" for w in self.warnings]
        lines += [f"written:      {p}" for p in self.outputs]
        return lines


def refine(session: SessionLike, options: RefineOptions, where: str = "session",
           checkpoint: Path | None = None, progress: bool = True,
           live_trajectories: np.ndarray | None = None,
           live_fragment_identities: dict[int, tuple[int, float]] | None = None) -> RefineResult:
    """Refine the identities of a loaded session (duck-typed, see ``dataset``); writes only the checkpoint.

    The live identity of each fragment (K-means start, numbering, changes counted) is the one the end
    of the session decided (``live_fragment_identities``, from ``fragment_identities.npz``); for
    older sessions the one it has in ``live_trajectories`` float (T, N, 2); else the recorded per-row
    decision.
    """
    n = check_session(session, where)
    table = build_fragment_table(session)
    if live_fragment_identities and len(table):  # what the end of the session decided (session_end.py)
        final = np.array([live_fragment_identities.get(int(f), (0, 0.0))[0] for f in table.ids], np.int32)
        table = dataclasses.replace(table, live_identity=np.where(final > 0, final, table.live_identity)
                                    .astype(np.int32))
    elif live_trajectories is not None and len(table):
        final = live_identities_from_trajectories(table, session.blobs, live_trajectories)
        table = dataclasses.replace(table, live_identity=np.where(final > 0, final, table.live_identity)
                                    .astype(np.int32))
    if len(table) == 0:
        raise SessionError(f"{where}: no individual fragments with identification images")
    connectivity = table.connectivity(n)
    warnings: list[str] = []
    if n >= 2 and connectivity < LOW_CONNECTIVITY:  # one animal has no other to be confused with
        warnings.append(f"fragment connectivity {connectivity:.2f} < {LOW_CONNECTIVITY}: too few animals are "
                        "seen together; expect identification errors")
    live_probability = session.blobs["probability"][table.rows[table.offsets[1:] - 1]].astype(np.float64) \
        if "probability" in (session.blobs.dtype.names or ()) else np.ones(len(table))
    keep_live = RefineResult(table, n, table.live_identity.astype(np.int64), live_probability, "kept_live",
                             float("nan"), connectivity, warnings=warnings)
    if n < 2:  # one animal: nobody to tell apart
        return keep_live
    if options.method == "accumulation":
        return _refine_by_accumulation(session, table, n, warnings)
    # torch is loaded here, not at import: ``import toxrt.offline.refine`` stays light
    from .train import TrainSettings, cpu_has_amx, embed, resolve_device, torch_threads, train_embedding

    trainable_pairs = trainable(table)[table.pairs].all(axis=1).sum() if len(table.pairs) else 0
    if n < 2 or trainable_pairs == 0 or trainable(table).sum() < n:
        warnings.append(f"too few coexisting fragments to learn from ({int(trainable_pairs)} pairs of fragments "
                        f"with >= 4 images); live identities kept")
        for w in warnings:
            log.warning(w)
        return keep_live

    device = resolve_device(options.device)
    options = options.resolved(device.type, n)
    log.info("refining on %s: network %s, %d px, %d pairs per batch, silhouette every %d batches",
             device, options.network, options.image_size, options.batch_pairs, options.eval_every)
    bf16 = options.bf16 == "on" or (options.bf16 == "auto" and device.type == "cpu" and cpu_has_amx())
    loader = ImageLoader(session, options.image_size)
    settings = TrainSettings(**{f.name: getattr(options, f.name) for f in dataclasses.fields(TrainSettings)})
    with torch_threads(options.threads or (os.cpu_count() or 1)):
        trained = train_embedding(table, loader, n, settings, device, checkpoint, progress, bf16)
        log.info("embedding all %d individual images", table.rows.shape[0])
        z = embed(trained.model, loader, table.rows, device, bf16=bf16)
    if not np.isfinite(z).all():
        warnings.append("the network produced non-finite embeddings; live identities kept")
        log.warning(warnings[-1])
        return keep_live

    sets = global_fragments(table, session.blobs, n)
    frag_of_image = table.fragment_of_image()
    init = cluster.group_centers(z, frag_of_image_to_group(frag_of_image, sets[0]), n) if len(sets) else None
    if init is None:
        init = cluster.group_centers(z, table.live_identity[frag_of_image], n)
    centers, labels = cluster.kmeans(z, n, init, options.seed)
    # keep the live numbering: cluster j -> the live identity most of its images carry
    mapping = assign.align_clusters(labels, table.live_identity[frag_of_image], n)
    order = np.argsort(mapping)  # column i of the reordered probabilities is identity i + 1
    p1 = assign.fragment_probabilities_chunked(z, centers, table.n_images, order)
    ptr, adj = table.neighbours()
    identity, probability = assign.assign_fragments(p1, table.n_images, ptr, adj, sets)
    conflicts = assign.shares_identity_with_coexisting(identity, table.pairs)
    if conflicts:  # cannot happen by construction; checked because clients rely on it
        raise RuntimeError(f"{conflicts} coexisting fragment pairs share an identity")
    sil = cluster.silhouette(z, labels, max_samples=10000, seed=options.seed)
    if sil < LOW_SILHOUETTE:
        hint = " (try network=resnet18)" if options.network == "small" else ""
        warnings.append(f"silhouette {sil:.2f} < {LOW_SILHOUETTE}: the animals' images are poorly separated; "
                        f"the refined identities may be worse than the live ones{hint}")
    if trained.interrupted:
        warnings.append("training was interrupted; identities come from the best model so far")
    for w in warnings:
        log.warning(w)
    return RefineResult(table, n, identity, probability, "refined", sil, connectivity, trained.batches,
                        trained.interrupted, trained.resumed_from, trained.seconds, warnings)


def _refine_by_accumulation(session: SessionLike, table: FragmentTable, n: int, warnings: list[str]) -> RefineResult:
    """The appearance model by accumulation, with the session's own ``[appearance]`` settings."""
    from ..config import AppearanceConfig, build_config
    from ..session_identities import identify_session

    try:
        cfg = build_config(dict(getattr(session, "parameters", {}) or {})).appearance
    except ConfigError as exc:
        log.warning("the session's parameters.toml is not usable here (%s); default [appearance] settings", exc)
        cfg = AppearanceConfig()
    decided = identify_session(session, n, cfg, table.live_identity)
    result = decided.result
    # same fragments in the same order (build_fragment_table); keep the live identities given to refine
    return RefineResult(dataclasses.replace(decided.table, live_identity=table.live_identity), n, result.identity, result.probability, "refined", float("nan"),
                        table.connectivity(n), train_seconds=decided.seconds,
                        warnings=[w for w in warnings if not w.startswith("fragment connectivity")] + result.warnings)


def frag_of_image_to_group(frag_of_image: np.ndarray, members: np.ndarray) -> np.ndarray:
    """int64 (R,): 1..N for images of the k-th fragment of a global fragment, 0 elsewhere."""
    group = np.zeros(frag_of_image.shape[0], np.int64)
    lookup = np.zeros(int(frag_of_image.max(initial=-1)) + 2, np.int64)
    lookup[members] = np.arange(1, members.shape[0] + 1)
    group[:] = lookup[frag_of_image]
    return group


def refine_session(session_dir: Path, options: RefineOptions, progress: bool = True) -> RefineSummary:
    """Refine a recorded session folder and write the refined trajectories next to the live ones.

    Writes ``trajectories/trajectories.npy`` (+ csv/h5 as the session's parameters ask) with the
    quality measures added to the dict, keeps the live file as ``trajectories_live.npy``, and
    ``offline/refine_summary.json``, ``offline/fragment_identities.npz`` and the checkpoint (which
    holds the best model).
    Raises SessionError (one line) for a folder that is not a readable session with images.
    """
    from ..io.trajectory_files import assemble, trajectories_dict, write_trajectories
    from ..session_end import load_fragment_identities
    from ..io.session_reader import load_session

    t0 = time.monotonic()
    folder = Path(session_dir)
    session = load_session(folder)
    checkpoint = Path(options.checkpoint) if options.checkpoint else folder / OFFLINE_DIR / "checkpoint.pt"
    if not options.resume and checkpoint.exists():
        checkpoint.unlink()
    decided = load_fragment_identities(folder)
    result = refine(session, options, str(folder), checkpoint, progress,
                    None if decided else _live_trajectories(folder), decided)

    n = result.number_of_animals
    fps = float(session.meta.get("frames_per_second", session.meta.get("fps", 25.0)) or 25.0)
    gap = options.max_crossing_gap or max(1, int(round(2 * fps)))
    out = assemble(session.blobs, result.fragment_identity(), int(session.n_frames), n, max_crossing_gap=gap)
    fragments_changed, images_changed = result.changes()
    summary = RefineSummary(
        session_dir=str(folder), status=result.status, number_of_animals=n, fragments=len(result.table),
        images=int(result.table.rows.shape[0]), silhouette=result.silhouette,
        estimated_accuracy=result.estimated_accuracy(), fraction_identified=result.fraction_identified(),
        fragment_connectivity=result.connectivity, fragments_changed=fragments_changed,
        images_changed=images_changed, batches=result.batches, resumed_from=result.resumed_from,
        interrupted=result.interrupted, seconds=time.monotonic() - t0, warnings=list(result.warnings))

    out_dir = folder / "trajectories"
    _keep_live(out_dir)
    meta = dict(session.meta)
    meta.update(body_length=session.meta.get("body_length_px"), version=__version__, source="toxrt-refined")
    formats = list(getattr(session, "parameters", {}).get("trajectories_formats", ["npy", "csv"]))
    quality = {"silhouette_score": summary.silhouette, "estimated_accuracy": summary.estimated_accuracy,
               "fragment_connectivity": summary.fragment_connectivity}
    written = write_trajectories(out_dir, out.trajectories, out.id_probabilities, out.status, meta, formats,
                                 areas=out.areas, quality=quality)
    # the npy dict also carries toxrt's own refinement keys
    data = trajectories_dict(out.trajectories, out.id_probabilities, out.status, meta, out.areas, quality)
    data.update(fraction_images_identified=summary.fraction_identified, refine_status=summary.status)
    _save_npy(out_dir / "trajectories.npy", data)
    summary.outputs = [str(p) for p in written]
    _store(folder, summary, result)
    return summary


def _live_trajectories(folder: Path) -> np.ndarray | None:
    """float (T, N, 2) of the live output (kept or not yet renamed), None when there is none.

    Read from the pickle-free ``.npz`` twin of the idtracker.ai-style npy: never ``allow_pickle``,
    so a crafted file in a shared session folder cannot run code here.
    """
    from ..io.trajectory_files import read_plain_npz

    out = folder / "trajectories"
    for name in ("trajectories_live.npz", "trajectories.npz"):
        path = out / name
        if not path.exists():
            continue
        try:
            data = read_plain_npz(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("%s: unreadable live trajectories (%s); using the recorded live identities", path, exc)
            return None
        if str(data.get("source", "")) != "toxrt-refined" and "trajectories" in data:
            trajectories = data["trajectories"]
            if trajectories.ndim == 3 and trajectories.shape[2] == 2 and trajectories.dtype.kind == "f":
                return trajectories.astype(np.float64)
            log.warning("%s: trajectories of shape %s ignored", path, trajectories.shape)
    if (out / "trajectories.npy").exists() or (out / "trajectories_live.npy").exists():
        log.warning("%s: no trajectories.npz next to the npy (an older session); the npy is not read "
                    "(it would need unpickling); using the recorded live identities", out)
    return None


def _keep_live(out_dir: Path) -> None:
    """Rename the live trajectories to ``trajectories_live*`` once (a second refine keeps them)."""
    live = out_dir / "trajectories.npy"
    if live.exists() and not (out_dir / "trajectories_live.npy").exists():
        os.replace(live, out_dir / "trajectories_live.npy")
        for suffix in ("_csv", ".h5", ".npz"):
            old = out_dir / f"trajectories{suffix}"
            if old.exists():
                os.replace(old, out_dir / f"trajectories_live{suffix}")
    elif not live.exists() and not (out_dir / "trajectories_live.npy").exists():
        log.warning("%s: no live trajectories to keep", out_dir)


def _save_npy(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, data, allow_pickle=True)
    os.replace(tmp, path)


def _store(folder: Path, summary: RefineSummary, result: RefineResult) -> None:
    """offline/refine_summary.json (atomically) and offline/fragment_identities.npz."""
    out = folder / OFFLINE_DIR
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "refine_summary.json.tmp"
    tmp.write_text(json.dumps(summary.as_dict(), indent=2, default=float))
    os.replace(tmp, out / "refine_summary.json")
    np.savez(out / "fragment_identities.npz", fragment=result.table.ids, identity=result.identity,
             probability=result.probability, live_identity=result.table.live_identity)


__all__ = ["RefineOptions", "RefineResult", "RefineSummary", "refine", "refine_session"]
