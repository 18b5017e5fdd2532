"""Train the sequence interest model on next-item prediction, select the epoch on validation
NDCG@10, and save a versioned artifact.

Loss: sampled softmax with shared negatives drawn by popularity and the logQ correction
(negatives > 0), or the exact full softmax over the catalogue (negatives = 0).

With query fusion (ModelConfig.query_dim > 0 and a QueryBank of synthesised queries,
recmesh.models.interest.query_fusion), two more terms of the same softmax:
  query_loss x CE(h + query_proj(q_target) -> target) at a query_share of the positions whose
      target has labels (q_target: a query synthesised from the target's own labels);
  cold_loss x CE(cold [+ query_proj(q_target) with probability cold_query_share] -> target) for
      a cold_share of the batch's targets: the interest of a user with no history, with and
      without a query - pulled toward what people consume (for such a query): a popularity prior
      learned with the model, not set by hand.
The epoch is still chosen on validation NDCG@10 without queries."""

from __future__ import annotations

import copy
import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recmesh.models.interest.query_fusion import QueryBank, item_labels
from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel, encode_sequences
from recmesh.tools.eval import datasets
from recmesh.tools.eval.datasets import Split
from recmesh.tools.eval.protocol import evaluate


@dataclass
class TrainConfig:
    """Defaults: the field's reference recipe for SASRec (RecBole: Adam 1e-3, batch 256, dropout
    0.2 in ModelConfig, full-softmax cross-entropy, one sample per train position with its last
    max_len events, early stopping with patience 10 on validation NDCG@10), trained until
    validation stops improving - not for a fixed time (time_cap_s caps it only when set:
    `--quick` runs and tests)."""

    epochs: int = 500
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10  # epochs without a validation NDCG@10 gain
    time_cap_s: float | None = None
    seed: int = 0
    # One: under load, two intra-op threads of this small model spin on each other (measured on this
    # machine at a load of 7: an amazon-office epoch took 93 s with 2 threads, 15 s with 1).
    threads: int = 1
    # "prefixes": one sample per train position t >= 1 - the last max_len events before it, the
    # loss at the last position only (RecBole's SASRec); "windows": each user's train sequence
    # cut into windows of max_len + 1 events, every position predicting the next (the original
    # SASRec's: the same targets per epoch at ~1/max_len of the compute). `batch` counts targets
    # in both, so an epoch takes as many optimiser steps of as many targets: a windows step
    # holds batch / max_len windows.
    # The default: on this project's 2-core machine a prefixes epoch of ml-latest-small took
    # ~4 min under load (RecBole's took ~100 s alone), a windows epoch ~20 s.
    samples: str = "windows"
    # Shared negatives per batch for a sampled softmax; 0 = the exact full softmax. A catalog of
    # at most twice this many items is always trained with the full softmax.
    negatives: int = 0
    # Negatives are drawn with probability ~ count^alpha (0 = uniform).
    alpha: float = 0.75
    # Query fusion (read only when the model has ModelConfig.query_dim and train() is given a
    # QueryBank): the weights of the typed-query and cold-start terms (module docstring), the
    # share of labelled positions given a query, the share of targets given a cold row (each
    # term is a softmax over the catalog: shares keep an epoch's cost near the plain one's), the
    # share of cold rows given a query. Weights chosen on validation (windows, amazon-office):
    # 0.5 / 0.25 kept the no-query blend's NDCG@10 (0.0818 vs 0.0817 without fusion) with the
    # typed-query scenario at 0.467 (0.374 without); 1.0 / 0.5 gave 0.472 but 0.0784 without a
    # query. The terms train the whole model: training the fusion head alone left the
    # typed-query scenario at 0.367.
    query_loss: float = 0.5
    query_share: float = 0.5
    cold_loss: float = 0.25
    cold_share: float = 0.25
    cold_query_share: float = 0.7

    def __post_init__(self):
        for name in ("query_share", "cold_share", "cold_query_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TrainConfig.{name}: {getattr(self, name)} is not in [0, 1]")
        for name in ("query_loss", "cold_loss"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}: {getattr(self, name)} must be >= 0")


def sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
                         log_q: torch.Tensor, q: torch.Tensor, negatives: int) -> torch.Tensor:
    """hidden: N x d, targets: N (0-based), table: n x d. Each logit is corrected by
    -log(M q(item)) so that popular items, sampled often, are not over-penalised."""
    neg = torch.multinomial(q, negatives, replacement=True)
    correction = log_q + np.log(negatives)
    pos = (hidden * table[targets]).sum(-1) - correction[targets]
    neg_logits = hidden @ table[neg].T - correction[neg]
    neg_logits = neg_logits.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg_logits], dim=1)
    return nn.functional.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))

