"""The appearance model learned during a live session, in a background thread.

The frame loop hands each frame's individual blobs to :meth:`LiveAppearance.observe` (fragment
ids, identity features, the live identities) and reads the latest model with
:meth:`LiveAppearance.snapshot`; it never waits for the learner. The learner sees only frames that
were already tracked, so it never looks ahead.

What the learner does with them (``accumulation.py`` explains the rules; this is their online form):

1. It keeps the recent fragments with a spread sample of their images (at most
   ``images_per_fragment`` each), and the frames where all N animals are apart (global fragments).
2. Once a global fragment has ``min_images`` images in every fragment, it seeds the model: each of
   its fragments keeps the identity the live stage gave it, so the model speaks the published
   numbering.
3. Every ``live_retrain_interval_s`` of video it trains the model on the accepted images, scores
   the other recent fragments, accepts those that pass the accumulation's checks (never an
   identity that a coexisting accepted fragment holds), trains again and publishes the model.
   A held-out fit (2 folds over the accepted fragments) gives the temperature that turns summed
   image log-probabilities into honest fragment probabilities.

Memory is bounded: ``live_images_per_identity`` training images per identity (a ring: the oldest
go first), and fragments that ended more than ``FORGET_AFTER_RETRAINS`` retrain intervals ago are
forgotten. :class:`LiveAppearance` runs the learner in a child process, or with
``synchronous=True`` inside ``observe`` (reproducible: ``[appearance] live_inline``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import queue
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from .accumulation import certainty, fit_temperature, neutral_unseen
from .appearance import AppearanceModel, FeatureShape, ModelSnapshot
from .config import AppearanceConfig
from .fragments import overlapping

log = logging.getLogger(__name__)

FORGET_AFTER_RETRAINS = 5  # an ended, unaccepted fragment stays a candidate this many retrains
# Observations queued for the learner (beyond, new ones are dropped and counted): at most 2,000
# frames and 64 MB of features, at least 50 frames (2 s at 25 fps) whatever the animals.
MAX_PENDING_FRAMES = 2000
MIN_PENDING_FRAMES = 50
MAX_PENDING_BYTES = 64 * 2**20
READY = "ready"  # the learner process's first message
CLOSE_TIMEOUT_S = 5.0  # the longest close() waits for the learner's last word, then for it to exit
LIVENESS_CHECK_FRAMES = 100  # frames between checks that the learner process is still alive
ROUNDS_PER_RETRAIN = 3  # accumulation rounds per retrain (each a fit); the rest waits for the next
MIN_RETRAIN_FRAMES = 5  # frames between the first retrains after the seed (then doubling)
# With images_per_fragment = 0 ("all"), the learner still keeps a bounded spread sample of each
# fragment: one animal alone for a whole session is a single fragment of every frame.
LIVE_IMAGES_PER_FRAGMENT_LIMIT = 1024
SEED_PARTIAL_AFTER_RETRAINS = 2  # without a global fragment by then, the largest group seeds


@dataclass
class Observation:
    """One tracked frame as the learner sees it (plain arrays, owned by the learner once given).

    fragment int64 (k,) and features float32 (k, d) of the frame's individual blobs; identity
    int32 (k,) their live identities; all_apart: the frame shows N individual blobs and no crossing.
    """

    frame: int
    fragment: np.ndarray
    features: np.ndarray
    identity: np.ndarray
    all_apart: bool


@dataclass
class _Fragment:
    start: int
    end: int
    seen: int = 0
    images: list = field(default_factory=list)  # feature rows, every ``stride``-th image
    stride: int = 1
    live_identity: int = 0
    label: int = 0  # accepted identity, 0 while a candidate


@dataclass
class LearnerStats:
    trainings: int = 0
    dropped_frames: int = 0  # observations dropped because the learner was too far behind
    accepted_fragments: int = 0
    seeded_at_frame: int = -1


class LiveAppearance:
    """The frame loop's side: hands frames to an :class:`AppearanceLearner` and reads its models.

    By default the learner runs in a child process: a thread would share the interpreter lock with
    the frame loop, and its fits stalled frames by up to 100 ms (tools/bench_live.py at 720p). With
    ``synchronous=True`` it learns inside ``observe`` instead (reproducible; the loop then waits).
    """

    def __init__(self, cfg: AppearanceConfig, shape: FeatureShape, number_of_animals: int, fps: float,
                 synchronous: bool = False):
        self.stats = LearnerStats()
        self._snapshot: ModelSnapshot | None = None
        self._learner: AppearanceLearner | None = None
        self._process = None
        import multiprocessing

        if not synchronous and multiprocessing.current_process().daemon:
            # A daemonic process (a Dask worker of `toxrt batch`) may not start children: learn inline.
            log.info("live appearance learner: inside the frame loop (this process cannot start another)")
            synchronous = True
        if synchronous:
            self._learner = AppearanceLearner(cfg, shape, number_of_animals, fps)
            self.stats = self._learner.stats
            return
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        frame_bytes = max(1, number_of_animals) * shape.size * 4
        self.capacity = int(np.clip(MAX_PENDING_BYTES // frame_bytes, MIN_PENDING_FRAMES, MAX_PENDING_FRAMES))
        self._inbox = context.Queue(maxsize=self.capacity)
        self._outbox = context.Queue()
        self._stop = context.Event()
        self._process = context.Process(target=_serve, args=(cfg, shape, number_of_animals, fps, self._inbox,
                                                             self._outbox, self._stop),
                                        name="toxrt-appearance", daemon=True)
        self._ready = False
        _start_without_main(self._process)
        # Leaving must never wait for frames the learner did not take (it may have died).
        self._inbox.cancel_join_thread()
        self._observed = 0

    def observe(self, observation: Observation) -> None:
        """Hand over one frame (never waits: when the learner is far behind, the frame is dropped)."""
        if self._learner is not None:
            self._learner.ingest(observation)
            self._snapshot = self._learner.snapshot
            return
        if self._process is None:
            return
        self._observed += 1
        if self._observed % LIVENESS_CHECK_FRAMES == 0 and not self._process.is_alive():
            log.warning("the live appearance learner stopped (exit code %s); the live identities go on with the "
                        "last model it sent", self._process.exitcode)
            self._process = None
            return
        try:
            self._inbox.put_nowait(observation)
        except queue.Full:
            self.stats.dropped_frames += 1

    def wait_until_ready(self, timeout_s: float = 30.0) -> bool:
        """Wait (before the frame loop starts) until the learner process has started; False on timeout.

        Starting takes about a second of imports on an idle machine, more under load; a session
        waits here so that the first frames are learned from like the others.
        """
        if self._process is None or self._ready:
            return True
        deadline = time.monotonic() + timeout_s
        while not self._ready and time.monotonic() < deadline and self._process.is_alive():
            self._receive(block=True, timeout_s=min(0.5, max(0.0, deadline - time.monotonic())), until_ready=True)
        return self._ready

    def snapshot(self) -> ModelSnapshot | None:
        """The latest trained model, or None before the first global fragment."""
        if self._process is not None:
            self._receive(block=False)
        return self._snapshot

    def close(self) -> None:
        """Stop the learner at once (its last model is kept, frames still queued are not learned
        from); safe to call more than once. Never waits more than ``CLOSE_TIMEOUT_S``."""
        if self._process is None:
            return
        if self._process.is_alive():
            self._stop.set()
            try:
                self._inbox.put_nowait(None)
            except queue.Full:
                pass
            self._receive(block=True, timeout_s=CLOSE_TIMEOUT_S)
            self._process.join(timeout=CLOSE_TIMEOUT_S)
        if self._process.is_alive():  # starved (it runs only on idle cores) or stuck: no more waiting
            self._process.terminate()
            self._process.join(timeout=CLOSE_TIMEOUT_S)
        self._process = None
        for channel in (self._inbox, self._outbox):  # their pipes and semaphores go now, not at exit
            channel.close()

    def _receive(self, block: bool, timeout_s: float = 30.0, until_ready: bool = False) -> None:
        """Take what the learner sent: READY, then (model or None, stats) pairs (the last one wins),
        then None."""
        while True:
            try:
                item = self._outbox.get(block=block, timeout=timeout_s if block else None)
            except (queue.Empty, EOFError, OSError):
                return
            if item is None:  # the learner's last word
                return
            if item == READY:
                self._ready = True
                if until_ready:
                    return
                continue
            model, stats = item
            if model is not None:
                self._snapshot = model
            self.stats = dataclasses.replace(stats, dropped_frames=self.stats.dropped_frames)


def _start_without_main(process) -> None:
    """Start a spawned process without it importing the caller's main script.

    A spawned child normally imports ``__main__`` again (to find functions defined there); the
    learner needs nothing from it, and a user's script that tracks at module level, without an
    ``if __name__ == "__main__":`` guard, would otherwise start tracking again in the child.
    """
    main = sys.modules.get("__main__")
    hidden = {key: getattr(main, key) for key in ("__file__", "__spec__") if main is not None and hasattr(main, key)}
    try:
        if "__file__" in hidden:
            del main.__file__
        if "__spec__" in hidden:
            main.__spec__ = None  # multiprocessing reads it, so it must exist
        process.start()
    finally:
        for key, value in hidden.items():
            setattr(main, key, value)


def _serve(cfg, shape, number_of_animals, fps, inbox, outbox, stop) -> None:  # pragma: no cover - child process
    try:  # the learner runs only on a core that nothing else wants (Linux), else at low priority
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass
    import multiprocessing

    parent = multiprocessing.parent_process()
    with threadpool_limits(limits=1, user_api="blas"):
        learner = AppearanceLearner(cfg, shape, number_of_animals, fps)
        import sklearn.covariance  # noqa: F401 - the first fit's import, paid before READY
        outbox.put(READY)
        published = None
        while True:
            try:
                observation = inbox.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():  # the tracker was killed: leave too
                    return
                continue
            if observation is None or stop.is_set():
                break
            try:
                learner.ingest(observation)
            except Exception:  # the live stage goes on with what it has; the log says why
                log.exception("appearance learner: frame %d failed", observation.frame)
            if learner.snapshot is not published:
                published = learner.snapshot
                outbox.put((published, learner.stats))
        outbox.put((None, learner.stats))
        outbox.put(None)


class AppearanceLearner:
    """What the learner does (module docstring), one observed frame at a time."""

    def __init__(self, cfg: AppearanceConfig, shape: FeatureShape, number_of_animals: int, fps: float):
        self.cfg, self.shape, self.n = cfg, shape, int(number_of_animals)
        self.retrain_frames = max(1, int(round(cfg.live_retrain_interval_s * max(fps, 1e-3))))
        self.stats = LearnerStats()
        self.snapshot: ModelSnapshot | None = None
        self._model = AppearanceModel(shape, self.n)
        self._fragments: dict[int, _Fragment] = {}
        self._global_sets: dict[tuple[int, ...], int] = {}
        self._pool = np.zeros((self.n, cfg.live_images_per_identity, shape.size), np.float32)
        self._pool_count = np.zeros(self.n, np.int64)  # images ever added per identity (ring position)
        self._pool_fragment = np.full((self.n, cfg.live_images_per_identity), -1, np.int64)
        self._last_frame = -1
        self._next_training = 0
        self._largest_group: tuple[int, ...] = ()

    def ingest(self, obs: Observation) -> None:
        self._last_frame = obs.frame
        cap = self.cfg.images_per_fragment or LIVE_IMAGES_PER_FRAGMENT_LIMIT
        for k, f in enumerate(obs.fragment.tolist()):
            record = self._fragments.get(f)
            if record is None:
                record = self._fragments[f] = _Fragment(obs.frame, obs.frame)
            record.end = obs.frame
            if record.seen % record.stride == 0:
                record.images.append(obs.features[k])
                if len(record.images) > cap:  # keep an even spread: every other image, twice the stride
                    record.images = record.images[::2]
                    record.stride *= 2
            record.seen += 1
            if obs.identity[k] > 0:
                record.live_identity = int(obs.identity[k])
        if obs.all_apart and obs.fragment.size == self.n:
            self._global_sets.setdefault(tuple(sorted(obs.fragment.tolist())), obs.frame)
        elif obs.fragment.size >= 2 and (obs.fragment.size > len(self._largest_group) or any(
                f not in self._fragments for f in self._largest_group)):
            self._largest_group = tuple(sorted(obs.fragment.tolist()))  # seeds when no frame shows all
        # Until the first model, every frame that completes a global fragment may seed it.
        due = obs.frame >= self._next_training or (self.snapshot is None and obs.all_apart)
        if due:
            trained = self._train()
            if trained or self.snapshot is not None:
                # A young model learns fast: the interval doubles from the seed up to the configured one.
                young = max(MIN_RETRAIN_FRAMES, obs.frame - self.stats.seeded_at_frame)
                self._next_training = obs.frame + min(self.retrain_frames, young)
            self._forget(obs.frame)

    def _forget(self, frame: int) -> None:
        horizon = frame - FORGET_AFTER_RETRAINS * self.retrain_frames
        for f in [f for f, r in self._fragments.items() if r.end < horizon]:
            del self._fragments[f]
        for key in [k for k in self._global_sets if any(f not in self._fragments for f in k)]:
            del self._global_sets[key]

    def _seed(self) -> bool:
        best, best_len = None, -1
        for members in self._global_sets:
            shortest = min(len(self._fragments[f].images) for f in members)
            if shortest >= self.cfg.min_images and shortest > best_len:
                best, best_len = members, shortest
        if best is None and self._last_frame >= SEED_PARTIAL_AFTER_RETRAINS * self.retrain_frames:
            # A crowded arena may never show every animal apart: the most animals seen apart seed,
            # and the others are opened as they are met (``_open_identities``).
            group = [f for f in self._largest_group if f in self._fragments]
            if len(group) >= 2 and min(len(self._fragments[f].images) for f in group) >= self.cfg.min_images:
                best = tuple(group)
                log.info("no frame showed all %d animals apart: seeding from %d", self.n, len(best))
        if best is None:
            return False
        live = [self._fragments[f].live_identity for f in best]
        labels = [i if 0 < i <= self.n and live.count(i) == 1 else 0 for i in live]
        free = iter(sorted(set(range(1, self.n + 1)) - set(labels)))
        for f, label in zip(best, labels):
            self._accept(f, label or next(free))
        self.stats.seeded_at_frame = self._last_frame
        log.info("appearance model seeded at frame %d from %d fragments", self._last_frame, len(best))
        return True

    def _accept(self, f: int, label: int) -> None:
        record = self._fragments[f]
        record.label = label
        ring = self._pool.shape[1]
        images = np.asarray(record.images, np.float32)[-ring:]
        slots = (self._pool_count[label - 1] + np.arange(images.shape[0])) % ring
        self._pool[label - 1, slots] = images
        self._pool_fragment[label - 1, slots] = f
        self._pool_count[label - 1] += images.shape[0]
        self.stats.accepted_fragments += 1

    def _fit(self, exclude_parity: int | None = None) -> ModelSnapshot | None:
        """The model on the pool (without the fragments of one id parity when asked), None with < 2 identities."""
        ring = np.arange(self._pool.shape[1])
        use = ring[None, :] < np.minimum(self._pool_count, ring.size)[:, None]
        if exclude_parity is not None:
            use &= self._pool_fragment % 2 != exclude_parity
        labels = np.repeat(np.arange(1, self.n + 1), use.sum(axis=1))
        if np.unique(labels).size < 2:
            return None
        return self._model.fit(self._pool[use], labels)

    def _train(self) -> bool:
        """Seed if needed, accumulate, publish a new model; False when there is nothing to learn yet."""
        if self.n < 2 or (self.snapshot is None and not self._seed()):
            return False
        model = self._fit()
        for _ in range(ROUNDS_PER_RETRAIN):
            if model is None or self._accept_candidates(model) == 0:
                break
            model = self._fit()
        if model is None:
            return False
        accepted = {f: r.label for f, r in self._fragments.items() if r.label}
        self.snapshot = ModelSnapshot(model.identities, model.coef, model.intercept, self.n, self._temperature(),
                                      accepted)
        self.stats.trainings += 1
        return True

    def _temperature(self) -> float:
        """Train on the fragments with even ids, score those with odd ids: the temperature of their
        summed log-probabilities (``accumulation.fit_temperature``)."""
        model = self._fit(exclude_parity=1)
        if model is None:
            return 1.0
        held = np.arange(self._pool.shape[1])[None, :] < np.minimum(self._pool_count, self._pool.shape[1])[:, None]
        loglik, labels = [], []
        for i in model.identities - 1:  # an identity the model never saw cannot be scored
            fragments = self._pool_fragment[i][held[i]]
            for f in np.unique(fragments[fragments % 2 == 1]).tolist():
                rows = np.flatnonzero(held[i] & (self._pool_fragment[i] == f))
                loglik.append(model.log_proba(self._pool[i, rows]).sum(axis=0))
                labels.append(i)
        if not labels:
            return 1.0
        return fit_temperature(neutral_unseen(np.array(loglik, np.float64), model), np.array(labels))

    def _accept_candidates(self, model: ModelSnapshot) -> int:
        """One accumulation round over the recent fragments; returns how many were accepted."""
        open_ids = [f for f, r in self._fragments.items() if r.label == 0 and len(r.images) >= self.cfg.min_images]
        if not open_ids:
            return 0
        p1 = {f: np.exp(model.log_proba(np.asarray(self._fragments[f].images, np.float32))).mean(axis=0)
              for f in open_ids}
        accepted = 0
        for members in self._global_sets:
            todo = [f for f in members if self._fragments[f].label == 0]
            if not todo or any(f not in p1 for f in todo):
                continue
            p2 = np.stack([self._p2(p1[f], f) for f in todo])
            best = p2.argmax(axis=1)
            if len(set(best.tolist())) == len(todo) and (p2[np.arange(len(todo)), best] >= self.cfg.global_acceptance).all():
                for f, i in zip(todo, best.tolist()):
                    self._accept(f, i + 1)
                    accepted += 1
        ranked = sorted(((certainty(self._p2(p1[f], f), len(self._fragments[f].images)), f) for f in open_ids
                         if self._fragments[f].label == 0), reverse=True)
        for _, f in ranked:
            p2 = self._p2(p1[f], f)
            if p2.max() > 0 and certainty(p2, len(self._fragments[f].images)) >= self.cfg.certainty:
                self._accept(f, int(p2.argmax()) + 1)
                accepted += 1
        return accepted + self._open_identities(open_ids)

    def _open_identities(self, open_ids: list[int]) -> int:
        """A fragment that coexists with accepted fragments of every identity the model knows is
        another animal: it is accepted with its live identity, if the model does not know that one."""
        known = set(np.flatnonzero(self._pool_count > 0) + 1)
        if len(known) >= self.n:
            return 0
        start, end, label = self._labelled
        opened = 0
        for f in open_ids:
            me = self._fragments[f]
            beside = set(label[overlapping(start, end, me.start, me.end)].tolist())
            if me.label == 0 and known <= beside and 0 < me.live_identity <= self.n and me.live_identity not in known:
                self._accept(f, me.live_identity)
                known.add(me.live_identity)
                start, end, label = self._labelled
                opened += 1
        return opened

    def _p2(self, p1: np.ndarray, f: int) -> np.ndarray:
        """p1 without the identities of accepted fragments that coexist with f, renormalised."""
        me = self._fragments[f]
        start, end, label = self._labelled
        p = p1.copy()
        p[label[overlapping(start, end, me.start, me.end)] - 1] = 0.0
        total = p.sum()
        return p / total if total > 0 else p

    @property
    def _labelled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, end, label) int64 arrays of the accepted recent fragments."""
        rows = [(r.start, r.end, r.label) for r in self._fragments.values() if r.label]
        return tuple(np.array(column, np.int64).reshape(-1) for column in (zip(*rows) if rows else ((), (), ())))
