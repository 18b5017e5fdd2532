"""The learned interest model: padding never produces NaN, and training learns a pattern."""

import torch

from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel, encode_sequences
from recmesh.tools.eval import datasets
from recmesh.tools.eval.train import TrainConfig, sampled_softmax_loss, train


def test_left_padded_sequences_score_finitely():
    model = SequenceInterestModel(ModelConfig(20, d=16, max_len=8)).eval()
    tensors = encode_sequences([[1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11]], [[4, 5], [3] * 9], [[1, 2], [1] * 9], 8)
    scores = model.scores(*tensors)
    assert scores.shape == (2, 20) and torch.isfinite(scores).all()


def test_sampled_softmax_ignores_accidental_hits_and_prefers_the_target():
    table = torch.eye(3) * 5
    only_item0 = torch.tensor([1.0, 0.0, 0.0])
    # Every sampled negative is the target itself: all masked, nothing left to push against.
    hits = sampled_softmax_loss(table[:1] / 5, torch.tensor([0]), table, torch.log(only_item0), only_item0, 16)
    assert hits.item() == 0.0
    uniform = torch.full((3,), 1 / 3)
    good = sampled_softmax_loss(torch.eye(3), torch.arange(3), table, torch.log(uniform), uniform, 64)
    bad = sampled_softmax_loss(torch.eye(3), torch.tensor([1, 2, 0]), table, torch.log(uniform), uniform, 64)
    assert good < bad


def test_training_learns_a_cyclic_pattern():
    # Everyone walks the items in order (item k is followed by k + 1): the next item is
    # always predictable; 12 steps over 20 items, so no item repeats within a user.
    rows = [datasets.Interaction(f"u{u}", f"i{(u + t) % 20}", t) for u in range(40) for t in range(12)]
    data = datasets.Dataset("cycle", rows, [f"i{n}" for n in range(20)], [f"item {n}" for n in range(20)])
    s = datasets.split(data)
    _, report = train(s, ModelConfig(20, d=16, layers=1, heads=1, max_len=8, dropout=0.0), None,
                      TrainConfig(epochs=60, batch=16, lr=1e-2, patience=60, time_cap_s=60, negatives=0, threads=1),
                      "cycle")
    assert report["valid_ndcg"] > 0.9, report["history"][-1]