def _softmax_ce(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, negatives: int,
                log_q: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean next-item cross-entropy of hidden (N x d) for targets (N, 0-based) over the item
    table (n x d): sampled with shared negatives (negatives > 0), else the full softmax."""
    if negatives:
        return sampled_softmax_loss(hidden, targets, table, log_q, q, negatives)
    return nn.functional.cross_entropy(hidden @ table.T, targets)


def training_samples(s: Split, max_len: int, samples: str) -> list[tuple[str, int, int]]:
    """(user, start, end): train[user][start:end] is one sample - its last event the target, the
    events before it the input (at most max_len)."""
    if samples not in ("prefixes", "windows"):
        raise ValueError(f"TrainConfig.samples: {samples!r} is not 'prefixes' or 'windows'")
    out = []
    for user, items in s.train.items():
        if samples == "prefixes":
            out.extend((user, max(0, end - max_len - 1), end) for end in range(2, len(items) + 1))
        else:
            out.extend((user, max(0, end - max_len - 1), end) for end in range(len(items), 1, -max_len))
    return out


def training_windows(s: Split, max_len: int) -> list[tuple[list[int], list[float], list[int]]]:
    """Each user's train sequence cut, from the end, into windows of max_len + 1 events."""
    return [_slice(s, sample) for sample in training_samples(s, max_len, "windows")]


def step_batches(order: np.ndarray, targets: np.ndarray, batch: int) -> list[np.ndarray]:
    """The samples of each optimiser step, in `order`: a step ends where the running count of
    targets (targets[i]: sample i's) crosses the next multiple of `batch` - so a step of short
    windows holds more windows, and every step about `batch` targets (within one sample's)."""
    bounds = np.searchsorted(np.cumsum(targets[order]), np.arange(batch, int(targets.sum()) + batch, batch),
                             side="left") + 1
    return [part for part in np.split(order, np.minimum(bounds, len(order))[:-1]) if len(part)]


def _slice(s: Split, sample: tuple[str, int, int]) -> tuple[list[int], list[float], list[int]]:
    user, start, end = sample
    return s.train[user][start:end], s.ratings[user][start:end], s.timestamps[user][start:end]


class ModelScorer:
    """Protocol scorer over a trained model: the last max_len events of the stage's history."""

    def __init__(self, model: SequenceInterestModel, s: Split, name: str):
        self.model, self.s, self.name = model, s, name

    @torch.no_grad()
    def __call__(self, users: list[str], stage: str) -> np.ndarray:
        self.model.eval()
        hist = [self.s.history(u, stage) for u in users]
        tensors = encode_sequences(hist, [self.s.ratings[u][: len(h)] for u, h in zip(users, hist, strict=True)],
                                   [self.s.timestamps[u][: len(h)] for u, h in zip(users, hist, strict=True)],
                                   self.model.config.max_len)
        return self.model.scores(*tensors).numpy()


def _check_fusion(s: Split, model_config: ModelConfig, queries: QueryBank | None) -> None:
    if model_config.query_dim and queries is None:
        raise ValueError("train: ModelConfig.query_dim is set but no QueryBank was given (train(..., queries=))")
    if queries is None:
        return
    if not model_config.query_dim:
        raise ValueError("train: a QueryBank was given but ModelConfig.query_dim is 0 (no query fusion)")
    if queries.dim != model_config.query_dim:
        raise ValueError(f"train: the QueryBank's vectors have dim {queries.dim}, ModelConfig.query_dim is "
                         f"{model_config.query_dim}")
    if queries.n_items != s.n_items:
        raise ValueError(f"train: the QueryBank covers {queries.n_items} items, the split {s.n_items}")


def train(s: Split, model_config: ModelConfig, text_vectors: np.ndarray | None, cfg: TrainConfig,
          name: str, queries: QueryBank | None = None) -> tuple[SequenceInterestModel, dict]:
    """The model with the best validation NDCG@10 (no queries), and its training report.
    queries: the synthesised typed queries when model_config.query_dim > 0 (required then,
    refused otherwise: ValueError)."""
    _check_fusion(s, model_config, queries)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    # Its own generator: the sample order stays what it is without fusion.
    query_rng = np.random.default_rng(cfg.seed + 1)
    labelled = torch.from_numpy(queries.labelled()) if queries is not None else None
    model = SequenceInterestModel(model_config, text_vectors)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    samples = training_samples(s, model_config.max_len, cfg.samples)
    sizes = np.array([end - start - 1 for _user, start, end in samples])  # targets per sample (windows)
    negatives = cfg.negatives if s.n_items > 2 * cfg.negatives else 0  # a small catalog: the full softmax
    counts = np.bincount(np.concatenate(list(s.train.values())), minlength=s.n_items).astype(np.float64)
    q = torch.tensor((counts + 1) ** cfg.alpha / ((counts + 1) ** cfg.alpha).sum(), dtype=torch.float32)
    log_q = torch.log(q)
    best, best_state, best_epoch, history = -1.0, None, 0, []
    started, stopped_by = time.perf_counter(), "epoch cap"
    bar = tqdm(range(cfg.epochs), desc=f"training {name}", unit="epoch")
    for epoch in bar:
        model.train()
        order = np.random.permutation(len(samples))
        steps = step_batches(order, sizes if cfg.samples == "windows" else np.ones(len(samples), int), cfg.batch)
        losses, parts = [], {"query": [], "cold": []}
        for rows in tqdm(steps, desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=len(steps) < 50):
            batch = [_slice(s, samples[i]) for i in rows]
            # Padded to the batch's longest sample only (positions count from the right end).
            length = min(model_config.max_len + 1, max(len(w[0]) for w in batch))
            items, strength, gaps = encode_sequences([w[0] for w in batch], [w[1] for w in batch],
                                                     [w[2] for w in batch], length)
            # Inputs are all but the last event; each position predicts the next item.
            targets = items[:, 1:] - 1  # back to 0-based item index; padding becomes -1
            hidden = model(items[:, :-1], strength[:, :-1], gaps[:, :-1])
            if cfg.samples == "prefixes":  # the loss at the last position only
                hidden, targets = hidden[:, -1:], targets[:, -1:]
            table = model.item_table()[1:]
            keep = targets.reshape(-1) >= 0
            flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1])[keep], targets.reshape(-1)[keep]
            softmax_ce = functools.partial(_softmax_ce, table=table, negatives=negatives, log_q=log_q, q=q)
            loss = softmax_ce(flat_h, flat_t)
            if queries is not None:
                query_term, cold_term = _fusion_terms(model, queries, labelled, flat_h, flat_t, cfg, query_rng,
                                                      softmax_ce)
                loss = loss + cfg.query_loss * query_term + cfg.cold_loss * cold_term
                parts["query"].append(query_term.item())
                parts["cold"].append(cold_term.item())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        valid = evaluate(ModelScorer(model, s, name), s, "valid")
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), **valid,
                        **{f"loss_{k}": round(float(np.mean(v)), 4) for k, v in parts.items() if v}})
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_ndcg=valid["NDCG@10"])
        if valid["NDCG@10"] > best:
            best, best_state, best_epoch = valid["NDCG@10"], copy.deepcopy(model.state_dict()), epoch + 1
        capped = cfg.time_cap_s is not None and time.perf_counter() - started > cfg.time_cap_s
        if epoch + 1 - best_epoch >= cfg.patience or capped:
            stopped_by = "time cap" if capped and epoch + 1 - best_epoch < cfg.patience else "patience"
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return model, {"best_epoch": best_epoch, "epochs_run": len(history), "valid_ndcg": best,
                   "train_seconds": round(time.perf_counter() - started, 1), "history": history,
                   "stopped_by": stopped_by,
                   "train_config": asdict(cfg), "model_config": asdict(model_config),
                   "softmax": f"sampled, {negatives} shared negatives" if negatives else "full",
                   **({"query_fusion": {"phrases": len(queries.phrases),
                                        "labelled_items": int(queries.labelled().sum()),
                                        "items": queries.n_items}} if queries is not None else {})}


