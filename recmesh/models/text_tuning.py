"""Fine-tuning the language model on behaviour: a LoRA adapter (peft) on all-MiniLM-L6-v2,
trained contrastively on pairs mined from a catalog's events and metadata, merged into the
weights and saved as a plain Hugging Face folder that every text runtime loads
(`recmesh.models.text.load_text_model`: the ONNX export Triton serves included).

Pairs (query text -> item), mined from the TRAIN part of the time-ordered leave-one-out split
only (`mine_pairs`: the split's validation and test interactions are never read; the items of
the label validation pairs are no label pair's target, so that validation measures phrases
finding items the adapter never saw them paired with):
  search     a SEARCH's query -> the item the same user interacted with next, within 30 min
             (the best pairs: what people typed and then picked);
  label      a label of the item -> the item, one pair per training interaction (so an item's
             share of label pairs is its share of interactions: behaviour decides which items a
             phrase should find). Labels: each tag, each category (a path's every level), the
             joined path (" > ") when the categories are one path, short text attributes (a
             brand); sometimes two or three of them joined with ", " (a typed query names several);
  next_item  an item's text -> the text of the next item the same user interacted with.

Training: the query and the item go through the same encoder (mean pooling + L2 norm over the
tokens, sentence-transformers' recipe: `recmesh.models.text._pool`), InfoNCE with in-batch
negatives (symmetric, temperature 0.05); in-batch "negatives" that are no negatives (the same
item, the same query text, an item whose text is the query) are masked out. Seeded, with a
progress bar, a time cap and an epoch cap.

Validation: held-out pairs from the split's validation interactions (label -> validation item;
last training item -> validation item; a search followed by the validation item), each query
ranked against the WHOLE catalog (recall@10, NDCG@10; a next_item query's own item left out),
for a reference model (the frozen one; for a re-training, the one served) and the tuned model,
as they are served (onnx-fp32). The tuned model is kept only when its mean NDCG@10 over the pair
kinds is above the reference's.

No service or tooling imports: the caller passes a dataset and split (recmesh.tools.eval.
datasets' shapes, duck-typed) and decides where the folder is installed."""

from __future__ import annotations

import bisect
import json
import logging
import math
import random
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("recmesh.models.text_tuning")

PAIR_KINDS = ("search", "label", "next_item")
# A search counts for the item picked next by the same user within this many seconds.
SEARCH_WINDOW_S = 30 * 60
# Files of a sentence-transformers folder kept beside the merged weights (the folder stays a
# valid sentence-transformers model: pooling and normalisation as the base declares them).
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                               "1_Pooling", "2_Normalize")
REPORT = "report.json"
# Text attributes longer than this are descriptions, not labels.
MAX_LABEL_CHARS = 60


@dataclass(frozen=True)
class Pair:
    """One training or validation example: `query` should find catalog item `item` (an index
    into the dataset's item_ids). `source_item`: the item whose text the query is (next_item
    pairs; -1 otherwise), left out when the query is ranked against the catalog."""

    kind: str
    query: str
    item: int
    source_item: int = -1


@dataclass(frozen=True)
class MiningConfig:
    # A label pair names two or three of the item's labels (", "-joined) with this probability.
    combine_labels: float = 0.3
    # Validation users sampled at most (seeded), for each kind of validation pair.
    max_valid_users: int = 1000
    # Distinct items of the label validation pairs at most: each is held out of the label
    # training pairs (more would starve a small catalog's label pairs).
    max_label_valid_items: int = 200
    search_window_s: int = SEARCH_WINDOW_S
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.combine_labels <= 1.0:
            raise ValueError(f"combine_labels must be in [0, 1], got {self.combine_labels}")
        if self.max_valid_users < 1:
            raise ValueError(f"max_valid_users must be >= 1, got {self.max_valid_users}")
        if self.max_label_valid_items < 0:
            raise ValueError(f"max_label_valid_items must be >= 0, got {self.max_label_valid_items}")
        if self.search_window_s <= 0:
            raise ValueError(f"search_window_s must be > 0, got {self.search_window_s}")


