"""The zero-shot text model: an interest model built, not trained, for a catalog with too few
events to learn from (none at all: cold start). It serves through the same artifact, Triton
models and catalog as a trained one (`export_served`), so nothing else changes when `recmesh
train` later replaces it with a learned model.

Its catalog space IS the language model's: the item projection is the identity (text_proj:
Linear(I, +SHIFT) -> GELU -> Linear(I, -SHIFT); with unit text vectors every GELU input is
>= SHIFT - 1 = 9, where GELU(x) = x exactly in float32), no ID embeddings - so the session
direction and the closest-recent-item similarity are MiniLM cosines to what the user just
viewed, and a new item is placed by its text alone. The interest is one transformer layer whose
attention is uniform over the history (query and key weights 0, values and output the identity)
and whose feed-forward adds nothing (output weights 0), no position / strength / gap
embeddings: interest = LayerNorm(v_newest + mean of the history's text vectors) - half what was
just viewed, half the whole history - as a text-space direction (scored by dot product, as
always). Event types do not weigh in; a learned model reads them."""

from __future__ import annotations

import math

import numpy as np
import torch

from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel

SHIFT = 10.0
HEADS = 2  # any divisor of the text dim works: attention is uniform whatever the heads
MAX_LEN = 50


@torch.no_grad()
def zero_shot_model(text_dim: int, n_items: int, max_len: int = MAX_LEN) -> SequenceInterestModel:
    """The model (eval mode, d = text_dim, use_ids False) described in the module docstring.
    text_dim: the language model's dimension (384 for all-MiniLM-L6-v2); n_items: the catalog's
    size (recorded only: without ID embeddings nothing depends on it)."""
    if text_dim % HEADS:
        raise ValueError(f"text_dim {text_dim} is not divisible by {HEADS} heads")
    config = ModelConfig(n_items=n_items, text_dim=text_dim, use_ids=False, d=text_dim, layers=1, heads=HEADS,
                         max_len=max_len, dropout=0.0)
    model = SequenceInterestModel(config, None)
    eye = torch.eye(text_dim)
    first, last = model.text_proj[0], model.text_proj[2]
    first.weight.copy_(eye)
    first.bias.fill_(SHIFT)
    last.weight.copy_(eye)
    last.bias.fill_(-SHIFT)
    for table in (model.position, model.gap, model.strength):
        table.weight.zero_()
    for layer in model.encoder.layers:
        attention = layer.self_attn
        w = torch.zeros(3 * text_dim, text_dim)
        w[2 * text_dim:] = eye  # query and key 0: every allowed key weighs the same; value = identity
        attention.in_proj_weight.copy_(w)
        attention.in_proj_bias.zero_()
        attention.out_proj.weight.copy_(eye)
        attention.out_proj.bias.zero_()
        layer.linear2.weight.zero_()
        layer.linear2.bias.zero_()
    return model.eval()


def expected_interest(text_vectors: np.ndarray) -> np.ndarray:
    """What the zero-shot model gives for a history of unit text vectors (oldest first), up to a
    small LayerNorm epsilon: the reference its test checks against."""
    d = text_vectors.shape[1]

    def norm(x: np.ndarray) -> np.ndarray:
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)

    x = text_vectors * math.sqrt(d)
    h = x[-1] + norm(x).mean(0)
    return norm(h)
