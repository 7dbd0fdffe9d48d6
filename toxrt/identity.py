"""Live ToxId identities and the end-of-session ToxId fragment fusion.

After Rodríguez, Zhang, Klaminder, Andersson & Brodin (2018), "ToxId: an efficient algorithm to
solve occlusions when tracking multiple animals", Sci. Rep. 8:14774, sections "Fragment
similarity" and "Fragment assignment".

Similarity of two sample sets a (k samples) and b (m samples), each sample an intensity histogram
and seven Hu moments::

    R_ij   = Pearson(H_a,i , H_b,j)                       all k x m pairs, one matrix product
    A      = max_ij R_ij                                  similarity amplitude
    r_L    = |{R_ij : L/Ln <= R_ij < (L+1)/Ln}| / (k m)   rate of correlations in level L
    w_L    = Gauss((L + 1/2) / Ln | mu, sigma)            unnormalised, so w_L <= 1
    Sim    = max(A, 0) * sum_L w_L r_L                    in [0, 1]

Pairs whose shape differs too much (``ShapeDiff > max_shape_difference``, when that key is
positive) take no part in A nor in any r_L, but still count in ``k m``. ShapeDiff is the paper's
``sum_h |1/Hu_a^h - 1/Hu_b^h|`` taken, as OpenCV's ``matchShapes`` (CONTOURS_MATCH_I1) does, on
``m = sign(Hu) log10|Hu|``: on raw Hu moments the smallest invariants (~1e-10) would swamp the sum.

Live identities (:class:`LiveIdentities`) compare the samples of a new fragment with a bounded
reference of each identity; the end-of-session :func:`fuse_fragments` builds the paper's IdMatrix
over all fragments and assigns identities to whole fragments.
"""
from __future__ import annotations

import logging
from itertools import groupby

import numba
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from .config import IdentityConfig
from .errors import ConfigError
from .types import FRAGMENT_RECORD_DTYPE, IdentityEvent

logger = logging.getLogger(__name__)

HU_COUNT = 7
_MAX_PAIRS_PER_BLOCK = 1 << 22  # ~16 MB of float32 per temporary in the fusion's Sim matrix


# --- similarity -------------------------------------------------------------------------------