def _fusion_terms(model: SequenceInterestModel, queries: QueryBank, labelled: torch.Tensor, hidden: torch.Tensor,
                  targets: torch.Tensor, cfg: TrainConfig, rng: np.random.Generator,
                  softmax_ce) -> tuple[torch.Tensor, torch.Tensor]:
    """The typed-query and cold-start terms (module docstring) for a batch's real positions
    (hidden: N x d, targets: N, 0-based); a term with no rows is 0."""
    zero = hidden.new_zeros(())
    has_labels = labelled[targets]
    pick = has_labels & torch.from_numpy(rng.random(len(targets)) < cfg.query_share)
    query_term = zero
    if pick.any():
        q, _ = queries.sample(targets[pick].numpy(), rng)
        query_term = softmax_ce(model.fuse(hidden[pick], torch.from_numpy(q)), targets[pick])
    cold_term = zero
    rows = torch.from_numpy(rng.random(len(targets)) < cfg.cold_share)
    if cfg.cold_loss > 0 and rows.any():
        q, _ = queries.sample(targets[rows].numpy(), rng)
        with_query = has_labels[rows] & torch.from_numpy(rng.random(int(rows.sum())) < cfg.cold_query_share)
        cold_term = softmax_ce(model.fuse(None, torch.from_numpy(q), with_query), targets[rows])
    return query_term, cold_term