@dataclass
class MinedPairs:
    train: list[Pair]
    valid: list[Pair]
    # Items no label pair may target: those of the label validation pairs.
    held_out_items: set[int] = field(default_factory=set)

    def counts(self) -> dict[str, dict[str, int]]:
        return {"train": _count(self.train), "valid": _count(self.valid)}


def _count(pairs: list[Pair]) -> dict[str, int]:
    counts = Counter(p.kind for p in pairs)
    return {kind: counts.get(kind, 0) for kind in PAIR_KINDS}


def _is_path(categories: list[str], holders: dict[str, set[int]]) -> bool:
    """The categories are the levels of one path: each level's items are among the previous
    level's (a flat genre list is not)."""
    return len(categories) >= 2 and all(holders[b] <= holders[a] for a, b in pairwise(categories))


def item_labels(categories: Sequence[Sequence[str]], tags: Sequence[Sequence[str]],
                attributes: Sequence[dict[str, Any]] | None = None) -> list[list[str]]:
    """Each item's short label texts (aligned with the inputs): its tags, every category, the
    joined path (" > ") when its categories are one path, and the text values of its attributes
    up to MAX_LABEL_CHARS (a brand); de-duplicated ignoring case, in that order."""
    n = max(len(categories), len(tags), len(attributes or []))
    holders: dict[str, set[int]] = defaultdict(set)
    for i, cats in enumerate(categories):
        for c in cats:
            holders[c].add(i)
    out = []
    for i in range(n):
        cats = [c.strip() for c in (categories[i] if i < len(categories) else []) if c.strip()]
        labels = [t.strip() for t in (tags[i] if i < len(tags) else []) if t.strip()] + cats
        if _is_path(cats, holders):
            labels.append(" > ".join(cats))
        for value in ((attributes[i] if attributes and i < len(attributes) else None) or {}).values():
            if isinstance(value, str) and 0 < len(value.strip()) <= MAX_LABEL_CHARS:
                labels.append(value.strip())
        seen: set[str] = set()
        out.append([x for x in labels if not (x.lower() in seen or seen.add(x.lower()))])
    return out


def _label_query(labels: list[str], rng: random.Random, combine: float) -> str:
    if len(labels) >= 2 and rng.random() < combine:
        return ", ".join(rng.sample(labels, rng.randint(2, min(3, len(labels)))))
    return rng.choice(labels)


def _next_within(times: list[int], t: int, window_s: int) -> int | None:
    """Index of the first time >= t, if it is within window_s of t; None otherwise."""
    i = bisect.bisect_left(times, t)
    return i if i < len(times) and times[i] - t <= window_s else None


def mine_pairs(dataset, split, config: MiningConfig = MiningConfig(),
               attributes: Sequence[dict[str, Any]] | None = None) -> MinedPairs:
    """Training and validation pairs (module docstring) of `dataset` (item_ids, item_texts,
    item_categories, item_tags, optional searches: objects with user, query, timestamp in
    seconds) and its time-ordered `split` (train / valid / test item indices per user,
    timestamps aligned with train + valid). attributes: per item (aligned with item_ids), its
    attributes, where brand-like text values become labels. Seeded by config.seed.

    Only split.train's interactions count (label pairs: one per training interaction; next
    items: consecutive training interactions; searches: followed by a training interaction);
    the validation interaction of a user is read for validation pairs only, the test one never."""
    rng = random.Random(config.seed)
    n_items = len(dataset.item_ids)
    labels = item_labels(dataset.item_categories or [[] for _ in range(n_items)],
                         dataset.item_tags or [[] for _ in range(n_items)], attributes)
    users = sorted(split.train)
    with_valid = [u for u in users if u in split.valid]  # a time cut leaves some users without one
    valid_users = with_valid if len(with_valid) <= config.max_valid_users else \
        sorted(rng.sample(with_valid, config.max_valid_users))

    valid: list[Pair] = []
    held_out: set[int] = set()
    for user in valid_users:
        target, history = split.valid[user], split.train[user]
        if labels[target] and (target in held_out or len(held_out) < config.max_label_valid_items):
            held_out.add(target)
            valid.append(Pair("label", _label_query(labels[target], rng, config.combine_labels), target))
        if history and history[-1] != target:
            valid.append(Pair("next_item", dataset.item_texts[history[-1]], target, history[-1]))

    train: list[Pair] = []
    for user in users:
        items = split.train[user]
        for i in items:
            if i not in held_out and labels[i]:
                train.append(Pair("label", _label_query(labels[i], rng, config.combine_labels), i))
        for a, b in pairwise(items):
            if a != b:
                train.append(Pair("next_item", dataset.item_texts[a], b, a))

    searches: dict[str, list] = defaultdict(list)
    for s in getattr(dataset, "searches", None) or []:
        if s.user in split.train and s.query.strip():
            searches[s.user].append(s)
    valid_searches: list[Pair] = []
    for user in sorted(searches):
        n_train = len(split.train[user])
        times = list(split.timestamps[user])  # train times, then the validation item's
        for s in searches[user]:
            nxt = _next_within(times, s.timestamp, config.search_window_s)
            if nxt is None:
                continue
            if nxt < n_train:
                train.append(Pair("search", s.query.strip(), split.train[user][nxt]))
            elif nxt == n_train and user in split.valid:  # the validation item (the test item is never read)
                valid_searches.append(Pair("search", s.query.strip(), split.valid[user]))
    if len(valid_searches) > config.max_valid_users:
        valid_searches = rng.sample(valid_searches, config.max_valid_users)
    return MinedPairs(train, valid + valid_searches, held_out)


