"""Offline identity refinement of a recorded session (idtracker.ai v6's contrastive protocol).

Stages, each a function call (Torrents et al. 2025, Appendix 2):

1. fragments, coexistence and global fragments from the session's blob rows (``dataset``);
2. contrastive training of the embedding network, stopped by the silhouette score (``train``);
3. every identification image embedded; K-means with K = N, initialised from the global fragment
   whose shortest fragment is longest, else from the live identities (``cluster``);
4. image identity probabilities (inverse 7th power of the distance to each centre), one identity
   per fragment, coexisting fragments never sharing one (``assign``);
5. trajectories with crossing gaps filled from the identities before and after
   (``toxrt.trajectories.assemble``), written like the live ones; the live result is kept
   as ``trajectories_live.npy``.

Usage (the settings are the ``[refine]`` table of the configuration, ``toxrt.config.RefineConfig``)::

    from toxrt.config import RefineConfig
    from toxrt.offline.refine import refine_session
    summary = refine_session(Path("out/session_x"), RefineConfig(method="contrastive", network="small"))
    print("\\n".join(summary.summary_lines()))
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import AppearanceConfig, RefineConfig, build_config, config_to_dict, merge_dotted
from ..errors import ConfigError, SessionError
from ..fragments import FragmentTable, build_fragment_table, global_fragments
from ..io.atomic import atomic_open, write_text_atomic
from ..io.layout import FRAGMENT_IDENTITIES, OFFLINE_DIR, TRAJECTORIES_DIR
from ..io.session_reader import load_session_config
from . import assign, cluster
from .dataset import ImageLoader, SessionLike, check_session, trainable

log = logging.getLogger(__name__)

LOW_CONNECTIVITY = 0.25  # paper: below 0.25 (N - 1) coexisting fragments per fragment, expect errors
# Below this silhouette the clusters overlap: on zebrafish14 the small network ended at 0.44 and made
# the identities worse than live (75 -> 71 % solo), resnet18 reached 0.53 and 91 % (docs/offline.md)
LOW_SILHOUETTE = 0.5


def resolved(cfg: RefineConfig, device_type: str, number_of_animals: int) -> RefineConfig:
    """``cfg`` with every ``auto`` / 0 / -1 value replaced by its value for ``device_type`` (docs/offline.md)."""
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
    changes = {key: value for key, (unset, value) in auto.items() if getattr(cfg, key) == unset}
    return dataclasses.replace(cfg, **changes)


def refine_config(session_dir: Path, overrides: dict[str, Any] | None = None) -> RefineConfig:
    """The ``[refine]`` table of a session's parameters.toml, with ``overrides`` (keys of the table, as
    ``toxrt refine SESSION --max_batches 100`` gives them) applied and checked. A parameters.toml that
    does not load (written by another version) is left aside with a warning: the defaults apply."""
    try:
        values = config_to_dict(load_session_config(session_dir))
    except ConfigError as exc:
        log.warning("%s: its parameters.toml is not usable here (%s); the default [refine] settings apply",
                    session_dir, exc)
        values = {}
    for key, value in (overrides or {}).items():
        merge_dotted(values, f"refine.{key}", value)
    return build_config(values).refine


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


def refine(session: SessionLike, cfg: RefineConfig, where: str = "session",
           checkpoint: Path | None = None, progress: bool = True,
           live_fragment_identities: dict[int, tuple[int, float]] | None = None) -> RefineResult:
    """Refine the identities of a loaded session (duck-typed, see ``dataset``); writes only the checkpoint.

    The live identity of each fragment (K-means start, numbering, changes counted) is the one the end
    of the session decided (``live_fragment_identities``, from ``fragment_identities.npz``); for a
    session without that file, the per-row decision recorded when the fragment ended.
    """
    n = check_session(session, where)
    table = build_fragment_table(session.blobs)
    if live_fragment_identities and len(table):  # what the end of the session decided (session_end.py)
        final = np.array([live_fragment_identities.get(int(f), (0, 0.0))[0] for f in table.ids], np.int32)
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
    if cfg.method == "accumulation":
        return _refine_by_accumulation(session, table, n, warnings)
    # torch is loaded here, not at import: ``import toxrt.offline.refine`` stays light
    from .train import cpu_has_amx, embed, resolve_device, torch_threads, train_embedding

    trainable_pairs = trainable(table)[table.pairs].all(axis=1).sum() if len(table.pairs) else 0
    if n < 2 or trainable_pairs == 0 or trainable(table).sum() < n:
        warnings.append(f"too few coexisting fragments to learn from ({int(trainable_pairs)} pairs of fragments "
                        f"with >= 4 images); live identities kept")
        for w in warnings:
            log.warning(w)
        return keep_live

    device = resolve_device(cfg.device)
    cfg = resolved(cfg, device.type, n)
    log.info("refining on %s: network %s, %d px, %d pairs per batch, silhouette every %d batches",
             device, cfg.network, cfg.image_size, cfg.batch_pairs, cfg.eval_every)
    bf16 = cfg.bf16 == "on" or (cfg.bf16 == "auto" and device.type == "cpu" and cpu_has_amx())
    loader = ImageLoader(session, cfg.image_size)
    with torch_threads(cfg.threads or (os.cpu_count() or 1)):
        trained = train_embedding(table, loader, n, cfg, device, checkpoint, progress, bf16)
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
    centers, labels = cluster.kmeans(z, n, init, cfg.seed)
    # keep the live numbering: cluster j -> the live identity most of its images carry
    mapping = assign.align_clusters(labels, table.live_identity[frag_of_image], n)
    order = np.argsort(mapping)  # column i of the reordered probabilities is identity i + 1
    p1 = assign.fragment_probabilities_chunked(z, centers, table.n_images, order)
    ptr, adj = table.neighbours()
    identity, probability = assign.assign_fragments(p1, table.n_images, ptr, adj, sets)
    conflicts = assign.shares_identity_with_coexisting(identity, table.pairs)
    if conflicts:  # cannot happen by construction; checked because clients rely on it
        raise RuntimeError(f"{conflicts} coexisting fragment pairs share an identity")
    sil = cluster.silhouette(z, labels, max_samples=10000, seed=cfg.seed)
    if sil < LOW_SILHOUETTE:
        hint = " (try network=resnet18)" if cfg.network == "small" else ""
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


def refine_session(session_dir: Path, cfg: RefineConfig | None = None, progress: bool = True) -> RefineSummary:
    """Refine a recorded session folder and write the refined trajectories next to the live ones.

    ``cfg`` defaults to the ``[refine]`` table of the session's parameters.toml (:func:`refine_config`).

    Writes ``trajectories/trajectories.npy`` (+ csv/h5 as the session's parameters ask) with the
    quality measures added to the dict, keeps the live file as ``trajectories_live.npy``, and
    ``offline/refine_summary.json``, ``offline/fragment_identities.npz`` and the checkpoint (which
    holds the best model).
    Raises SessionError (one line) for a folder that is not a readable session with images.
    """
    from ..io.session_reader import load_session
    from ..io.trajectory_files import trajectories_dict, write_npy, write_trajectories
    from ..session_end import load_fragment_identities
    from ..trajectories import assemble

    t0 = time.monotonic()
    folder = Path(session_dir)
    session = load_session(folder)
    cfg = refine_config(folder) if cfg is None else cfg
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else folder / OFFLINE_DIR / "checkpoint.pt"
    if not cfg.resume and checkpoint.exists():
        checkpoint.unlink()
    result = refine(session, cfg, str(folder), checkpoint, progress, load_fragment_identities(folder))

    n = result.number_of_animals
    fps = float(session.meta.get("frames_per_second", session.meta.get("fps", 25.0)) or 25.0)
    gap = cfg.max_crossing_gap or max(1, int(round(2 * fps)))
    out = assemble(session.blobs, result.fragment_identity(), int(session.n_frames), n, max_crossing_gap=gap)
    fragments_changed, images_changed = result.changes()
    summary = RefineSummary(
        session_dir=str(folder), status=result.status, number_of_animals=n, fragments=len(result.table),
        images=int(result.table.rows.shape[0]), silhouette=result.silhouette,
        estimated_accuracy=result.estimated_accuracy(), fraction_identified=result.fraction_identified(),
        fragment_connectivity=result.connectivity, fragments_changed=fragments_changed,
        images_changed=images_changed, batches=result.batches, resumed_from=result.resumed_from,
        interrupted=result.interrupted, seconds=time.monotonic() - t0, warnings=list(result.warnings))

    out_dir = folder / TRAJECTORIES_DIR
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
    write_npy(out_dir / "trajectories.npy", data)
    summary.outputs = [str(p) for p in written]
    _store(folder, summary, result)
    return summary


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


def _store(folder: Path, summary: RefineSummary, result: RefineResult) -> None:
    """offline/refine_summary.json and offline/fragment_identities.npz, each written atomically."""
    out = folder / OFFLINE_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "refine_summary.json", json.dumps(summary.as_dict(), indent=2, default=float))
    with atomic_open(out / FRAGMENT_IDENTITIES) as handle:
        np.savez(handle, fragment=result.table.ids, identity=result.identity, probability=result.probability,
                 live_identity=result.table.live_identity)


__all__ = ["RefineResult", "RefineSummary", "refine", "refine_config", "refine_session", "resolved"]
