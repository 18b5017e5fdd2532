"""The learned interest model: a small causal transformer over the user's recent items.

Item representation = learned projection of the frozen LLM text vector (+ an item-ID
embedding, so warm items gain and cold items still work). Each position also sees its event
strength (rating or event type, bucketed) and the time gap to the previous event (log
buckets). Trained on next-item prediction; the output at the last position is the interest
vector, scored against the same item table.

With text_vectors=None and use_ids=True it is an ID-only SASRec-style baseline (same code)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

GAP_BUCKETS = 24  # log2 seconds, 0 = same second / first event
STRENGTH_BUCKETS = 12  # 0 pad, 1..10 ratings 0.5..5, 11 implicit


@dataclass
class ModelConfig:
    n_items: int
    text_dim: int = 0  # 0: no text features
    use_ids: bool = True
    d: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    # The typed query's vector dim (the language model's, = text_dim) when the model fuses
    # queries; 0: no query fusion and no cold-start vector (artifacts from before it load as 0).
    query_dim: int = 0


def gap_bucket(gaps_s: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(np.log2(np.maximum(gaps_s, 0) + 1)), 0, GAP_BUCKETS - 1).astype(np.int64)


def strength_bucket(ratings: np.ndarray) -> np.ndarray:
    """Ratings 0.5..5 -> 1..10; no rating (implicit event) -> 11."""
    buckets = np.clip(np.round(ratings * 2), 1, 10).astype(np.int64)
    return np.where(ratings > 0, buckets, STRENGTH_BUCKETS - 1)


class SequenceInterestModel(nn.Module):
    def __init__(self, config: ModelConfig, text_vectors: np.ndarray | None = None):
        super().__init__()
        self.config = config
        d = config.d
        if config.text_dim:
            # Frozen LLM vectors; row 0 is padding. None for the served model: it reads item
            # vectors from the catalog index and never needs the whole table.
            padded = None
            if text_vectors is not None:
                assert text_vectors.shape == (config.n_items, config.text_dim)
                padded = torch.from_numpy(np.vstack([np.zeros((1, config.text_dim), np.float32), text_vectors]))
            self.register_buffer("text", padded)
            self.text_proj = nn.Sequential(nn.Linear(config.text_dim, d), nn.GELU(), nn.Linear(d, d))
        if config.use_ids:
            self.ids = nn.Embedding(config.n_items + 1, d, padding_idx=0)
            nn.init.normal_(self.ids.weight, std=0.02)
        self.position = nn.Embedding(config.max_len, d)
        self.gap = nn.Embedding(GAP_BUCKETS, d)
        self.strength = nn.Embedding(STRENGTH_BUCKETS, d, padding_idx=0)
        # The same small scale as the item IDs (RecBole's initializer_range): at nn.Embedding's
        # default N(0, 1) the three side embeddings drown the scaled item vectors (std 0.16) and
        # training takes several times the epochs (ml-latest-small SASRec-ID, validation
        # NDCG@10 at epoch 4: 0.044 vs 0.034).
        for side in (self.position, self.gap, self.strength):
            nn.init.normal_(side.weight, std=0.02)
        with torch.no_grad():
            self.strength.weight[0] = 0  # the padding row
        layer = nn.TransformerEncoderLayer(d, config.heads, 2 * d, config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)
        if config.query_dim:
            self.query_proj = nn.Sequential(nn.Linear(config.query_dim, d), nn.GELU(), nn.Linear(d, d))
            # The hidden state of an empty history: trained toward every target (what people consume).
            self.cold = nn.Parameter(torch.randn(d) * 0.02)

    @property
    def fuses_queries(self) -> bool:
        return bool(self.config.query_dim)

    def fuse(self, hidden: torch.Tensor | None, query: torch.Tensor | None = None,
             has_query: torch.Tensor | None = None) -> torch.Tensor:
        """The interest from a last hidden state and a typed query. hidden: N x d, or None for
        empty histories (the cold vector, N taken from query); query: N x query_dim language-model
        vectors (None: no query); has_query: N bools, False rows get no query term (None: all).
        Returns N x d. ValueError when the model does not fuse queries (query_dim 0) or neither
        hidden nor query is given."""
        if not self.config.query_dim:
            raise ValueError("this interest model has no query fusion (ModelConfig.query_dim is 0)")
        if hidden is None:
            if query is None:
                raise ValueError("fuse: neither a hidden state nor a query (give hidden, query or both)")
            hidden = self.cold.expand(len(query), -1)
        if query is None:
            return hidden
        if query.shape[-1] != self.config.query_dim:
            raise ValueError(f"query: dim {query.shape[-1]}, the model's query_dim is {self.config.query_dim}")
        term = self.query_proj(query)
        if has_query is not None:
            term = term * has_query.unsqueeze(-1).to(term.dtype)
        return hidden + term

    def item_table(self) -> torch.Tensor:
        """(n_items + 1) x d: every item's representation (row 0 = padding)."""
        table = 0
        if self.config.text_dim:
            table = table + self.text_proj(self.text)
        if self.config.use_ids:
            table = table + self.ids.weight
        return table

    def forward(self, items: torch.Tensor, strength: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """items/strength/gaps: B x L, left-padded with 0. Returns B x L x d hidden states."""
        return self.forward_vectors(self.item_table()[items], items == 0, strength, gaps)

    def forward_vectors(self, item_vectors: torch.Tensor, padding: torch.Tensor, strength: torch.Tensor,
                        gaps: torch.Tensor) -> torch.Tensor:
        """The same, from the items' rows of the item table (B x L x d) - how the served model
        runs: the rows are the item vectors stored in the catalog index."""
        length = item_vectors.shape[1]
        x = item_vectors * math.sqrt(self.config.d)
        x = x + self.position.weight[-length:] + self.strength(strength) + self.gap(gaps)
        x = self.dropout(x)
        h = self.encoder(x, mask=self._attention_mask(padding))
        return self.norm(h)

    def _attention_mask(self, padding: torch.Tensor) -> torch.Tensor:
        """(B*heads) x L x L, True = blocked: no look-ahead, no padding keys - except each
        position's own key, so a padding row is never fully blocked (that gives NaN, and NaN
        leaks into real rows through 0 x NaN in the attention sum)."""
        length = padding.shape[1]
        future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=padding.device), 1)
        pad_keys = padding.unsqueeze(1).expand(-1, length, -1)
        own = torch.eye(length, device=padding.device).bool()  # a float eye: ONNX Runtime has no bool EyeLike
        blocked = (future | pad_keys) & ~own
        return blocked.repeat_interleave(self.config.heads, dim=0)

    def interest(self, items: torch.Tensor, strength: torch.Tensor, gaps: torch.Tensor,
                 query: torch.Tensor | None = None) -> torch.Tensor:
        """B x d interest vectors: the last position's hidden state; with query fusion, the cold
        vector for rows with an empty history (all padding) and + query_proj(query) when query
        (B x query_dim) is given. Without fusion, query must be None (ValueError)."""
        h = self.forward(items, strength, gaps)[:, -1]
        if not self.config.query_dim:
            if query is not None:
                raise ValueError("this interest model has no query fusion (ModelConfig.query_dim is 0)")
            return h
        empty = (items == 0).all(dim=1, keepdim=True)
        h = torch.where(empty, self.cold.expand_as(h), h)
        return self.fuse(h, query)

    def scores(self, items, strength, gaps, query: torch.Tensor | None = None) -> torch.Tensor:
        """B x n_items: next-item scores of the interest (interest(); query optional, B x query_dim)."""
        return self.interest(items, strength, gaps, query) @ self.item_table()[1:].T


def encode_sequences(histories: list[list[int]], ratings: list[list[float]], stamps: list[list[int]],
                     max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded tensors of the last max_len events; item indices shift by one (0 = pad)."""
    b = len(histories)
    items = np.zeros((b, max_len), np.int64)
    strength = np.zeros((b, max_len), np.int64)
    gaps = np.zeros((b, max_len), np.int64)
    for row, (h, r, t) in enumerate(zip(histories, ratings, stamps, strict=True)):
        h, r, t = h[-max_len:], np.asarray(r[-max_len:], np.float32), np.asarray(t[-max_len:], np.int64)
        n = len(h)
        if n == 0:
            continue
        items[row, -n:] = np.asarray(h) + 1
        strength[row, -n:] = strength_bucket(r)
        gaps[row, -n:] = gap_bucket(np.diff(t, prepend=t[0]))
    return torch.from_numpy(items), torch.from_numpy(strength), torch.from_numpy(gaps)