def standardise_histograms(histogram: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (float32 (n, bins)), so that a dot product is Pearson's r.

    A flat histogram has no variance; its row stays 0 and correlates 0 with everything.
    """
    z = np.asarray(histogram, np.float32).reshape(len(histogram), -1).copy()
    z -= z.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    np.divide(z, norm, out=z, where=norm > 0)
    return z


def shape_code(hu: np.ndarray) -> np.ndarray:
    """``1 / (sign(h) log10|h|)`` per Hu moment (float64 (n, 7)); ShapeDiff is the L1 distance of codes.

    Moments that are exactly 0 get code 0 (OpenCV skips them); ``|log10|h||`` is kept above 0.01 so
    that a moment near 1 does not blow the code up.
    """
    h = np.asarray(hu, np.float64).reshape(-1, HU_COUNT)
    code = np.zeros_like(h)
    nonzero = np.abs(h) > 1e-300
    m = np.log10(np.abs(h, where=nonzero, out=np.ones_like(h)))
    m = np.copysign(np.maximum(np.abs(m), 0.01), m) * np.sign(h)
    np.divide(1.0, m, out=code, where=nonzero)
    return code


def _level_table(cfg: IdentityConfig) -> np.ndarray:
    """Gaussian weight of each correlation level, prefixed with 0 for negative correlations."""
    levels = cfg.correlation_levels
    mids = (np.arange(levels) + 0.5) / levels
    weights = np.exp(-0.5 * ((mids - cfg.gauss_mu) / cfg.gauss_sigma) ** 2)
    return np.concatenate([[0.0], weights]).astype(np.float32)


def _pair_weights(corr: np.ndarray, table: np.ndarray) -> np.ndarray:
    """w_L of the level each correlation falls in (0 below 0; r = 1 belongs to the top level)."""
    levels = table.shape[0] - 1
    index = np.floor(corr * levels)
    np.clip(index, -1, levels - 1, out=index)
    index += 1
    return table[index.astype(np.int32)]


@numba.njit(cache=True, nogil=True)
def _reduce_pairs(corr, code_a, code_b, offsets_a, offsets_b, table, max_shape):  # pragma: no cover - compiled
    """Per group pair: sum of level weights and max correlation over the pairs passing the shape
    filter; one pass over the (Ta, Tb) correlations with no temporaries."""
    n_a, n_b = offsets_a.size - 1, offsets_b.size - 1
    levels = table.size - 1
    weight_sum = np.zeros((n_a, n_b))
    amplitude = np.full((n_a, n_b), -np.inf)
    for ga in range(n_a):
        for i in range(offsets_a[ga], offsets_a[ga + 1]):
            for gb in range(n_b):
                acc = 0.0
                best = amplitude[ga, gb]
                for j in range(offsets_b[gb], offsets_b[gb + 1]):
                    if max_shape > 0:
                        diff = 0.0
                        for h in range(code_a.shape[1]):
                            diff += abs(code_a[i, h] - code_b[j, h])
                        if diff > max_shape:
                            continue
                    r = corr[i, j]
                    if r > best:
                        best = r
                    if r >= 0:
                        level = int(r * levels)
                        acc += table[min(level, levels - 1) + 1]
                weight_sum[ga, gb] += acc
                amplitude[ga, gb] = best
    return weight_sum, amplitude


@numba.njit(cache=True, nogil=True, fastmath=True)
def _row_products(za, zb):  # pragma: no cover - compiled
    """za @ zb.T in one thread: the live loop's products are too small to pay for BLAS threads."""
    out = np.empty((za.shape[0], zb.shape[0]), np.float32)
    for i in range(za.shape[0]):
        for j in range(zb.shape[0]):
            acc = np.float32(0.0)
            for k in range(za.shape[1]):
                acc += za[i, k] * zb[j, k]
            out[i, j] = acc
    return out


def _similarity_batched(za: np.ndarray, ca: np.ndarray, offsets_a: np.ndarray,
                        zb: np.ndarray, cb: np.ndarray, offsets_b: np.ndarray,
                        cfg: IdentityConfig, table: np.ndarray, small: bool = False) -> np.ndarray:
    """Same as :func:`_similarity_flat`, with the pair reduction compiled (the hot loop of both the
    live decisions and the fusion). ``small`` computes the correlations without BLAS."""
    corr = _row_products(za, zb) if small else za @ zb.T
    weight_sum, amplitude = _reduce_pairs(corr, ca, cb, offsets_a.astype(np.int64), offsets_b.astype(np.int64),
                                          table.astype(np.float64), float(cfg.max_shape_difference))
    pairs = np.outer(np.diff(offsets_a), np.diff(offsets_b))
    return np.maximum(amplitude, 0.0) * weight_sum / pairs


def _similarity_flat(za: np.ndarray, ca: np.ndarray, offsets_a: np.ndarray,
                     zb: np.ndarray, cb: np.ndarray, offsets_b: np.ndarray,
                     cfg: IdentityConfig, table: np.ndarray) -> np.ndarray:
    """ToxId Sim between every group of a and every group of b -> float64 (groups_a, groups_b).

    za (Ta, bins) and zb (Tb, bins) are standardised histograms, ca/cb their shape codes; group g
    of a is rows ``offsets_a[g]:offsets_a[g+1]``. Every group must hold at least one sample.
    """
    corr = za @ zb.T
    weight = _pair_weights(corr, table)
    if cfg.max_shape_difference > 0:
        far = cdist(ca, cb, "cityblock") > cfg.max_shape_difference
        weight[far] = 0.0
        corr[far] = -np.inf
    starts_a, starts_b = offsets_a[:-1], offsets_b[:-1]
    weight_sum = np.add.reduceat(np.add.reduceat(weight, starts_b, axis=1, dtype=np.float64), starts_a, axis=0)
    amplitude = np.maximum.reduceat(np.maximum.reduceat(corr, starts_b, axis=1), starts_a, axis=0)
    pairs = np.outer(np.diff(offsets_a), np.diff(offsets_b))
    return np.maximum(amplitude, 0.0) * weight_sum / pairs


def _check_samples(name: str, hist: np.ndarray, hu: np.ndarray) -> None:
    if hist.ndim != 2 or hu.shape != (hist.shape[0], HU_COUNT):
        raise ValueError(f"{name}: expected histograms (k, bins) and hu (k, 7), got {hist.shape} and {hu.shape}")


def fragment_similarity(hist_a: np.ndarray, hu_a: np.ndarray, hist_b: np.ndarray, hu_b: np.ndarray,
                        cfg: IdentityConfig) -> float:
    """ToxId ``Sim`` (in [0, 1]) between two sample sets: histograms (k, bins) + Hu (k, 7) and (m, bins) + (m, 7).

    Returns 0 when either side is empty or no pair passes the shape filter.
    """
    hist_a, hist_b = np.asarray(hist_a), np.asarray(hist_b)
    hu_a, hu_b = np.asarray(hu_a), np.asarray(hu_b)
    _check_samples("a", hist_a, hu_a)
    _check_samples("b", hist_b, hu_b)
    if hist_a.shape[1] != hist_b.shape[1]:
        raise ValueError(f"histogram bins differ: {hist_a.shape[1]} vs {hist_b.shape[1]}")
    k, m = hist_a.shape[0], hist_b.shape[0]
    if k == 0 or m == 0:
        return 0.0
    sim = _similarity_flat(standardise_histograms(hist_a), shape_code(hu_a), np.array([0, k]),
                           standardise_histograms(hist_b), shape_code(hu_b), np.array([0, m]),
                           cfg, _level_table(cfg))
    return float(sim[0, 0])


def _share(chosen: np.ndarray, total: np.ndarray) -> np.ndarray:
    """chosen / total, 0 where total is 0: the identity probability used throughout."""
    out = np.zeros(np.shape(chosen), np.float64)
    np.divide(chosen, total, out=out, where=total > 0)
    return np.clip(out, 0.0, 1.0)


# --- live identities --------------------------------------------------------------------------

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

    Memory is bounded: references are (N, reference_samples, bins); the fragment pool has one slot
    per simultaneously alive individual fragment and slots are reused when fragments end.
    """

    def __init__(self, cfg: IdentityConfig, number_of_animals: int):
        if number_of_animals < 0:
            raise ConfigError(f"number_of_animals: {number_of_animals!r} is out of range (0 (unknown) or more)")
        self._cfg = cfg
        self._n = int(number_of_animals)
        self._table = _level_table(cfg)
        self._bins = 0  # known from the first sample
        self._slot_of: dict[int, int] = {}
        self._free_slots: list[int] = []
        self._capacity = 0

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
                "fragment_pool": self._z.size + self._code.size,
                "slots": self._capacity}

    def reference_counts(self) -> np.ndarray:
        """Samples held in each identity's reference, int64 (N,)."""
        if not self._bins:
            return np.zeros(self._n, np.int64)
        return np.minimum(self._ref_count, self._cfg.reference_samples)

    def update(self, frame_index: int, fragment: np.ndarray, is_crossing: np.ndarray, histogram: np.ndarray,
               hu: np.ndarray, ended: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[IdentityEvent]]:
        """Take one frame's blobs and return (identity int32 (n,), probability float32 (n,), events).

        fragment int64 (n,) fragment id per blob; is_crossing bool (n,); histogram float32 (n, bins)
        summing to 1; hu float64 (n, 7); ended int64 (k,) ids of fragments that ended this frame.
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

    def _decide(self, frame_index: int) -> list[IdentityEvent]:
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
        # a reference that exists now is refreshed as well.
        partners = np.flatnonzero(held & ~revise)
        stale = np.isnan(self._sim_row[partners][:, self._ref_count > 0]).any(axis=1)
        fresh = np.flatnonzero(revise | pending)
        fresh = np.concatenate([fresh, partners[stale]])
        self._sim_row[fresh] = self._similarity_to_references(fresh)  # nan where a reference is empty
        slots = np.concatenate([fresh, partners[~stale]])
        slots = slots[np.argsort(self._frag_id[slots], kind="stable")]  # order of appearance
        sim = self._sim_row[slots]
        new_identity = self._assign(slots, np.arange(1, self._n + 1), sim)
        return self._apply(frame_index, slots, new_identity, sim, refreshed=np.isin(slots, fresh))

    def _similarity_to_references(self, slots: np.ndarray) -> np.ndarray:
        cfg = self._cfg
        sim = np.full((slots.size, self._n), np.nan)
        referenced = np.flatnonzero(self._ref_count > 0)
        if referenced.size == 0:
            return sim
        held = np.minimum(self._count[slots], cfg.fragment_samples)
        mask_a = np.arange(cfg.fragment_samples) < held[:, None]
        ref_held = np.minimum(self._ref_count[referenced], cfg.reference_samples)
        mask_b = np.arange(cfg.reference_samples) < ref_held[:, None]
        sim[:, referenced] = _similarity_batched(
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
        probability = np.where(chosen, _share(own, total), 0.0).astype(np.float32)

        events = []
        old_identity = self._identity[slots].copy()
        self._identity[slots] = new_identity
        self._prob[slots] = probability
        self._next_revision[slots[refreshed]] = frame_index + cfg.revision_interval_frames
        for r in np.flatnonzero(old_identity != new_identity):
            slot, new = int(slots[r]), int(new_identity[r])
            events.append(IdentityEvent(frame_index, int(self._frag_id[slot]), int(old_identity[r]), new,
                                        float(probability[r])))
            if new and old_identity[r] == 0 and probability[r] >= cfg.reference_min_probability:
                self._seed_reference(slot, new)
        if events:
            logger.debug("frame %d: %d identity decisions", frame_index, len(events))
        return events


# --- end-of-session fusion --------------------------------------------------------------------

def _stack_samples(ids: np.ndarray, samples: dict[int, tuple[np.ndarray, np.ndarray]], cap: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most ``cap`` evenly spaced samples per fragment -> (z (T, bins), codes (T, 7), offsets (F+1,))."""
    hists, hus, counts = [], [], []
    for fragment_id in ids.tolist():
        hist, hu = samples[fragment_id]
        hist, hu = np.asarray(hist), np.asarray(hu)
        _check_samples(f"fragment {fragment_id}", hist, hu)
        k = hist.shape[0]
        if k > cap:
            pick = np.unique(np.linspace(0, k - 1, cap).round().astype(np.intp))
            hist, hu = hist[pick], hu[pick]
        hists.append(hist.astype(np.float32))
        hus.append(hu)
        counts.append(hist.shape[0])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)
    return standardise_histograms(np.concatenate(hists)), shape_code(np.concatenate(hus)), offsets


