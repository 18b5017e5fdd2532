"""Training of the ranker's scorer from labelled lists: what the updater runs online and what
the offline tools (recmesh eval, bench) run the same way.

- LabelledList: the features of one shown list (as served), the row the feedback is about and
  its label - the event's weight (recmesh/events/weights.py): > 0 the user chose the row, < 0
  they rejected it (a dislike); the updater's impression joiner (services/updater/joiner.py)
  makes them from the live stream.
- WideDeepTrainer: listwise softmax loss over each list (a chosen row: -log p(row); a rejected
  one: -log(1 - p(row))), each list counting |label|, Adam, numpy; warm-started from the
  version being served, so the first published version starts where serving is.
- OnlineLearner: trains on the stream, holds back every k-th list as the evaluation window,
  publishes a candidate only if it is not worse than the served version on that window and
  still follows the typed query and the session (MONOTONE), and rolls back when a published
  version turns out worse than its parent on fresh lists."""

from __future__ import annotations

import copy
import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import DeepPart, Scorer

# The updater runs the online learner: its log lines keep the updater's logger name.
log = logging.getLogger("recmesh.updater.learner")


@dataclass
class LabelledList:
    features: np.ndarray  # n x len(FEATURES), as served
    row: int  # the item the feedback is about
    arrived_ms: int  # when the feedback arrived (updater clock)
    propensity: float = 1.0  # of that item at its position
    # The feedback event's weight: > 0 the user chose the row (the list counts this much), < 0
    # they rejected it (a negative, counting -label). Never 0: such feedback teaches nothing.
    label: float = 1.0

    @property
    def chosen(self) -> bool:
        return self.label > 0


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = np.exp(scores - scores.max())
    return z / z.sum()


def _softmax_grad(scores: np.ndarray, row: int) -> tuple[float, np.ndarray]:
    """-log p(row) and its gradient in the scores: the row chosen over the rest of its list."""
    p = _softmax(scores)
    grad = p.copy()
    grad[row] -= 1.0
    return float(-np.log(max(p[row], 1e-12))), grad


def _rejection_grad(scores: np.ndarray, row: int) -> tuple[float, np.ndarray]:
    """-log(1 - p(row)) and its gradient in the scores, p(row) / (1 - p(row)) (e_row - p): the row
    pushed below the rest of its list (a dislike of a shown item)."""
    p = _softmax(scores)
    rest = max(1.0 - p[row], 1e-12)
    grad = -p * (p[row] / rest)
    grad[row] += p[row] / rest
    return float(-np.log(rest)), grad


