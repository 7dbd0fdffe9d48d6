"""Fragment identities by accumulation: the session teaches itself what each animal looks like.

After idtracker.ai's accumulation protocol (Romero-Ferrero et al. 2019; Torrents et al. 2025,
Appendix 1: "Protocol 2", quality checks and residual identification), on the linear appearance
model of ``appearance.py`` instead of a network:

1. **Seed.** A *global fragment* is a set of N individual fragments alive in one frame (every
   animal apart). The one whose shortest fragment is longest gives identities 1..N: its fragments
   are certain to be N different animals, with the most images to learn from. Without a global
   fragment, the largest set of fragments alive together seeds as many identities, and the others
   are opened later (step 3).
2. **Accumulate.** Train the model on the images of the accepted fragments, then score the others.
   A global fragment is accepted when its open members get distinct identities, each with
   probability >= ``global_acceptance``. A single fragment is accepted when its certainty
   (P2 top - P2 second) * sqrt(images) >= ``certainty``. P2 is the fragment's identity
   probability with the identities of coexisting accepted fragments removed, so an accepted
   fragment never takes an identity that a coexisting fragment holds. Retrain and repeat until
   nothing more is accepted.
3. **Open identities.** When nothing is accepted and fewer than N identities exist, the longest
   open fragment that coexists with fragments of every identity so far must be a new animal.
4. **Residual identification.** The rest, most certain first, takes the most probable identity
   that no coexisting fragment holds (none, 0, when all are held).
5. **Several seeds.** Steps 1-4 run from up to ``seeds`` global fragments; the result that agrees
   most with the others is kept (two that agree on >= ``CONSENSUS`` of the images end the search).
   A poor seed sends the accumulation astray (on zebrafish14, 85% instead of 97%); two good seeds
   reach the same answer.
6. **Honest probabilities.** Each fragment's probability comes from a model that was not trained
   on it (``folds``-fold cross-fitting over fragments). Image log-probabilities are summed over the
   fragment and divided by a temperature fitted on the held-out accepted fragments, because the
   images of one fragment are far from independent. An accepted fragment's probability leaves out
   the identities of its coexisting fragments; a residual one leaves out only those of its
   coexisting accepted fragments (its residual neighbours, which forced it, may be wrong). The
   estimated accuracy is the image-weighted mean of these probabilities over the identified
   images. A model cannot see its own consistent mistakes: where appearance alone names fewer than
   half of the images, a warning says so (docs/identity.md has the measured calibration).

Everything is deterministic: no random draw is made. The input is plain arrays
(``fragments.FragmentGraph``, features grouped by fragment), so the live learner and ``toxrt refine``
share this module.
"""
from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment, minimize_scalar

from .appearance import MIN_PROBABILITY, AppearanceModel, FeatureShape, ModelSnapshot
from .config import AppearanceConfig
from .fragments import FragmentGraph, largest_alive_group

log = logging.getLogger(__name__)

# Two runs from different seeds that agree on this share of the images found the same solution.
CONSENSUS = 0.995
# Below these the result is likely poor, and the user is told so.
LOW_CONNECTIVITY = 0.25  # idtracker.ai v6: < 0.25 (N - 1) coexisting fragments per fragment
LOW_ACCUMULATED = 0.5  # less than half the images accepted: most identities come from residual guesses
LOW_ESTIMATED_ACCURACY = 0.99
WEAK_APPEARANCE = 0.5  # appearance alone would name fewer than half of the images
# Share of accepted labels the temperature fit allows to be wrong (see fit_temperature).
LABEL_NOISE = 0.01


@dataclass
class AccumulationResult:
    """identity int64 (F,) 1..N, 0 = none; probability float64 (F,) of that identity (0 for none)."""

    identity: np.ndarray
    probability: np.ndarray
    accepted: np.ndarray  # bool (F,): accepted by accumulation (not residual)
    seed_used: int  # index into global_sets, -1 when seeded from the largest coexisting group
    seeds_tried: int
    rounds: int
    temperature: float
    model: ModelSnapshot | None
    warnings: list[str] = field(default_factory=list)


class _Run:
    """One accumulation from one seed: identities so far and the constraint bookkeeping."""

    def __init__(self, graph: FragmentGraph, n: int):
        self.graph, self.n = graph, n
        self.identity = np.zeros(len(graph), np.int64)
        self.accepted = np.zeros(len(graph), bool)
        self.taken = np.zeros((len(graph), n), bool)  # a coexisting fragment holds identity i + 1

    def give(self, f: int, identity: int, accepted: bool) -> None:
        self.identity[f] = identity
        self.accepted[f] = accepted
        self.taken[self.graph.neighbours(f), identity - 1] = True

    def p2(self, p1: np.ndarray, f: int) -> np.ndarray:
        p = np.where(self.taken[f], 0.0, p1[f])
        total = p.sum()
        return p / total if total > 0 else p

    def opened(self) -> np.ndarray:
        return np.unique(self.identity[self.identity > 0])


