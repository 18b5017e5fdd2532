"""Per-variant online metrics with confidence intervals, and the guardrail that stops a variant.

Users are the unit of assignment, but the metrics are per impression (an answer shown): a user's
answers are not independent of each other, so treating them as independent trials understates
the variance. Each metric is a ratio of per-user sums (clicked answers / answers), and its
variance comes from the delta method over users - Deng, Knoblich & Lu, "Applying the Delta
Method in Metric Analytics: A Practical Guide with Novel Ideas", KDD 2018, section 3.2:

    Var(sum X / sum Y) ~= (s_X^2 - 2 R s_XY + R^2 s_Y^2) / (n * mean(Y)^2),   R = sum X / sum Y

with n users and s the sample (co)variances of the per-user sums. Variants are independent
samples, so the variance of a difference is the sum of the two."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class Estimate:
    """value with a two-sided confidence interval [low, high] at `level`; variance is the delta
    method's (0 when it cannot be estimated: fewer than two users or no answers)."""

    value: float
    low: float
    high: float
    variance: float
    level: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def _interval(value: float, variance: float, level: float) -> Estimate:
    half = float(norm.ppf(0.5 + level / 2.0)) * math.sqrt(max(variance, 0.0))
    return Estimate(value, value - half, value + half, variance, level)


def ratio(numerators: np.ndarray, denominators: np.ndarray, level: float = 0.95) -> Estimate:
    """sum(numerators) / sum(denominators) over users (one entry each, same order), e.g. clicked
    answers / answers. Empty or all-zero denominators: value nan, interval (nan, nan)."""
    x = np.asarray(numerators, np.float64)
    y = np.asarray(denominators, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"per-user arrays of one shape expected, got {x.shape} and {y.shape}")
    n = len(x)
    total = float(y.sum())
    if n == 0 or total <= 0.0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, level)
    r = float(x.sum()) / total
    if n < 2:
        return Estimate(r, r, r, 0.0, level)
    cov = np.cov(np.stack([x, y]), ddof=1)
    mean_y = total / n
    variance = (cov[0, 0] - 2.0 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * mean_y * mean_y)
    return _interval(r, float(variance), level)


def difference(treatment: Estimate, control: Estimate) -> Estimate:
    """treatment - control, at control's level; independent samples (disjoint users)."""
    return _interval(treatment.value - control.value, treatment.variance + control.variance, control.level)


@dataclass(frozen=True)
class Decision:
    stop: bool
    reason: str


def guardrail(treatment: Estimate, control: Estimate, users: tuple[int, int], min_users: int,
              higher_is_better: bool = True) -> Decision:
    """Stop the treatment when its primary metric is significantly worse than the control's:
    the whole confidence interval of (treatment - control) on the losing side of zero, with at
    least min_users users in each arm (the interval is not trusted before). Checked repeatedly
    while an experiment runs, a fixed-level test rejects more often than its level says; keep
    the level high (0.99 by default in the serving settings) for that reason."""
    if min(users) < min_users:
        return Decision(False, f"waiting: {min(users)} of {min_users} users in the smaller arm")
    delta = difference(treatment, control)
    worse = delta.high < 0.0 if higher_is_better else delta.low > 0.0
    if worse:
        return Decision(True, f"significantly worse: {delta.value:+.4f} [{delta.low:+.4f}, {delta.high:+.4f}] "
                              f"at {delta.level:.0%}")
    return Decision(False, f"not worse: {delta.value:+.4f} [{delta.low:+.4f}, {delta.high:+.4f}] at {delta.level:.0%}")