class WideDeepTrainer:
    """hidden = 0: the wide (linear) part only."""

    def __init__(self, start: Scorer, hidden: int = 16, lr: float = 0.01, seed: int = 0):
        rng = np.random.default_rng(seed)
        f = len(FEATURES)
        self.params = {"w": start.weights.astype(np.float64).copy()}
        if start.deep is not None:
            deep = start.deep
            self.params |= {"w1": deep.w1.astype(np.float64), "b1": deep.b1.astype(np.float64),
                            "v": deep.v.astype(np.float64)}
        else:  # v = 0: the deep part starts silent, so the first version scores as the linear one
            w1 = rng.normal(0, 0.3, (f, hidden))
            # A typed query reaches the deep part only once lists with queries have taught it
            # (its row's gradient is zero until then): before that it acts through the wide part.
            w1[FEATURES.index("query_sim")] = 0.0
            self.params |= {"w1": w1, "b1": np.zeros(hidden), "v": np.zeros(hidden)}
        self.bias = start.bias
        # Not learned online (the lists it learns from are mostly users with history): carried
        # into every version it publishes, as chosen on the var's cold typed-query scenario.
        self.cold = start.cold
        self.lr = lr
        self._m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._s = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._t = 0

    def _grads(self, lists: list[LabelledList]) -> tuple[float, dict[str, np.ndarray]]:
        p = self.params
        grads = {k: np.zeros_like(v) for k, v in p.items()}
        total = 0.0
        for item in lists:
            x = item.features.astype(np.float64)
            pre = x @ p["w1"] + p["b1"]
            h = np.maximum(pre, 0.0)
            scores = x @ p["w"] + h @ p["v"]
            loss, ds = (_softmax_grad if item.chosen else _rejection_grad)(scores, item.row)
            # Inverse propensity: a choice among explored items counts for what it stands for;
            # and each list as much as the event that labelled it (|label|).
            weight = abs(item.label) / max(item.propensity, 0.05)
            ds = ds * weight
            loss *= abs(item.label)
            total += loss
            grads["w"] += x.T @ ds
            grads["v"] += h.T @ ds
            dpre = np.outer(ds, p["v"]) * (pre > 0)
            grads["w1"] += x.T @ dpre
            grads["b1"] += dpre.sum(axis=0)
        n = max(len(lists), 1)
        return total / n, {k: g / n for k, g in grads.items()}

    def step(self, lists: list[LabelledList]) -> float:
        """One Adam step on a mini-batch of lists; returns the mean loss before the step."""
        loss, grads = self._grads(lists)
        self._t += 1
        for k, g in grads.items():
            self._m[k] = 0.9 * self._m[k] + 0.1 * g
            self._s[k] = 0.999 * self._s[k] + 0.001 * g * g
            m_hat, s_hat = self._m[k] / (1 - 0.9**self._t), self._s[k] / (1 - 0.999**self._t)
            self.params[k] -= self.lr * m_hat / (np.sqrt(s_hat) + 1e-8)
        return loss

    def scorer(self, version: str, trained_through_ms: int) -> Scorer:
        p = self.params
        deep = None if p["v"].size == 0 else \
            DeepPart(p["w1"].astype(np.float32), p["b1"].astype(np.float32), p["v"].astype(np.float32))
        return Scorer(version, p["w"].astype(np.float32), self.bias, deep, trained_through_ms, self.cold)


def list_metrics(scorer: Scorer, lists: list[LabelledList]) -> dict[str, float]:
    """Mean NDCG (one relevant item: 1 / log2(rank + 2)) and AUC of the chosen item within
    its list, over the lists whose item was chosen (a rejected one names no relevant item)."""
    lists = [item for item in lists if item.chosen]
    if not lists:
        return {"ndcg": 0.0, "auc": 0.0, "lists": 0}
    ndcg = auc = 0.0
    for item in lists:
        s = scorer.score(item.features)
        above = int((s > s[item.row]).sum())
        ndcg += 1 / np.log2(above + 2)
        others = len(s) - 1
        auc += (int((s < s[item.row]).sum()) / others) if others else 1.0
    return {"ndcg": round(ndcg / len(lists), 4), "auc": round(auc / len(lists), 4), "lists": len(lists)}


# A learned version must keep following what the user does and types: more of these never
# lowers an item's score (checked on served feature rows before publishing).
MONOTONE = ("query_sim", "session_sim")


def behaviour_violations(scorer: Scorer, rows: np.ndarray, step: float = 0.3) -> list[str]:
    """The MONOTONE features whose increase lowers some row's score."""
    broken = []
    for name in MONOTONE:
        higher = rows.copy()
        higher[:, FEATURES.index(name)] += step
        if (scorer.score(higher) < scorer.score(rows) - 1e-6).any():
            broken.append(name)
    return broken


@dataclass
class LearnerConfig:
    min_new_lists: int = 8  # train once this many new lists arrived
    holdout_every: int = 5  # every k-th list goes to the evaluation window, not to training
    holdout_lists: int = 500  # the evaluation window (most recent held-back lists)
    replay_lists: int = 20000  # training memory
    steps: int = 20  # Adam steps per round
    batch: int = 32
    tolerance: float = 0.005  # NDCG a candidate may lose on the window and still publish
    rollback_after: int = 30  # fresh held-back lists before a published version is judged
    lr: float = 0.01


@dataclass
class Publication:
    scorer: Scorer
    reason: str  # "trained" or "rollback"
    window: dict = field(default_factory=dict)