# --- Training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneConfig:
    """The adapter and its training. target_modules: BERT's attention (query, key, value, its
    output projection) and feed-forward linears; peft matches them by name suffix."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                                       "output.dense")
    temperature: float = 0.05
    symmetric: bool = True
    lr: float = 5e-4
    warmup_steps: int = 10
    batch_size: int = 32
    # Tokens per text in training (the served encoder reads up to 128: the first 64 carry the
    # title and labels, and halve the cost of a step on CPU).
    max_seq_len: int = 64
    time_cap_s: float = 300.0
    max_epochs: int = 1
    # One thread: measured on the shared 2-core machine, two threads spent ~4x the CPU per step
    # (spinning while the other core was busy) for no faster steps.
    threads: int = 1
    seed: int = 0
    log_every: int = 10
    # Pairs of these kinds open every epoch (shuffled among themselves), so that a time cap never
    # cuts them: what people typed and then picked is the best evidence.
    first_kinds: tuple[str, ...] = ("search",)

    def __post_init__(self):
        for name in ("lora_r", "lora_alpha", "batch_size", "max_seq_len", "max_epochs", "threads", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TuneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"TuneConfig.batch_size must be >= 2 (in-batch negatives), got {self.batch_size}")
        if not self.temperature > 0:
            raise ValueError(f"TuneConfig.temperature must be > 0, got {self.temperature}")
        if not self.time_cap_s > 0:
            raise ValueError(f"TuneConfig.time_cap_s must be > 0, got {self.time_cap_s}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"TuneConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")

    def lora(self):
        from peft import LoraConfig

        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=list(self.target_modules), bias="none")


def negatives_mask(pairs: Sequence[Pair], item_texts: Sequence[str]) -> np.ndarray:
    """(B, B) bool: True where column j may not serve as a negative of row i (j != i): the same
    target item, the same query text, or a target whose text is row i's query."""
    items = [p.item for p in pairs]
    queries = [p.query for p in pairs]
    targets = [item_texts[i] for i in items]
    b = len(pairs)
    mask = np.zeros((b, b), bool)
    for i in range(b):
        for j in range(b):
            if i != j and (items[i] == items[j] or queries[i] == queries[j] or queries[i] == targets[j]
                           or queries[j] == targets[i]):
                mask[i, j] = True
    return mask


def info_nce(q, d, mask, temperature: float, symmetric: bool):
    """InfoNCE with in-batch negatives: q, d (B, dim) unit vectors, row i of q matches row i of
    d; mask (B, B) bool tensor of pairs that are not negatives (excluded). Mean over rows."""
    import torch

    logits = (q @ d.T) / temperature
    logits = logits.masked_fill(mask, float("-inf"))
    labels = torch.arange(len(q), device=q.device)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    return loss


