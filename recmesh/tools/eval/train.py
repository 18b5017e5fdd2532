"""Train the sequence interest model on next-item prediction, select the epoch on validation
NDCG@10, and save a versioned artifact.

Loss: sampled softmax with shared negatives drawn by popularity and the logQ correction
(negatives > 0), or the exact full softmax over the catalogue (negatives = 0)."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel, encode_sequences
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
    threads: int = 2
    # "prefixes": one sample per train position t >= 1 - the last max_len events before it, the
    # loss at the last position only (RecBole's SASRec); "windows": each user's train sequence
    # cut into windows of max_len + 1 events, every position predicting the next (the original
    # SASRec's: the same targets per epoch at ~1/max_len of the compute). `batch` counts targets
    # in both, so an epoch takes as many optimiser steps of as many targets: a windows step
    # holds batch / max_len windows.
    samples: str = "prefixes"
    # Shared negatives per batch for a sampled softmax; 0 = the exact full softmax. A catalog of
    # at most twice this many items is always trained with the full softmax.
    negatives: int = 0
    # Negatives are drawn with probability ~ count^alpha (0 = uniform).
    alpha: float = 0.75


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


def train(s: Split, model_config: ModelConfig, text_vectors: np.ndarray | None, cfg: TrainConfig,
          name: str) -> tuple[SequenceInterestModel, dict]:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model = SequenceInterestModel(model_config, text_vectors)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    samples = training_samples(s, model_config.max_len, cfg.samples)
    per_step = cfg.batch if cfg.samples == "prefixes" else max(1, round(cfg.batch / model_config.max_len))
    negatives = cfg.negatives if s.n_items > 2 * cfg.negatives else 0  # a small catalog: the full softmax
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    counts = np.bincount(np.concatenate(list(s.train.values())), minlength=s.n_items).astype(np.float64)
    q = torch.tensor((counts + 1) ** cfg.alpha / ((counts + 1) ** cfg.alpha).sum(), dtype=torch.float32)
    log_q = torch.log(q)
    best, best_state, best_epoch, history = -1.0, None, 0, []
    started, stopped_by = time.perf_counter(), "epoch cap"
    bar = tqdm(range(cfg.epochs), desc=f"training {name}", unit="epoch")
    for epoch in bar:
        model.train()
        order = np.random.permutation(len(samples))
        losses = []
        for start in tqdm(range(0, len(order), per_step), desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                          disable=len(order) < 50 * per_step):
            batch = [_slice(s, samples[i]) for i in order[start : start + per_step]]
            items, strength, gaps = encode_sequences([w[0] for w in batch], [w[1] for w in batch],
                                                     [w[2] for w in batch], model_config.max_len + 1)
            # Inputs are all but the last event; each position predicts the next item.
            targets = items[:, 1:] - 1  # back to 0-based item index; padding becomes -1
            hidden = model(items[:, :-1], strength[:, :-1], gaps[:, :-1])
            if cfg.samples == "prefixes":  # the loss at the last position only
                hidden, targets = hidden[:, -1:], targets[:, -1:]
            table = model.item_table()[1:]
            if negatives:
                keep = targets.reshape(-1) >= 0
                loss = sampled_softmax_loss(hidden.reshape(-1, hidden.shape[-1])[keep], targets.reshape(-1)[keep],
                                            table, log_q, q, negatives)
            else:
                logits = hidden @ table.T
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        valid = evaluate(ModelScorer(model, s, name), s, "valid")
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), **valid})
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
                   "softmax": f"sampled, {negatives} shared negatives" if negatives else "full"}


def save_report(report: dict, root: Path, name: str) -> Path:
    """var/models/<name>/<version>/report.json; version = UTC time of training. The served
    artifact (interest_model.pt, export_served) goes beside it where one is exported."""
    version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    return folder