def _similarity_matrix(z: np.ndarray, code: np.ndarray, offsets: np.ndarray, cfg: IdentityConfig) -> np.ndarray:
    """Symmetric Sim between all fragments, float32 (F, F), computed in blocks of rows."""
    table = _level_table(cfg)
    n_frag, total = offsets.size - 1, offsets[-1]
    sim = np.zeros((n_frag, n_frag), np.float32)
    first = 0
    while first < n_frag:
        # only the upper triangle of blocks: Sim is symmetric
        row0, width = offsets[first], total - offsets[first]
        rows_fit = max(1, _MAX_PAIRS_PER_BLOCK // max(width, 1))
        last = max(first + 1, int(np.searchsorted(offsets, row0 + rows_fit, side="right")) - 1)
        last = min(last, n_frag)
        block = _similarity_batched(z[row0:offsets[last]], code[row0:offsets[last]], offsets[first:last + 1] - row0,
                                 z[row0:], code[row0:], offsets[first:] - row0, cfg, table)
        sim[first:last, first:] = block
        sim[first:, first:last] = block.T
        first = last
    return sim


def _row_correlation(matrix: np.ndarray) -> np.ndarray:
    """Pearson correlation between all rows of a (F, F) matrix, float32; constant rows correlate 0."""
    z = standardise_histograms(matrix)  # same centring and scaling, along rows
    return z @ z.T


def _complete_groups(start: np.ndarray, end: np.ndarray, candidates: np.ndarray, size: int) -> list[np.ndarray]:
    """Sets of exactly ``size`` candidate fragments alive together at some frame (sorted index arrays)."""
    events = sorted([(int(start[i]), 1, i) for i in candidates] + [(int(end[i]) + 1, -1, i) for i in candidates])
    alive: set[int] = set()
    groups: dict[tuple[int, ...], None] = {}
    for _, at_time in groupby(events, key=lambda e: e[0]):
        for _, change, i in at_time:
            if change > 0:
                alive.add(i)
            else:
                alive.discard(i)
        if len(alive) == size:
            groups[tuple(sorted(alive))] = None
    return [np.array(g, np.intp) for g in groups]


def _largest_group(start: np.ndarray, end: np.ndarray, candidates: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The largest set of candidate fragments alive together (ties: the longest shortest fragment)."""
    events = sorted([(int(start[i]), 1, i) for i in candidates] + [(int(end[i]) + 1, -1, i) for i in candidates])
    alive: set[int] = set()
    best: tuple[int, int] = (0, 0)
    group = np.zeros(0, np.intp)
    for _, at_time in groupby(events, key=lambda e: e[0]):
        for _, change, i in at_time:
            if change > 0:
                alive.add(i)
            else:
                alive.discard(i)
        if alive:
            key = (len(alive), int(min(length[i] for i in alive)))
            if key > best:
                best, group = key, np.array(sorted(alive), np.intp)
    return group


class _Fusion:
    """Identity models over fragments: each identity's affinity to a fragment is the sample-weighted
    mean IdMatrix row of the fragments it holds, and it is blocked from fragments coexisting with them."""

    def __init__(self, id_matrix: np.ndarray, coexist: np.ndarray, weight: np.ndarray, n_identities: int,
                 min_correlation: float):
        n_frag = id_matrix.shape[0]
        self.id_matrix, self.coexist, self.weight = id_matrix, coexist, weight
        self.min_correlation = min_correlation
        self.identity = np.zeros(n_frag, np.int32)
        self.sum = np.zeros((n_identities, n_frag))
        self.total = np.zeros(n_identities)
        self.blocked = np.zeros((n_identities, n_frag), bool)

    def assign(self, f: int, identity: int) -> None:
        i = identity - 1
        self.identity[f] = identity
        self.sum[i] += self.weight[f] * self.id_matrix[f]
        self.total[i] += self.weight[f]
        self.blocked[i] |= self.coexist[f]

    def scores(self, row: int | None = None) -> np.ndarray:
        """Affinity (identities, F), or (F,) for one identity. An identity without fragments scores
        ``min_correlation`` (it may be opened); blocked pairs score -inf."""
        pick = slice(None) if row is None else slice(row, row + 1)
        total = self.total[pick, None]
        out = np.full(self.sum[pick].shape, self.min_correlation)
        np.divide(self.sum[pick], total, out=out, where=total > 0)
        out[self.blocked[pick]] = -np.inf
        return out if row is None else out[0]

    def assign_group(self, group: np.ndarray) -> None:
        """Hungarian between a group's unassigned fragments and the identities its others leave free."""
        todo = group[self.identity[group] == 0]
        free = np.setdiff1d(np.arange(1, self.total.size + 1), self.identity[group])
        if todo.size == 0 or free.size == 0:
            return
        score = self.scores()[free - 1][:, todo]
        rows, cols = linear_sum_assignment(np.where(np.isfinite(score), score, -1e9), maximize=True)
        for r, c in zip(rows, cols):
            if np.isfinite(score[r, c]):
                self.assign(int(todo[c]), int(free[r]))

    def assign_greedy(self, candidates: np.ndarray) -> None:
        """Best affinity first, down to ``min_correlation``, refreshing the winner's row each time."""
        open_ = candidates & (self.identity == 0)
        score = self.scores()
        score[:, ~open_] = -np.inf
        n_frag = open_.size
        while True:
            best = int(np.argmax(score))
            i, f = divmod(best, n_frag)
            if not (np.isfinite(score[i, f]) and score[i, f] >= self.min_correlation):
                return
            self.assign(f, i + 1)
            open_[f] = False
            score[:, f] = -np.inf
            row = self.scores(i)
            row[~open_] = -np.inf
            score[i] = row

    def assign_rest(self) -> None:
        """Every fragment still unassigned that some identity can take, best affinity first, however
        low: a position with a doubtful identity (and a low probability) beats no position."""
        threshold, self.min_correlation = self.min_correlation, -np.inf
        try:
            self.assign_greedy(np.ones(self.identity.size, bool))
        finally:
            self.min_correlation = threshold

    def probability(self) -> np.ndarray:
        """Share of the chosen identity in the positive affinities, each fragment left out of its own
        identity's model, float64 (F,); 0 for unassigned fragments."""
        assigned = np.flatnonzero(self.identity > 0)
        own = self.identity[assigned] - 1
        sums = self.sum[:, assigned].copy()
        totals = np.repeat(self.total[:, None], assigned.size, axis=1)
        sums[own, np.arange(assigned.size)] -= self.weight[assigned] * self.id_matrix[assigned, assigned]
        totals[own, np.arange(assigned.size)] -= self.weight[assigned]
        affinity = np.zeros_like(sums)
        np.divide(sums, totals, out=affinity, where=totals > 1e-12)
        positive = np.maximum(affinity, 0.0)
        out = np.zeros(self.identity.size)
        out[assigned] = _share(positive[own, np.arange(assigned.size)], positive.sum(axis=0))
        return out


def _match_live_labels(fused: np.ndarray, live: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """Relabel fused identities (1..n) to agree as much as possible with the live ones (sample-weighted)."""
    ok = (fused > 0) & (live > 0) & (live <= n)
    overlap = np.zeros((n, n))
    np.add.at(overlap, (fused[ok] - 1, live[ok] - 1), weight[ok])
    if not overlap.any():
        return fused
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    relabel = np.zeros(n + 1, np.int32)
    relabel[rows + 1] = cols + 1
    return relabel[fused]


def fuse_fragments(fragments: np.ndarray, samples: dict[int, tuple[np.ndarray, np.ndarray]],
                   number_of_animals: int, cfg: IdentityConfig) -> dict[int, tuple[int, float]]:
    """End-of-session ToxId fusion: fragment id -> (identity 1..N, probability in [0, 1]).

    fragments: rows of ``FRAGMENT_RECORD_DTYPE``; samples: fragment id -> (histograms (k, bins),
    hu (k, 7)). Crossing fragments and fragments without samples are ignored; at most
    ``fusion_samples`` evenly spaced samples of each fragment are compared.

    1. Sim between all fragments; P = Pearson correlation of their Sim rows; IdMatrix = P, with 1
       on the diagonal and 0 for coexisting fragments (overlapping [start, end]).
    2. Long fragments (``n_samples >= long_fragment_samples``) alive N at a time form complete
       groups. The group whose shortest fragment is longest seeds identities 1..N (without any,
       the best complete group of fragments of any length does, and without that the largest
       set of long fragments alive together); the other groups, best first, are assigned by
       Hungarian on the identities' affinities (mean IdMatrix row of the fragments each identity
       holds).
    3. The remaining long, then all remaining fragments, greedily from the highest affinity down
       to ``min_correlation``, each assignment updating its identity's affinities. An identity never
       takes a fragment coexisting with one it holds; identities left without fragments are
       opened in turn by fragments that match no open identity above ``min_correlation``.
       Last, fragments still unassigned take the best identity free for them, however weak (their
       probability says so): a doubtful identity is more use than a missing position.
    4. Identities are relabelled to agree best with the live identities of the records.

    Probability: the fragment's (left-out) affinity to its identity over the sum of its positive
    affinities to all identities. Fragments left unassigned are absent from the result. With
    ``number_of_animals == 0`` nothing is fused and the result is empty.
    """
    if fragments.dtype != FRAGMENT_RECORD_DTYPE:
        fragments = np.asarray(fragments).astype(FRAGMENT_RECORD_DTYPE)
    n = int(number_of_animals)
    if n <= 0:
        return {}
    usable = ~fragments["is_crossing"] & np.array([int(f) in samples and len(samples[int(f)][0]) > 0
                                                   for f in fragments["fragment"]], bool)
    rows = fragments[usable]
    rows = rows[np.lexsort((rows["fragment"], rows["start"]))]
    if rows.size == 0:
        return {}
    ids, start, end = rows["fragment"], rows["start"], rows["end"]
    z, code, offsets = _stack_samples(ids, samples, cfg.fusion_samples)
    compared = np.diff(offsets)
    length = np.where(rows["n_samples"] > 0, rows["n_samples"], compared)

    sim = _similarity_matrix(z, code, offsets, cfg)
    id_matrix = _row_correlation(sim).astype(np.float64)
    coexist = (start[:, None] <= end[None, :]) & (start[None, :] <= end[:, None])
    np.fill_diagonal(coexist, False)
    id_matrix[coexist] = 0.0
    np.fill_diagonal(id_matrix, 1.0)

    fusion = _Fusion(id_matrix, coexist, compared.astype(np.float64), n, cfg.min_correlation)
    long = length >= cfg.long_fragment_samples
    groups = _complete_groups(start, end, np.flatnonzero(long), n)
    order = np.argsort([int(length[g].min()) for g in groups], kind="stable")[::-1]
    if groups:
        seed = groups[order[0]]
    else:
        # Without a complete group of long fragments, seed from the complete group of any length
        # whose shortest fragment is longest; without any (animals that leave the view), from the
        # largest set of long fragments alive together: its identities are certain to differ.
        complete = _complete_groups(start, end, np.arange(ids.size), n)
        seed = (max(complete, key=lambda g: int(length[g].min())) if complete
                else _largest_group(start, end, np.flatnonzero(long), length))
    for identity, f in enumerate(seed, start=1):
        fusion.assign(int(f), identity)
    for g in order[1:]:
        fusion.assign_group(groups[g])
    fusion.assign_greedy(long)
    fusion.assign_greedy(np.ones(long.size, bool))
    fusion.assign_rest()
    logger.info("fusion: %d of %d fragments assigned, %d complete groups",
                int((fusion.identity > 0).sum()), ids.size, len(groups))

    identity = _match_live_labels(fusion.identity, rows["identity"], length.astype(np.float64), n)
    probability = fusion.probability()
    return {int(f): (int(i), float(p)) for f, i, p in zip(ids, identity, probability) if i > 0}
