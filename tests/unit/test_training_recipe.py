"""The training samples of the reference recipe: every train target exactly once per epoch."""

from collections import Counter

import pytest

from recmesh.tools.eval.datasets import Split
from recmesh.tools.eval.train import TrainConfig, training_samples


def _split(lengths: dict[str, int]) -> Split:
    train = {u: list(range(n)) for u, n in lengths.items()}
    return Split(train, {u: 0 for u in lengths}, {u: 0 for u in lengths}, 200,
                 {u: list(range(n + 1)) for u, n in lengths.items()}, {u: [1.0] * (n + 1) for u, n in lengths.items()})


def _targets(s: Split, samples, last_only: bool) -> Counter:
    out = Counter()
    for user, start, end in samples:
        positions = [end - 1] if last_only else range(start + 1, end)
        out.update((user, p) for p in positions)
    return out


@pytest.mark.parametrize("mode", ["prefixes", "windows"])
def test_every_target_once_per_epoch(mode):
    s = _split({"a": 120, "b": 7, "c": 2, "d": 51})
    samples = training_samples(s, max_len=50, samples=mode)
    targets = _targets(s, samples, last_only=mode == "prefixes")
    expected = Counter((u, p) for u, items in s.train.items() for p in range(1, len(items)))
    assert targets == expected  # each position >= 1 is a target exactly once, the first never
    for _user, start, end in samples:
        assert end - start <= 51  # at most max_len inputs + the target


def test_prefixes_hold_the_last_max_len_events_before_the_target():
    s = _split({"a": 80})
    samples = training_samples(s, max_len=50, samples="prefixes")
    assert ("a", 0, 2) in samples and ("a", 29, 80) in samples and len(samples) == 79


def test_unknown_mode_names_the_setting():
    with pytest.raises(ValueError, match="TrainConfig.samples"):
        training_samples(_split({"a": 5}), 50, "all")


def test_reference_recipe_defaults():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.batch, cfg.patience, cfg.negatives, cfg.time_cap_s, cfg.samples) == \
        (1e-3, 256, 10, 0, None, "windows")


def test_each_step_holds_about_batch_targets():
    import numpy as np

    from recmesh.tools.eval.train import step_batches

    rng = np.random.default_rng(0)
    targets = rng.integers(1, 51, size=400)
    order = rng.permutation(400)
    steps = step_batches(order, targets, 256)
    assert np.array_equal(np.concatenate(steps), order)  # every sample once, in order
    sums = [int(targets[part].sum()) for part in steps]
    assert all(256 - 50 < x < 256 + 50 for x in sums[:-1]) and 0 < sums[-1] < 256 + 50
    assert [len(p) for p in step_batches(np.arange(10), np.ones(10, int), 4)] == [4, 4, 2]