class PairEncoder:
    """The model (with its adapter) and tokenizer: texts -> (n, hidden) pooled unit vectors
    (torch, with grad in training mode); `loss` of a batch of pairs."""

    def __init__(self, model, tokenizer, max_seq_len: int):
        self.model, self.tokenizer, self.max_seq_len = model, tokenizer, max_seq_len

    def __call__(self, texts: list[str]):
        from recmesh.models.text import _pool

        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_len,
                                return_tensors="pt")
        hidden = self.model(**tokens).last_hidden_state
        return _pool(hidden, tokens["attention_mask"])

    def loss(self, pairs: Sequence[Pair], item_texts: Sequence[str], config: TuneConfig):
        import torch

        q = self([p.query for p in pairs])
        d = self([item_texts[p.item] for p in pairs])
        mask = torch.from_numpy(negatives_mask(pairs, item_texts))
        return info_nce(q, d, mask, config.temperature, config.symmetric)


def batch_loss(encoder: PairEncoder, pairs: Sequence[Pair], item_texts: Sequence[str], config: TuneConfig) -> float:
    """The contrastive loss of these pairs as one batch, without training (eval mode, no grad)."""
    import torch

    was_training = encoder.model.training
    encoder.model.eval()
    try:
        with torch.inference_mode():
            return float(encoder.loss(pairs, item_texts, config))
    finally:
        encoder.model.train(was_training)


@dataclass
class TrainedAdapter:
    encoder: PairEncoder  # the peft model (adapter not merged) and its tokenizer
    history: dict