def certainty(p2: np.ndarray, n_images: int) -> float:
    """(best - second best probability) * sqrt(images): a difference of means in standard errors."""
    top = np.partition(p2, -2)[-2:] if p2.shape[0] > 1 else np.array([0.0, p2[0]])
    return float((top[1] - top[0]) * np.sqrt(n_images))


def sum_by_fragment(values: np.ndarray, fragment: np.ndarray, count: int) -> np.ndarray:
    """float64 (count, N): the rows of values (k, N) summed by their fragment (k,)."""
    return np.stack([np.bincount(fragment, weights=values[:, j], minlength=count)
                     for j in range(values.shape[1])], axis=1) if values.size else np.zeros((count, values.shape[1]))


def spread_rows(counts: np.ndarray, per_fragment: int) -> np.ndarray:
    """int64: up to ``per_fragment`` evenly spaced image indices of each fragment (all when 0).

    counts int (F,) images per fragment, stored one fragment after another. Consecutive frames
    are nearly the same image, so a long fragment teaches little more than a spread sample of it.
    """
    counts = np.asarray(counts, np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    if per_fragment <= 0:
        return np.arange(int(counts.sum()), dtype=np.int64)
    take = np.minimum(counts, per_fragment)
    owner = np.repeat(np.arange(counts.size), take)
    within = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    return first[owner] + np.floor(within * counts[owner] / take[owner]).astype(np.int64)


class Accumulator:
    """Accumulation over one session's fragments; see the module docstring.

    features float32 (R, d): identity features of (a sample of) the fragments' images;
    image_fragment int64 (R,): each image's fragment (index into ``graph``). Certainty grows with
    the number of images *scored*, shares are weighted by ``graph.n_images``.
    """

    def __init__(self, graph: FragmentGraph, features: np.ndarray, image_fragment: np.ndarray,
                 shape: FeatureShape, number_of_animals: int, settings: AppearanceConfig):
        self.graph, self.features = graph, features
        self.image_fragment = np.asarray(image_fragment, np.int64)
        self.scored = np.bincount(self.image_fragment, minlength=len(graph))
        self.n = int(number_of_animals)
        self.settings = settings
        self.model = AppearanceModel(shape, self.n)

    def fit(self, labels: np.ndarray, use: np.ndarray) -> ModelSnapshot:
        """A model trained on the fragments ``use`` (bool (F,)) with their labels (F,)."""
        rows = np.flatnonzero(use[self.image_fragment])
        y = labels[self.image_fragment[rows]]
        cap = self.settings.training_images_per_identity
        if cap > 0:  # even spread over each identity's images, so that long fragments do not dominate
            keep = []
            for identity in np.unique(y):
                mine = np.flatnonzero(y == identity)
                keep.append(mine if mine.size <= cap else mine[np.linspace(0, mine.size - 1, cap).astype(np.int64)])
            rows = rows[np.sort(np.concatenate(keep))]
            y = labels[self.image_fragment[rows]]
        return self.model.fit(self.features[rows], y)

    def _sum_over_images(self, model: ModelSnapshot, fragments: np.ndarray, probabilities: bool) -> np.ndarray:
        """float64 (F, N): image log-probabilities (or probabilities) summed per fragment, for the
        given fragments (0 elsewhere)."""
        out = np.zeros((len(self.graph), self.n))
        rows = np.flatnonzero(np.isin(self.image_fragment, fragments))
        for lo in range(0, rows.size, 16384):  # bounded temporaries
            part = rows[lo:lo + 16384]
            values = model.log_proba(self.features[part])
            out += sum_by_fragment(np.exp(values) if probabilities else values, self.image_fragment[part],
                                   len(self.graph))
        return out

    def fragment_log_likelihood(self, model: ModelSnapshot, fragments: np.ndarray) -> np.ndarray:
        """float64 (F, N): summed image log-probabilities of the given fragments (0 elsewhere)."""
        return self._sum_over_images(model, fragments, probabilities=False)

    def fragment_p1(self, model: ModelSnapshot, fragments: np.ndarray) -> np.ndarray:
        """float64 (F, N): mean image probability per fragment (idtracker.ai's P1)."""
        return self._sum_over_images(model, fragments, probabilities=True) / np.maximum(self.scored, 1)[:, None]

    # -- one run ---------------------------------------------------------------------------------

    def run(self, seed: np.ndarray) -> tuple[_Run, int]:
        """Accumulate from ``seed`` (fragments given identities 1..len(seed)); returns (run, rounds)."""
        run = _Run(self.graph, self.n)
        for identity, f in enumerate(seed, start=1):
            run.give(int(f), identity, accepted=True)
        rounds = 0
        while not run.accepted.all():
            rounds += 1
            accepted_now = self._accept(run)
            if accepted_now == 0 and not self._open_identity(run):
                break
        self._residual(run)
        return run, rounds

    def _score_open(self, run: _Run) -> np.ndarray:
        if np.unique(run.identity[run.accepted]).size < 2:  # one identity: nothing to discriminate
            p1 = np.zeros((len(self.graph), self.n))
            p1[:, run.identity[run.accepted][0] - 1] = 1.0
            return p1
        model = self.fit(run.identity, run.accepted)
        p1 = self.fragment_p1(model, np.flatnonzero(~run.accepted))
        # An identity no accepted fragment holds yet (seeded without a global fragment) is neither
        # favoured nor ruled out: a new animal must not be pushed into a known identity.
        return neutral_unseen(p1, model)

    def _accept(self, run: _Run) -> int:
        settings, n_images = self.settings, self.scored
        p1 = self._score_open(run)
        count = 0
        for members in self.graph.global_sets:
            todo = members[~run.accepted[members]]
            if todo.size == 0:
                continue
            p2 = np.stack([run.p2(p1, int(f)) for f in todo])
            best = p2.argmax(axis=1)
            if np.unique(best).size != best.size or (p2[np.arange(todo.size), best] < settings.global_acceptance).any():
                continue
            for f, i in zip(todo.tolist(), best.tolist()):
                run.give(f, i + 1, accepted=True)
                count += 1
        open_fragments = np.flatnonzero(~run.accepted & (n_images >= settings.min_images))
        candidates = [(-certainty(run.p2(p1, f), int(n_images[f])), f) for f in open_fragments]
        for _, f in sorted(c for c in candidates if -c[0] >= settings.certainty):
            p2 = run.p2(p1, f)  # coexisting fragments accepted meanwhile may have taken identities
            if p2.max() > 0 and certainty(p2, int(n_images[f])) >= settings.certainty:
                run.give(f, int(p2.argmax()) + 1, accepted=True)
                count += 1
        return count

    def _open_identity(self, run: _Run) -> bool:
        """Give a new identity to the longest open fragment that coexists with every identity so far."""
        opened = run.opened()
        if opened.size >= self.n:
            return False
        open_fragments = np.flatnonzero(~run.accepted & (run.identity == 0))
        must_be_new = open_fragments[run.taken[open_fragments][:, opened - 1].all(axis=1)]
        if must_be_new.size == 0:
            return False
        f = int(must_be_new[np.argmax(self.graph.n_images[must_be_new])])
        run.give(f, int(np.setdiff1d(np.arange(1, self.n + 1), opened)[0]), accepted=True)
        return True

    def _residual(self, run: _Run) -> None:
        """Most certain open fragment first; neighbours are re-ranked when an identity is taken."""
        open_fragments = np.flatnonzero(~run.accepted)
        if open_fragments.size == 0:
            return
        n_images = self.scored
        p1 = self._score_open(run)
        version = np.zeros(len(self.graph), np.int64)
        heap = [(-certainty(run.p2(p1, f), int(n_images[f])), 0, int(f)) for f in open_fragments]
        heapq.heapify(heap)
        while heap:
            _, v, f = heapq.heappop(heap)
            if run.identity[f] != 0 or v != version[f]:
                continue
            p2 = run.p2(p1, f)
            if p2.max() <= 0:
                continue  # every identity is held by a coexisting fragment
            run.give(f, int(p2.argmax()) + 1, accepted=False)
            for g in self.graph.neighbours(f).tolist():
                if run.identity[g] == 0:
                    version[g] += 1
                    heapq.heappush(heap, (-certainty(run.p2(p1, g), int(n_images[g])), int(version[g]), g))

    # -- probabilities ---------------------------------------------------------------------------

    def cross_fitted_probability(self, identity: np.ndarray, accepted: np.ndarray) -> tuple[np.ndarray, float]:
        """(probability float64 (F,) of each fragment's identity, temperature), from held-out models.

        Fragments are dealt into ``folds`` folds in order of start; each fold is scored by a model
        trained on the accepted fragments of the other folds. The temperature that best predicts the
        held-out accepted fragments' identities turns summed log-probabilities into probabilities;
        identities held by coexisting fragments (accepted ones only, for a residual fragment) are
        removed before normalising. Also sets
        ``appearance_probability`` (F,): the same without removing any identity (appearance alone).
        """
        folds = max(2, self.settings.folds)
        order = np.argsort(self.graph.start, kind="stable")
        fold = np.empty(len(self.graph), np.int64)
        fold[order] = np.arange(len(self.graph)) % folds
        loglik = np.zeros((len(self.graph), self.n))
        known_to_model = np.zeros((len(self.graph), self.n), bool)
        for k in range(folds):
            train = accepted & (fold != k)
            if np.unique(identity[train]).size < 2:
                continue
            model = self.fit(identity, train)
            held = np.flatnonzero(fold == k)
            loglik[held] = neutral_unseen(self.fragment_log_likelihood(model, held)[held], model)
            known_to_model[np.ix_(held, model.identities - 1)] = True
        taken = np.zeros((len(self.graph), self.n), bool)
        taken_by_accepted = np.zeros((len(self.graph), self.n), bool)
        known = np.flatnonzero(identity > 0)
        for f in known.tolist():
            taken[self.graph.neighbours(f), identity[f] - 1] = True
            if accepted[f]:
                taken_by_accepted[self.graph.neighbours(f), identity[f] - 1] = True
        calibrate = known[accepted[known] & known_to_model[known, identity[known] - 1]]
        # Calibrated on appearance alone: with the coexistence constraint a fragment among N - 1
        # identified ones has one identity left, whatever the temperature.
        temperature = fit_temperature(loglik[calibrate], identity[calibrate] - 1)
        probability = np.zeros(len(self.graph))
        appearance = np.zeros(len(self.graph))
        if known.size:
            rows = np.arange(known.size)
            alone = _posterior(loglik[known], np.zeros((known.size, self.n), bool), temperature)
            appearance[known] = alone[rows, identity[known] - 1]
            # An accepted fragment was certain next to its accepted neighbours: the coexistence rule
            # counts. A residual one was forced among residual neighbours that may be wrong: only
            # its accepted neighbours' identities are ruled out (identical simulated animals: 38%
            # right, 99% estimated with every neighbour ruled out, 31% with the accepted ones).
            ruled_out = np.where(accepted[known, None], taken[known], taken_by_accepted[known])
            chosen = _posterior(loglik[known], ruled_out, temperature)[rows, identity[known] - 1]
            # an identity given is never impossible: floored where the exponential underflows
            probability[known] = np.maximum(chosen, MIN_PROBABILITY)
        self.appearance_probability = appearance
        return probability, temperature


def neutral_unseen(loglik: np.ndarray, model: ModelSnapshot) -> np.ndarray:
    """loglik (F, N) of held-out fragments with each identity that ``model`` never saw set to the mean
    of the others: neither favoured nor ruled out (the floor would rule it out)."""
    unseen = np.setdiff1d(np.arange(loglik.shape[1]), model.identities - 1)
    loglik[:, unseen] = loglik[:, model.identities - 1].mean(axis=1, keepdims=True)
    return loglik


def _posterior(loglik: np.ndarray, taken: np.ndarray, temperature: float) -> np.ndarray:
    z = np.where(taken, -np.inf, loglik / temperature)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def fit_temperature(loglik: np.ndarray, label: np.ndarray) -> float:
    """The temperature (>= 1) minimising the held-out negative log-likelihood of the labels.

    The labels are the accumulation's own and a few may be wrong; so that one wrong long fragment
    cannot flatten every probability, the likelihood allows a share ``LABEL_NOISE`` of labels to be
    arbitrary (a mixture with a uniform choice among the animals).
    """
    if loglik.shape[0] == 0:
        return 1.0
    taken = np.zeros(loglik.shape, bool)
    uniform = LABEL_NOISE / loglik.shape[1]

    def loss(log_t: float) -> float:
        p = _posterior(loglik, taken, float(np.exp(log_t)))[np.arange(label.size), label]
        return float(-np.log((1.0 - LABEL_NOISE) * p + uniform).sum())

    best = minimize_scalar(loss, bounds=(0.0, np.log(1e4)), method="bounded")
    return float(np.exp(best.x))


def agreement(a: np.ndarray, b: np.ndarray, weight: np.ndarray, n: int) -> float:
    """Weighted share of fragments with the same identity in a and b after the best relabelling."""
    both = (a > 0) & (b > 0)
    overlap = np.zeros((n, n))
    np.add.at(overlap, (a[both] - 1, b[both] - 1), weight[both])
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    total = weight[(a > 0) | (b > 0)].sum()
    return float(overlap[rows, cols].sum() / total) if total else 1.0


def relabel_to(identity: np.ndarray, reference: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """identity relabelled (a permutation of 1..n) to agree as much as possible with ``reference``."""
    both = (identity > 0) & (reference > 0) & (reference <= n)
    overlap = np.zeros((n, n))
    np.add.at(overlap, (identity[both] - 1, reference[both] - 1), weight[both])
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    mapping = np.zeros(n + 1, np.int64)
    mapping[rows + 1] = cols + 1
    return mapping[identity]


def accumulate(graph: FragmentGraph, features: np.ndarray, image_fragment: np.ndarray, shape: FeatureShape,
               number_of_animals: int, settings: AppearanceConfig,
               reference_identity: np.ndarray | None = None) -> AccumulationResult:
    """Identities of all fragments by accumulation from up to ``settings.seeds`` seeds (module docstring).

    ``reference_identity`` int (F,), e.g. the live identities: the result is relabelled to agree with it.
    """
    n = int(number_of_animals)
    warnings: list[str] = []
    F = len(graph)
    if n == 1 or F == 0:
        identity = np.ones(F, np.int64) if n == 1 else np.zeros(F, np.int64)
        return AccumulationResult(identity, identity.astype(np.float64), identity > 0, -1, 0, 0, 1.0, None)
    engine = Accumulator(graph, features, image_fragment, shape, n, settings)
    if len(graph.global_sets):
        seeds = _diverse_seeds(graph.global_sets, settings.seeds)
    else:
        group = largest_alive_group(graph.start, graph.end, graph.n_images)
        seeds = [group[:n]]
        warnings.append(f"no global fragment (no frame shows all {n} animals apart): seeded from {group.size} "
                        "animals seen together; expect identification errors")
    runs, rounds = [], []
    for k, seed in enumerate(seeds):
        run, r = engine.run(seed)
        runs.append(run)
        rounds.append(r)
        log.info("accumulation from seed %d: %d rounds, %.1f%% of images accepted", k, r,
                 100 * _share(run.accepted, graph.n_images))
        if len(runs) >= 2 and max(agreement(run.identity, other.identity, graph.n_images, n)
                                  for other in runs[:-1]) >= CONSENSUS:
            break
    scores = [sum(agreement(a.identity, b.identity, graph.n_images, n) for b in runs) for a in runs]
    chosen = int(np.argmax(scores))
    run = runs[chosen]
    probability, temperature = engine.cross_fitted_probability(run.identity, run.accepted)
    identity = run.identity
    if reference_identity is not None:
        identity = relabel_to(identity, np.asarray(reference_identity, np.int64), graph.n_images, n)
    accepted_share = _share(run.accepted, graph.n_images)
    appearance_share = float((engine.appearance_probability * graph.n_images)[identity > 0].sum()
                             / max(graph.n_images[identity > 0].sum(), 1))
    if appearance_share < WEAK_APPEARANCE:
        warnings.append(f"the animals' appearance alone names only {100 * appearance_share:.0f}% of the images; the "
                        "identities rest on which fragments were seen together, and the estimated accuracy assumes "
                        "those fragments were named right")
    connectivity = graph.connectivity(n)
    if connectivity < LOW_CONNECTIVITY:
        warnings.append(f"fragment connectivity {connectivity:.2f} < {LOW_CONNECTIVITY}: too few animals are seen "
                        "together; expect identification errors")
    if accepted_share < LOW_ACCUMULATED:
        warnings.append(f"only {100 * accepted_share:.0f}% of the images were accumulated with certainty; the rest "
                        "were identified by residual guesses")
    model = engine.fit(run.identity, run.accepted) if np.unique(run.identity[run.accepted]).size >= 2 else None
    return AccumulationResult(identity, probability, run.accepted.copy(), int(chosen) if len(graph.global_sets) else -1,
                              len(runs), rounds[chosen], temperature, model, warnings)


def _share(mask: np.ndarray, weight: np.ndarray) -> float:
    total = weight.sum()
    return float(weight[mask].sum() / total) if total else 0.0


def _diverse_seeds(global_sets: np.ndarray, count: int) -> list[np.ndarray]:
    """The best global fragment, then the best ones of which at least half the fragments are new.

    A seed that repeats the fragments of an earlier one repeats its run; one that is half new
    tests whether the accumulation reaches the same identities from other evidence.
    """
    chosen: list[np.ndarray] = []
    used: set[int] = set()
    for members in global_sets:
        if len(chosen) >= count:
            break
        new = len(set(members.tolist()) - used)
        if chosen and 2 * new < members.size:
            continue
        chosen.append(members)
        used.update(members.tolist())
    return chosen
