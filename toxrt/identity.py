"""Live ToxId identities: each new fragment is named from its first samples, without looking ahead.

After Rodríguez et al. (2018), "ToxId", Sci. Rep. 8:14774. New fragments are compared with a
bounded reference of each identity using the similarity of ``similarity.py``; see
:class:`LiveIdentities` for the decision rules. The end-of-session fusion is in ``fusion.py``.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import linear_sum_assignment

from .accumulation import neutral_unseen
from .appearance import MIN_PROBABILITY, ModelSnapshot
from .config import IdentityConfig
from .errors import ConfigError
from .similarity import HU_COUNT, group_similarity, level_weights, shape_code, share, standardise_histograms
from .types import IdentityEvent

logger = logging.getLogger(__name__)

# A new fragment whose model posterior already reaches this (among the identities no other alive
# fragment holds) is named before model_decision_samples images: 99%, the accumulation's bar for a
# global fragment.
EARLY_DECISION_PROBABILITY = 0.99


class LiveIdentities:
    """Identities 1..N for the fragments of a live session, decided without looking ahead.

    Each identity keeps a reference: a ring buffer of at most ``reference_samples`` samples
    (standardised histogram + Hu shape code), fed with every ``reference_stride``-th sample of the
    fragment holding it, as long as that fragment's probability is at least
    ``reference_min_probability``. Each alive individual fragment keeps a ring buffer of its latest
    ``fragment_samples`` samples. A fragment is decided once it has ``decision_samples`` samples and
    revised every ``revision_interval_frames`` frames; all fragments due in a frame are decided
    jointly (Hungarian, maximising Sim) among the identities no other alive fragment holds, so two
    alive fragments never share an identity. An identity whose reference is still empty scores
    ``unseen_identity_similarity``; at the start of a session every identity is empty, so the first
    fragments get identities 1, 2, ... in order of appearance (fragment ids are taken to increase
    with appearance). Extra fragments (more than N alive) stay at identity 0.

    Probability of identity c for a fragment: ``Sim_c / (Sim_c + sum of Sim to the other identities
    that have a reference)``, where an unreferenced c counts as ``unseen_identity_similarity``. It
    measures appearance evidence only, not the coexistence constraint: a fragment pushed onto an
    identity it does not resemble gets a low probability. It is updated at each decision.

    With ``number_of_animals == 0`` (unknown) there are no identities: every blob gets identity 0,
    and identities stay at fragment level (the fragment id).

    Once the session's appearance model exists, it decides instead (``_decide_by_model``). Each slot
    also remembers its fragment's latest ``fragment_samples`` identity features, so that a new
    model judges a fragment on those images rather than on the few seen since it arrived.

    Memory is bounded: references are (N, reference_samples, bins); the fragment pool has one slot
    per simultaneously alive individual fragment and slots are reused when fragments end.
    """

    def __init__(self, cfg: IdentityConfig, number_of_animals: int):
        if number_of_animals < 0:
            raise ConfigError(f"number_of_animals: {number_of_animals!r} is out of range (0 (unknown) or more)")
        self._cfg = cfg
        self._n = int(number_of_animals)
        self._table = level_weights(cfg)
        self._bins = 0  # known from the first sample
        self._slot_of: dict[int, int] = {}
        self._free_slots: list[int] = []
        self._capacity = 0
        self._model: ModelSnapshot | None = None
        self._model_number = 0  # 1, 2, ... for each new model; evidence of an older one is dropped
        self._features: np.ndarray | None = None  # (slots, fragment_samples, d) latest identity features

    # -- public ----------------------------------------------------------------------------------

    @property
    def number_of_animals(self) -> int:
        return self._n

    def alive_fragments(self) -> int:
        """Individual fragments currently tracked (each holds one pool slot)."""
        return len(self._slot_of)

    def buffer_sizes(self) -> dict[str, int]:
        """Element counts of the internal buffers (for checking that memory stays bounded)."""
        if not self._bins:
            return {"reference": 0, "fragment_pool": 0, "slots": 0}
        return {"reference": self._ref_z.size + self._ref_code.size,
                "fragment_pool": self._z.size + self._code.size
                + (0 if self._features is None else self._features.size),
                "slots": self._capacity}

    def reference_counts(self) -> np.ndarray:
        """Samples held in each identity's reference, int64 (N,)."""
        if not self._bins:
            return np.zeros(self._n, np.int64)
        return np.minimum(self._ref_count, self._cfg.reference_samples)

    def update(self, frame_index: int, fragment: np.ndarray, is_crossing: np.ndarray, histogram: np.ndarray,
               hu: np.ndarray, ended: np.ndarray, model: ModelSnapshot | None = None,
               model_features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[IdentityEvent]]:
        """Take one frame's blobs and return (identity int32 (n,), probability float32 (n,), events).

        fragment int64 (n,) fragment id per blob; is_crossing bool (n,); histogram float32 (n, bins)
        summing to 1; hu float64 (n, 7); ended int64 (k,) ids of fragments that ended this frame.
        model: the session's appearance model once learned (``live_appearance.py``); from then on it
        decides instead of the ToxId similarity. model_features float32 (individual blobs, d): the
        identity features of this frame's individual blobs, in blob order, given on every frame of a
        session that learns a model (also before it exists), so that each new model can score the
        recent images of the alive fragments.
        Identity is 1..N, or 0 for crossing blobs and undecided or extra fragments.
        """
        fragment = np.asarray(fragment, np.int64).reshape(-1)
        is_crossing = np.asarray(is_crossing, bool).reshape(-1)
        ended = np.asarray(ended, np.int64).reshape(-1)
        n = fragment.shape[0]
        if is_crossing.shape != (n,) or len(histogram) != n or np.shape(hu) != (n, HU_COUNT):
            raise ValueError(f"update: {n} fragments but is_crossing {is_crossing.shape}, "
                             f"histogram {np.shape(histogram)}, hu {np.shape(hu)}")
        identity = np.zeros(n, np.int32)
        probability = np.zeros(n, np.float32)
        if self._n == 0:
            return identity, probability, []

        # Ended fragments absent from this frame free their identity before new ones are decided;
        # one still present (its last blob) holds its identity until this frame is answered.
        still_here = np.isin(ended, fragment) if ended.size and n else np.zeros(ended.size, bool)
        self._close(ended[~still_here])

        events: list[IdentityEvent] = []
        individual = np.flatnonzero(~is_crossing)
        if individual.size:
            if not self._bins:
                self._allocate(np.shape(histogram)[1])
            ids = fragment[individual]
            slots = np.fromiter((self._slot(f) for f in ids.tolist()), np.intp, individual.size)
            self._append(slots, np.asarray(histogram)[individual], np.asarray(hu)[individual])
            if model_features is not None:
                features = np.asarray(model_features, np.float32)
                self._remember_features(slots, features)
                if model is not None:
                    self._add_evidence(slots, model, features)
            events = self._decide(frame_index)
            identity[individual] = self._identity[slots]
            probability[individual] = self._prob[slots]
        elif self._bins:
            events = self._decide(frame_index)
        self._close(ended[still_here])
        return identity, probability, events

    # -- fragment pool ---------------------------------------------------------------------------

    def _allocate(self, bins: int) -> None:
        cfg, n = self._cfg, self._n
        self._bins = bins
        self._ref_z = np.zeros((n, cfg.reference_samples, bins), np.float32)
        self._ref_code = np.zeros((n, cfg.reference_samples, HU_COUNT))
        self._ref_count = np.zeros(n, np.int64)  # samples ever pushed; the ring holds the latest
        self._grow(max(8, 2 * n))

    def _grow(self, capacity: int) -> None:
        """Resize the slot arrays to ``capacity`` (only ever grows, to the peak of alive fragments)."""
        old = self._capacity
        s, bins = self._cfg.fragment_samples, self._bins

        def resized(array: np.ndarray | None, shape: tuple[int, ...], dtype) -> np.ndarray:
            new = np.zeros((capacity,) + shape, dtype)
            if array is not None:
                new[:old] = array[:old]
            return new

        first = old == 0
        self._z = resized(None if first else self._z, (s, bins), np.float32)
        self._code = resized(None if first else self._code, (s, HU_COUNT), np.float64)
        self._frag_id = resized(None if first else self._frag_id, (), np.int64)
        self._count = resized(None if first else self._count, (), np.int64)
        self._identity = resized(None if first else self._identity, (), np.int32)
        self._prob = resized(None if first else self._prob, (), np.float32)
        self._next_revision = resized(None if first else self._next_revision, (), np.int64)
        self._sim_row = resized(None if first else self._sim_row, (self._n,), np.float64)  # last Sim per identity
        self._in_use = resized(None if first else self._in_use, (), bool)
        self._evidence = resized(None if first else self._evidence, (self._n,), np.float64)  # summed log p
        self._evidence_count = resized(None if first else self._evidence_count, (), np.int64)
        self._evidence_model = resized(None if first else self._evidence_model, (), np.int64)  # model number
        self._feature_count = resized(None if first else self._feature_count, (), np.int64)
        if self._features is not None:
            self._features = resized(self._features, self._features.shape[1:], np.float32)
        self._free_slots.extend(range(capacity - 1, old - 1, -1))
        self._capacity = capacity

    def _slot(self, fragment_id: int) -> int:
        slot = self._slot_of.get(fragment_id)
        if slot is None:
            if not self._free_slots:
                self._grow(2 * self._capacity)
            slot = self._free_slots.pop()
            self._slot_of[fragment_id] = slot
            self._frag_id[slot] = fragment_id
            self._count[slot] = 0
            self._identity[slot] = 0
            self._prob[slot] = 0.0
            self._sim_row[slot] = np.nan
            self._in_use[slot] = True
            # a reused slot must not carry its last fragment's images or evidence
            self._evidence[slot] = 0.0
            self._evidence_count[slot] = 0
            self._evidence_model[slot] = 0  # no model's evidence yet
            self._feature_count[slot] = 0
        return slot

    def _close(self, fragment_ids: np.ndarray) -> None:
        for fragment_id in fragment_ids.tolist():
            slot = self._slot_of.pop(fragment_id, None)  # crossing fragments never had a slot
            if slot is not None:
                self._in_use[slot] = False
                self._identity[slot] = 0
                self._free_slots.append(slot)

    def _append(self, slots: np.ndarray, histogram: np.ndarray, hu: np.ndarray) -> None:
        """Write one sample per slot into the fragments' rings and feed confident references."""
        z, code = standardise_histograms(histogram), shape_code(hu)
        position = self._count[slots] % self._cfg.fragment_samples
        self._z[slots, position] = z
        self._code[slots, position] = code
        self._count[slots] += 1
        owner = self._identity[slots]
        feed = ((owner > 0) & (self._prob[slots] >= self._cfg.reference_min_probability)
                & ((self._count[slots] - 1) % self._cfg.reference_stride == 0))
        if feed.any():
            # alive fragments hold distinct identities, so each identity gets at most one sample here
            target = owner[feed] - 1
            ring = self._ref_count[target] % self._cfg.reference_samples
            self._ref_z[target, ring] = z[feed]
            self._ref_code[target, ring] = code[feed]
            self._ref_count[target] += 1

    def _seed_reference(self, slot: int, identity: int) -> None:
        """A newly identified, confident fragment hands its buffered stride samples to the reference."""
        cfg = self._cfg
        count = int(self._count[slot])
        first = max(0, count - cfg.fragment_samples)
        picks = np.arange(first, count)
        picks = picks[picks % cfg.reference_stride == 0][-cfg.reference_samples:]
        if picks.size == 0:
            return
        target = identity - 1
        ring = (self._ref_count[target] + np.arange(picks.size)) % cfg.reference_samples
        self._ref_z[target, ring] = self._z[slot, picks % cfg.fragment_samples]
        self._ref_code[target, ring] = self._code[slot, picks % cfg.fragment_samples]
        self._ref_count[target] += picks.size

    # -- decisions -------------------------------------------------------------------------------

    def _remember_features(self, slots: np.ndarray, features: np.ndarray) -> None:
        """Keep each alive fragment's latest ``fragment_samples`` identity features (a ring)."""
        if self._features is None:
            self._features = np.zeros((self._capacity, self._cfg.fragment_samples, features.shape[1]), np.float32)
        self._features[slots, self._feature_count[slots] % self._cfg.fragment_samples] = features
        self._feature_count[slots] += 1

    def _log_proba(self, features: np.ndarray) -> np.ndarray:
        return neutral_unseen(self._model.log_proba(features), self._model)

    def _add_evidence(self, slots: np.ndarray, model: ModelSnapshot, features: np.ndarray) -> None:
        """Add this frame's image log-probabilities to the fragments whose evidence is this model's;
        the others are scored from their remembered images when next due (``_rescore``)."""
        if model is not self._model:
            self._model, self._model_number = model, self._model_number + 1
            logger.info("appearance model %d takes over the live identities", self._model_number)
        current = self._evidence_model[slots] == self._model_number
        if current.any():
            self._evidence[slots[current]] += self._log_proba(features[current])
            self._evidence_count[slots[current]] += 1

    def _rescore(self, slots: np.ndarray) -> None:
        """Evidence of the current model from each slot's remembered images (its latest
        ``fragment_samples``): a fragment is not judged on the few images seen since a model changed."""
        held = np.minimum(self._feature_count[slots], self._cfg.fragment_samples)
        remembered = np.arange(self._cfg.fragment_samples) < held[:, None]
        evidence = np.zeros((slots.size, self._n))
        np.add.at(evidence, np.repeat(np.arange(slots.size), held), self._log_proba(self._features[slots][remembered]))
        self._evidence[slots] = evidence
        self._evidence_count[slots] = held
        self._evidence_model[slots] = self._model_number

    def _decide(self, frame_index: int) -> list[IdentityEvent]:
        if self._model is not None:
            return self._decide_by_model(frame_index)
        cfg, cap = self._cfg, self._capacity
        in_use, identity = self._in_use[:cap], self._identity[:cap]
        held = in_use & (identity > 0)
        revise = held & (self._next_revision[:cap] <= frame_index)
        # Revisions of fragments decided together would fall due together and spike one frame's
        # cost; at most an even share of them is revised per frame, the longest-waiting first.
        budget = -(-int(held.sum()) // cfg.revision_interval_frames)
        if revise.sum() > budget:
            waiting = np.flatnonzero(revise)
            keep = waiting[np.lexsort((self._frag_id[waiting], self._next_revision[waiting]))[:budget]]
            revise[:] = False
            revise[keep] = True
        pending = in_use & (identity == 0) & (self._count[:cap] >= cfg.decision_samples)
        if not revise.any() and not (pending.any() and held.sum() < self._n):
            return []
        # The holders not due now take part with their last similarities, so that a revision can
        # swap identities with them (two animals that left a crossing with each other's names),
        # while only the due fragments pay for fresh similarities. A holder whose last row predates
        # a reference that exists now gets that reference's column only: in a crowded arena
        # identities open one by one, and recomputing every holder's whole row each time made the
        # slowest frames 3.5x the median with 200 animals.
        partners = np.flatnonzero(held & ~revise)
        fresh = np.flatnonzero(revise | pending)
        self._sim_row[fresh] = self._similarity_to_references(fresh, np.arange(self._n))
        new_columns = np.isnan(self._sim_row[partners]) & (self._ref_count > 0)
        if new_columns.any():
            rows, columns = partners[new_columns.any(axis=1)], np.flatnonzero(new_columns.any(axis=0))
            self._sim_row[np.ix_(rows, columns)] = self._similarity_to_references(rows, columns)
        slots = np.concatenate([fresh, partners])
        slots = slots[np.argsort(self._frag_id[slots], kind="stable")]  # order of appearance
        sim = self._sim_row[slots]
        new_identity = self._assign(slots, np.arange(1, self._n + 1), sim)
        return self._apply(frame_index, slots, new_identity, sim, refreshed=np.isin(slots, fresh))

    def _similarity_to_references(self, slots: np.ndarray, identities: np.ndarray) -> np.ndarray:
        """float64 (slots, identities): Sim of each slot's samples to each identity's reference
        (identity indices 0..N-1), nan where that reference is empty."""
        cfg = self._cfg
        sim = np.full((slots.size, identities.size), np.nan)
        column = np.flatnonzero(self._ref_count[identities] > 0)
        referenced = identities[column]
        if referenced.size == 0:
            return sim
        held = np.minimum(self._count[slots], cfg.fragment_samples)
        mask_a = np.arange(cfg.fragment_samples) < held[:, None]
        ref_held = np.minimum(self._ref_count[referenced], cfg.reference_samples)
        mask_b = np.arange(cfg.reference_samples) < ref_held[:, None]
        sim[:, column] = group_similarity(
            self._z[slots][mask_a], self._code[slots][mask_a], np.concatenate([[0], np.cumsum(held)]),
            self._ref_z[referenced][mask_b], self._ref_code[referenced][mask_b],
            np.concatenate([[0], np.cumsum(ref_held)]), cfg, self._table, small=True)
        return sim

    def _assign(self, slots: np.ndarray, available: np.ndarray, sim: np.ndarray) -> np.ndarray:
        """Joint Hungarian decision -> identity per slot (0 when left without one), int32 (D,).

        Columns are the available referenced identities plus one interchangeable column per
        available unreferenced identity, scored ``unseen_identity_similarity``; fragments that win
        such a column keep their own unreferenced identity or take the lowest free one in order
        of appearance.
        """
        result = np.zeros(slots.size, np.int32)
        if available.size == 0:
            return result
        referenced = ~np.isnan(sim[0, available - 1]) if slots.size else np.zeros(0, bool)
        known, unseen = available[referenced], available[~referenced]
        score = np.hstack([sim[:, known - 1],
                           np.full((slots.size, unseen.size), self._cfg.unseen_identity_similarity)])
        rows, cols = linear_sum_assignment(score, maximize=True)
        to_known = cols < known.size
        result[rows[to_known]] = known[cols[to_known]]
        newcomers = np.sort(rows[~to_known])
        current = self._identity[slots]
        unseen_left = list(unseen)
        keep = [r for r in newcomers if current[r] in unseen_left]
        for r in keep:
            result[r] = current[r]
            unseen_left.remove(current[r])
        for r, ident in zip((r for r in newcomers if r not in keep), unseen_left):
            result[r] = ident
        return result

    def _apply(self, frame_index: int, slots: np.ndarray, new_identity: np.ndarray,
               sim: np.ndarray, refreshed: np.ndarray) -> list[IdentityEvent]:
        cfg = self._cfg
        evidence = np.nan_to_num(sim, nan=0.0)
        total_known = evidence.sum(axis=1)
        chosen = new_identity > 0
        rows = np.arange(slots.size)
        own = np.where(chosen, sim[rows, np.maximum(new_identity, 1) - 1], 0.0)
        own_known = ~np.isnan(own)
        own = np.where(own_known, own, cfg.unseen_identity_similarity)
        total = np.where(own_known, total_known, total_known + own)
        probability = np.where(chosen, share(own, total), 0.0).astype(np.float32)

        self._next_revision[slots[refreshed]] = frame_index + cfg.revision_interval_frames
        return self._record(frame_index, slots, new_identity, probability, seed_references=True)

    def _record(self, frame_index: int, slots: np.ndarray, new_identity: np.ndarray, probability: np.ndarray,
                seed_references: bool) -> list[IdentityEvent]:
        """Store the decisions; an event for every fragment whose identity changed."""
        events = []
        old_identity = self._identity[slots].copy()
        self._identity[slots] = new_identity
        # an identity given is never impossible (the share or the posterior can underflow to 0)
        self._prob[slots] = np.where(new_identity > 0, np.maximum(probability, MIN_PROBABILITY), 0.0)
        for r in np.flatnonzero(old_identity != new_identity):
            slot, new = int(slots[r]), int(new_identity[r])
            events.append(IdentityEvent(frame_index, int(self._frag_id[slot]), int(old_identity[r]), new,
                                        float(probability[r])))
            if (seed_references and new and old_identity[r] == 0
                    and probability[r] >= self._cfg.reference_min_probability):
                self._seed_reference(slot, new)
        if events:
            logger.debug("frame %d: %d identity decisions", frame_index, len(events))
        return events

    def _decide_by_model(self, frame_index: int) -> list[IdentityEvent]:
        """Joint decision of the alive fragments from the appearance model's evidence.

        Each fragment's identity posterior is the softmax of its summed image log-probabilities
        divided by the model's temperature. Whenever a fragment is due (new with
        ``model_decision_samples`` images or an already decisive posterior, or due for
        revision), every alive fragment
        with evidence takes part in one Hungarian assignment that maximises the summed log
        posterior. After a model change, a fragment's evidence is rebuilt from its remembered images
        when it is next due; until then a holder keeps its identity.
        Probability: the posterior of the chosen identity among those that no other alive
        fragment holds.
        """
        cfg, cap = self._cfg, self._capacity
        in_use, identity = self._in_use[:cap], self._identity[:cap]
        due_now = in_use & ((identity == 0) | (self._next_revision[:cap] <= frame_index))
        stale = due_now & (self._evidence_model[:cap] != self._model_number) & (self._feature_count[:cap] > 0)
        if stale.any():
            self._rescore(np.flatnonzero(stale))
        current = self._evidence_model[:cap] == self._model_number
        evidence = in_use & current & (self._evidence_count[:cap] > 0)
        held = in_use & (identity > 0)
        # A new fragment is named after model_decision_samples images, or sooner when its evidence
        # is already decisive among the identities no other alive fragment holds.
        enough = evidence & (self._evidence_count[:cap] >= cfg.model_decision_samples)
        pending = np.flatnonzero(evidence & (identity == 0) & ~enough)
        free = np.setdiff1d(np.arange(self._n), identity[held] - 1)
        if pending.size and free.size:
            z = self._evidence[np.ix_(pending, free)] / self._model.temperature
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            enough[pending] = p.max(axis=1) / p.sum(axis=1) >= EARLY_DECISION_PROBABILITY
        due = (held & (self._next_revision[:cap] <= frame_index)) | (in_use & (identity == 0) & enough)
        if not (due & evidence).any():
            return []
        slots = np.flatnonzero(evidence & ((identity > 0) | enough))
        slots = slots[np.argsort(self._frag_id[slots], kind="stable")]
        kept = identity[held & ~evidence]
        z = self._evidence[slots] / self._model.temperature
        log_post = z - z.max(axis=1, keepdims=True)
        log_post -= np.log(np.exp(log_post).sum(axis=1, keepdims=True))
        new_identity = np.zeros(slots.size, np.int32)
        # Fragments the learner accepted keep its identity (it checked them against coexistence).
        accepted = np.array([self._model.accepted.get(int(f), 0) for f in self._frag_id[slots]], np.int32)
        accepted[np.isin(accepted, kept)] = 0
        _, first = np.unique(accepted, return_index=True)
        accepted[np.setdiff1d(np.arange(accepted.size), first)] = 0  # one holder per identity
        new_identity[:] = accepted
        open_rows = np.flatnonzero(accepted == 0)
        available = np.setdiff1d(np.arange(1, self._n + 1), np.concatenate([kept, accepted]))
        if available.size and open_rows.size:
            rows, cols = linear_sum_assignment(log_post[np.ix_(open_rows, available - 1)], maximize=True)
            new_identity[open_rows[rows]] = available[cols]
        # P2: the chosen identity against those no other alive fragment holds
        others = np.zeros((slots.size, self._n), bool)
        others[:, np.concatenate([kept, new_identity[new_identity > 0]]) - 1] = True
        rows = np.flatnonzero(new_identity > 0)
        others[rows, new_identity[rows] - 1] = False
        post = np.exp(np.where(others, -np.inf, log_post))
        total = post.sum(axis=1)
        probability = np.zeros(slots.size, np.float32)
        probability[rows] = post[rows, new_identity[rows] - 1] / np.maximum(total[rows], 1e-300)
        refreshed = due[slots]
        self._next_revision[slots[refreshed]] = frame_index + cfg.revision_interval_frames
        return self._record(frame_index, slots, new_identity, probability, seed_references=False)