def load_for_tuning(base_dir: Path, config: TuneConfig) -> PairEncoder:
    """The base model from base_dir (offline) with a fresh LoRA adapter, seeded."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(base_dir), local_files_only=True)
    return PairEncoder(get_peft_model(model, config.lora()), tokenizer, config.max_seq_len)


def train_adapter(base_dir: Path, item_texts: Sequence[str], pairs: Sequence[Pair], config: TuneConfig,
                  probe: Sequence[Pair] = (), progress: bool = True) -> TrainedAdapter:
    """Trains a LoRA adapter on `pairs` (shuffled each epoch, seeded) until config.time_cap_s
    or config.max_epochs; a last batch smaller than 2 is dropped. probe: pairs whose loss is
    measured before and after (one batch, no training on them). history: steps, epochs,
    seconds, the loss curve (mean training loss per log_every steps), the probe's losses.
    ValueError when there are fewer than 2 pairs."""
    import torch
    from tqdm import tqdm

    if len(pairs) < 2:
        raise ValueError(f"at least 2 training pairs are needed, got {len(pairs)}")
    torch.set_num_threads(config.threads)
    encoder = load_for_tuning(base_dir, config)
    probe = list(probe)[: max(2, config.batch_size * 2)]
    history: dict = {"probe_pairs": len(probe)}
    if len(probe) >= 2:
        history["probe_loss_before"] = round(batch_loss(encoder, probe, item_texts, config), 4)
    params = [p for p in encoder.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / config.warmup_steps))
    rng = random.Random(config.seed)
    order = list(range(len(pairs)))
    per_epoch = len(order) // config.batch_size + (len(order) % config.batch_size >= 2)
    encoder.model.train()
    started = time.perf_counter()
    curve, window, steps, epochs, stopped = [], [], 0, 0, "epochs"
    with tqdm(total=per_epoch * config.max_epochs, desc="tuning the text model", unit="step",
              disable=not progress) as bar:
        for epoch in range(config.max_epochs):
            rng.shuffle(order)
            order.sort(key=lambda i: pairs[i].kind not in config.first_kinds)  # stable: shuffled within each part
            for start in range(0, len(order), config.batch_size):
                batch = [pairs[i] for i in order[start : start + config.batch_size]]
                if len(batch) < 2:
                    continue
                if time.perf_counter() - started >= config.time_cap_s:
                    stopped = "time cap"
                    break
                loss = encoder.loss(batch, item_texts, config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                steps += 1
                window.append(loss.item())
                if len(window) == config.log_every:
                    curve.append({"step": steps, "loss": round(sum(window) / len(window), 4)})
                    window = []
                bar.update(1)
                bar.set_postfix(loss=f"{window[-1] if window else curve[-1]['loss']:.3f}", epoch=epoch + 1)
            else:
                epochs += 1
                continue
            break
    if window:
        curve.append({"step": steps, "loss": round(sum(window) / len(window), 4)})
    history |= {"steps": steps, "epochs_completed": epochs, "stopped_by": stopped, "pairs_per_epoch": len(pairs),
                "pairs_seen": steps * config.batch_size,
                "train_seconds": round(time.perf_counter() - started, 1), "loss_curve": curve}
    if len(probe) >= 2:
        history["probe_loss_after"] = round(batch_loss(encoder, probe, item_texts, config), 4)
    encoder.model.eval()
    return TrainedAdapter(encoder, history)


def save_merged(trained: TrainedAdapter, base_dir: Path, folder: Path) -> Path:
    """The adapter merged into the base weights (peft merge_and_unload), saved as a Hugging
    Face folder (model.safetensors, config, tokenizer files, the base's sentence-transformers
    files) at `folder`; returns it."""
    merged = trained.encoder.model.merge_and_unload()
    folder.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(folder), safe_serialization=True)
    trained.encoder.tokenizer.save_pretrained(str(folder))
    for name in SENTENCE_TRANSFORMERS_FILES:
        src = Path(base_dir) / name
        if src.is_dir():
            shutil.copytree(src, folder / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, folder / name)
    trained.encoder.model = merged
    return folder


# --- Validation ----------------------------------------------------------------------------


def rank_metrics(query_vectors: np.ndarray, catalog_vectors: np.ndarray, pairs: Sequence[Pair],
                 k: int = 10) -> dict[str, dict[str, float]]:
    """Per pair kind and "all": recall@k and NDCG@k of each pair's item when its query vector
    (row of query_vectors, aligned with pairs) ranks the whole catalog (catalog_vectors: n_items
    x dim, unit rows) by dot product; a pair's source_item is left out of its ranking. Ties
    count against the target."""
    if len(pairs) != len(query_vectors):
        raise ValueError(f"{len(pairs)} pairs but {len(query_vectors)} query vectors")
    hits: dict[str, list[float]] = defaultdict(list)
    gains: dict[str, list[float]] = defaultdict(list)
    for start in range(0, len(pairs), 512):
        scores = query_vectors[start : start + 512] @ catalog_vectors.T
        for row, pair in enumerate(pairs[start : start + 512]):
            s = scores[row]
            if pair.source_item >= 0:
                s[pair.source_item] = -np.inf
            rank = int((s >= s[pair.item]).sum()) - 1  # items scored at least as high, besides itself
            for kind in (pair.kind, "all"):
                hits[kind].append(float(rank < k))
                gains[kind].append(1.0 / math.log2(rank + 2) if rank < k else 0.0)
    return {kind: {f"recall@{k}": round(float(np.mean(hits[kind])), 4),
                   f"NDCG@{k}": round(float(np.mean(gains[kind])), 4), "pairs": len(hits[kind])}
            for kind in [*[k_ for k_ in PAIR_KINDS if k_ in hits], "all"] if kind in hits}


def macro_ndcg(metrics: dict[str, dict[str, float]], k: int = 10) -> float:
    """Mean NDCG@k over the pair kinds present (each kind counts once, whatever its size)."""
    values = [m[f"NDCG@{k}"] for kind, m in metrics.items() if kind != "all"]
    return float(np.mean(values)) if values else 0.0


# --- The whole run -------------------------------------------------------------------------


@dataclass
class TuneResult:
    folder: Path  # models/text/<version>/ (merged weights, tokenizer, report.json)
    report: dict
    kept: bool  # the tuned model beat the reference (the frozen base, or the served model) on validation
    catalog_vectors: np.ndarray  # the tuned model's (onnx-fp32) vectors of every item text


def version_now() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def tune_text_model(dataset, split, base_dir: Path, models_dir: Path, config: TuneConfig = TuneConfig(),
                    mining: MiningConfig | None = None, attributes: Sequence[dict[str, Any]] | None = None,
                    reference_catalog_vectors: np.ndarray | None = None, base_name: str = "all-MiniLM-L6-v2",
                    reference_dir: Path | None = None, reference_name: str | None = None,
                    encode_threads: int = 2) -> TuneResult:
    """Mines pairs, trains an adapter on base_dir, merges and saves it in
    models_dir/text/<UTC version>/, and validates the reference model (reference_dir: default
    base_dir, the frozen model; `recmesh tune-text` passes the served one) and the tuned one, each
    as served (onnx-fp32), over the whole catalog. reference_catalog_vectors: the reference's
    vectors of dataset.item_texts when known (an import's cache), else encoded here. The
    folder's report.json holds the pair counts per kind, steps, seconds, loss curve, validation of
    both, base model, LoRA config, seed, version and whether the tuned model is kept (its mean
    NDCG@10 over the pair kinds above the reference's). ValueError when the split yields fewer
    than 2 training pairs or no validation pair."""
    from recmesh.models.text import encode_with_progress, load_text_model, model_key

    started = time.perf_counter()
    reference_dir = Path(base_dir if reference_dir is None else reference_dir)
    reference_name = reference_name or base_name
    mining = mining or MiningConfig(seed=config.seed)
    mined = mine_pairs(dataset, split, mining, attributes)
    counts = mined.counts()
    print(f"text model: {counts['train']} training pairs, {counts['valid']} validation pairs "
          f"({len(mined.held_out_items)} validation items never a label pair's target)", flush=True)
    if not mined.valid:
        raise ValueError("no validation pair: the split's validation items have no labels and no history")
    probe = random.Random(config.seed).sample(mined.valid, min(len(mined.valid), config.batch_size * 2))
    trained = train_adapter(base_dir, dataset.item_texts, mined.train, config, probe=probe)

    version = version_now()
    folder = Path(models_dir) / "text" / version
    save_merged(trained, base_dir, folder)
    history = trained.history
    del trained  # the torch model: the runtimes below load the saved folder

    texts = list(dataset.item_texts)
    valid_queries = [p.query for p in mined.valid]
    evaluation_started = time.perf_counter()
    reference = load_text_model("onnx-fp32", reference_dir, reference_name, threads=encode_threads)
    if reference_catalog_vectors is None:
        reference_catalog_vectors = encode_with_progress(reference, texts, desc="encoding items (reference)")
    reference_metrics = rank_metrics(reference.encode(valid_queries), reference_catalog_vectors, mined.valid)
    del reference
    tuned = load_text_model("onnx-fp32", folder, f"{base_name}-tuned-{version}", threads=encode_threads)
    catalog_vectors = encode_with_progress(tuned, texts, desc="encoding items (tuned)")
    tuned_metrics = rank_metrics(tuned.encode(valid_queries), catalog_vectors, mined.valid)
    kept = macro_ndcg(tuned_metrics) > macro_ndcg(reference_metrics)

    lora = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.lora().to_dict().items()
            if k in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")}
    report = {
        "version": version, "base_model": base_name, "base_model_key": model_key(Path(base_dir)),
        "model_key": model_key(folder), "kept": kept,
        "chosen_by": "validation NDCG@10, mean over the pair kinds, tuned > reference",
        "pairs": counts, "held_out_items": len(mined.held_out_items),
        "training": history | {"time_cap_s": config.time_cap_s, "max_epochs": config.max_epochs,
                               "batch_size": config.batch_size},
        "validation": {"reference_model": reference_name, "reference_model_key": model_key(reference_dir),
                       "reference": reference_metrics, "tuned": tuned_metrics,
                       "reference_macro_ndcg@10": round(macro_ndcg(reference_metrics), 4),
                       "tuned_macro_ndcg@10": round(macro_ndcg(tuned_metrics), 4)},
        "lora": lora, "config": asdict(config) | {"target_modules": list(config.target_modules),
                                                  "first_kinds": list(config.first_kinds)},
        "mining": asdict(mining), "seed": config.seed,
        "evaluation_seconds": round(time.perf_counter() - evaluation_started, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (folder / REPORT).write_text(json.dumps(report, indent=2))
    return TuneResult(folder, report, kept, catalog_vectors)