# A SEARCH counts as having led to an item event of the same user this soon after it.
SEARCH_WINDOW_S = 1800
MAX_SEARCHES_PER_ITEM = 20


def search_phrases(var: Path | None, item_ids: list[str]) -> list[list[str]] | None:
    """Per item (aligned with item_ids), the search texts that led to it in the var's event log,
    most frequent first (at most MAX_SEARCHES_PER_ITEM): an item event's own `query`, and a
    user's SEARCH followed by their item events within SEARCH_WINDOW_S. None when the log holds
    no such text (or the var has no log)."""
    from collections import Counter

    from recmesh.common.paths import var_paths
    from recmesh.common.validation import is_item_event
    from recmesh.events.eventlog import EventLog
    from recmesh.v1 import common_pb2

    path = var_paths(var).event_log
    if not path.is_file():
        return None
    index = {item: i for i, item in enumerate(item_ids)}
    counts: dict[int, Counter] = {}
    last_search: dict[str, tuple[str, int]] = {}
    log = EventLog(path)
    try:
        for e in log.replay():
            text = " ".join(e.query.split())
            if e.type == common_pb2.EventType.EVENT_TYPE_SEARCH:
                if text:
                    last_search[e.user_id] = (text, e.timestamp_ms)
                continue
            if not is_item_event(e) or e.item_id not in index:
                continue
            searched = last_search.get(e.user_id)
            led = text or (searched[0] if searched and 0 <= e.timestamp_ms - searched[1] <= SEARCH_WINDOW_S * 1000
                           else "")
            if led:
                counts.setdefault(index[e.item_id], Counter())[led] += 1
    finally:
        log.close()
    if not counts:
        return None
    return [[t for t, _ in counts[i].most_common(MAX_SEARCHES_PER_ITEM)] if i in counts else []
            for i in range(len(item_ids))]


def var_attributes(var: Path | None, item_ids: list[str]) -> list[dict[str, object]] | None:
    """Per item (aligned with item_ids), its attributes in the var's imported catalog as plain
    values (text str, number float, flag bool); None without an imported catalog."""
    from recmesh.common.paths import var_paths
    from recmesh.tools.catalog.snapshot import read_items

    path = var_paths(var).catalog_items
    if not path.is_file():
        return None
    by_id = {}
    for item in read_items(path):
        by_id[item.item_id] = {name: getattr(value, value.WhichOneof("kind")) for name, value in item.attributes.items()
                               if value.WhichOneof("kind")}
    return [by_id.get(i, {}) for i in item_ids]


def query_bank(dataset: datasets.Dataset, cache: Path, var: Path | None = None) -> QueryBank:
    """The synthesised training queries of a data set (recmesh.models.interest.query_fusion): its
    categories and tags, and - when `var` is the var the data set was read from (datasets.
    from_var) - its catalog's brand-like attributes and the search texts of its event log. Each
    phrase encoded once by the served text model (tune.encode_texts, cached in `cache`)."""
    from recmesh.tools.eval.tune import encode_texts

    attributes = searches = None
    if var is not None:
        attributes = var_attributes(var, dataset.item_ids)
        searches = search_phrases(var, dataset.item_ids)
    labels = item_labels(dataset.categories(), dataset.item_tags or None, attributes, searches)
    return QueryBank.build(labels, lambda texts: encode_texts(texts, cache, f"{dataset.name}-phrases"))


def save_report(report: dict, root: Path, name: str) -> Path:
    """var/models/<name>/<version>/report.json; version = UTC time of training (with a suffix
    -2, -3, ... when another run saved the same model in the same second: seeds trained in
    parallel). The served artifact (interest_model.pt, export_served) goes beside it."""
    version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (root / name).mkdir(parents=True, exist_ok=True)
    folder, n = root / name / version, 1
    while True:
        try:
            folder.mkdir()  # atomic: two processes never get the same folder
            break
        except FileExistsError:
            n += 1
            folder = root / name / f"{version}-{n}"
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    return folder