@dataclass
class Round:
    """One training round's inputs, taken on the event loop; trained in a worker."""

    version: str
    trainer: WideDeepTrainer
    batches: list[list[LabelledList]]
    window: list[LabelledList]
    serving: Scorer
    trained_through_ms: int

    def train(self) -> tuple[Scorer, dict]:
        for batch in self.batches:
            self.trainer.step(batch)
        scorer = self.trainer.scorer(self.version, self.trained_through_ms)
        rows = np.concatenate([x.features for x in (self.window or self.batches[0])])
        return scorer, {"candidate": list_metrics(scorer, self.window),
                        "serving": list_metrics(self.serving, self.window),
                        "violations": behaviour_violations(scorer, rows)}


class OnlineLearner:
    """Fed on the updater's event loop (add, start_round, finish); Round.train runs in a
    worker on a private copy, so the two never touch the same state."""

    def __init__(self, serving: Scorer, config: LearnerConfig | None = None, seed: int = 0):
        self.config = config or LearnerConfig()
        self.serving = serving
        self.parent: Scorer | None = None  # what serving replaced, while serving is on probation
        self._probation: list[LabelledList] = []
        self._trainer = WideDeepTrainer(serving, lr=self.config.lr, seed=seed)
        self._train: deque[LabelledList] = deque(maxlen=self.config.replay_lists)
        self._holdout: deque[LabelledList] = deque(maxlen=self.config.holdout_lists)
        self._new: list[LabelledList] = []
        self._seen = 0
        self._rng = np.random.default_rng(seed)
        self.published = self.rejected = self.rollbacks = 0

    def add(self, item: LabelledList) -> None:
        self._seen += 1
        if self._seen % self.config.holdout_every == 0:
            self._holdout.append(item)
            if self.parent is not None:
                self._probation.append(item)
        else:
            self._train.append(item)
            self._new.append(item)

    def start_round(self, version: str) -> Round | Publication | None:
        """A rollback to publish, a round to train, or nothing to do yet."""
        verdict = self._judge_probation(version)
        if verdict is not None or len(self._new) < self.config.min_new_lists:
            return verdict
        new, self._new = self._new, []
        memory = list(self._train)
        batches = []
        for _ in range(self.config.steps):
            sample = [memory[i] for i in self._rng.integers(0, len(memory), self.config.batch)]
            batches.append(new + sample if len(new) <= self.config.batch else sample)
        return Round(version, copy.deepcopy(self._trainer), batches, list(self._holdout), self.serving,
                     max(item.arrived_ms for item in new))

    def finish(self, job: Round, scorer: Scorer, report: dict) -> Publication | None:
        """Publish the round's candidate unless it is worse than what serves on the window."""
        if job.serving is not self.serving:
            return None  # a rollback landed meanwhile: this candidate grew from the wrong parent
        worse = job.window and report["candidate"]["ndcg"] < report["serving"]["ndcg"] - self.config.tolerance
        if worse or report.get("violations"):
            self.rejected += 1
            log.info("candidate rejected", extra={"version": job.version, **report})
            return None
        self._trainer = job.trainer
        self.parent, self._probation = self.serving, []
        self.serving = scorer
        self.published += 1
        return Publication(scorer, "trained", report)

    def _judge_probation(self, version: str) -> Publication | None:
        if self.parent is None or len(self._probation) < self.config.rollback_after:
            return None
        fresh = self._probation
        ours, theirs = list_metrics(self.serving, fresh), list_metrics(self.parent, fresh)
        parent, self.parent, self._probation = self.parent, None, []
        if ours["ndcg"] >= theirs["ndcg"] - self.config.tolerance:
            return None  # passed: it stays
        self.rollbacks += 1
        back = Scorer(version, parent.weights, parent.bias, parent.deep, self.serving.trained_through_ms, parent.cold)
        self.serving = back
        self._trainer = WideDeepTrainer(back, lr=self.config.lr)
        return Publication(back, "rollback", {"published": ours, "parent": theirs})
