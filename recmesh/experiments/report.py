"""An experiment's report: each variant's online metrics with intervals, each against the control,
and the guardrail's decision - as a JSON-able dict, a text table and a PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from recmesh.experiments.outcomes import VariantSample
from recmesh.experiments.stats import Estimate, difference, guardrail, ratio

# name -> (numerator, denominator, higher is better); all are ratios of per-user sums.
METRICS: dict[str, tuple[str, str, bool]] = {
    "ctr_at_k": ("clicked", "answers", True),  # answers with a click on one of their k items
    "conversion": ("converted", "answers", True),  # answers followed by a purchase of a shown item
    "mrr": ("reciprocal_rank", "answers", True),  # mean reciprocal rank of the first clicked item
    "degraded_share": ("degraded", "answers", False),
}


def _clean(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def _estimate_dict(e: Estimate) -> dict:
    return {"value": _clean(e.value), "low": _clean(e.low), "high": _clean(e.high)}


def summarize(experiment: str, samples: dict[str, VariantSample], control: str, primary: str = "ctr_at_k",
              level: float = 0.95, guardrail_level: float = 0.99, min_users: int = 100) -> dict:
    """samples: variant -> its per-user sums (OutcomeLog.sample). The control is compared with
    every other variant on every metric (difference and interval at `level`); the guardrail
    tests the primary metric at guardrail_level. Raises KeyError naming a missing control."""
    if control not in samples:
        raise KeyError(f"control variant {control!r} has no answers yet (variants: {sorted(samples)})")
    if primary not in METRICS:
        raise KeyError(f"primary metric {primary!r} unknown; known: {', '.join(METRICS)}")
    variants = {}
    estimates: dict[str, dict[str, Estimate]] = {}
    for name, s in samples.items():
        estimates[name] = {m: ratio(getattr(s, num), getattr(s, den), level) for m, (num, den, _) in METRICS.items()}
        lat = s.latency_ms
        variants[name] = {
            "users": s.users, "answers": int(s.answers.sum()), "clicks": int(s.clicked.sum()),
            "conversions": int(s.converted.sum()),
            "latency_ms": ({"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))}
                           if len(lat) else None),
            "metrics": {m: _estimate_dict(e) for m, e in estimates[name].items()},
        }
    comparisons = {}
    for name in samples:
        if name == control:
            continue
        deltas = {m: _estimate_dict(difference(estimates[name][m], estimates[control][m])) for m in METRICS}
        g_t = ratio(getattr(samples[name], METRICS[primary][0]), samples[name].answers, guardrail_level)
        g_c = ratio(getattr(samples[control], METRICS[primary][0]), samples[control].answers, guardrail_level)
        decision = guardrail(g_t, g_c, (samples[name].users, samples[control].users), min_users,
                             higher_is_better=METRICS[primary][2])
        comparisons[name] = {"difference": deltas, "guardrail": {"stop": decision.stop, "reason": decision.reason}}
    return {"experiment": experiment, "control": control, "primary": primary, "level": level,
            "guardrail_level": guardrail_level, "variants": variants, "against_control": comparisons}


def text(summary: dict) -> str:
    """A fixed-width table: one row per variant, each metric as value [low, high]."""
    lines = [f"experiment {summary['experiment']} (control {summary['control']}, primary {summary['primary']}, "
             f"{summary['level']:.0%} intervals, delta method over users)"]
    head = f"{'variant':<14}{'users':>7}{'answers':>9}" + "".join(f"{m:>27}" for m in METRICS)
    lines.append(head)
    for name, v in summary["variants"].items():
        cells = []
        for m in METRICS:
            e = v["metrics"][m]
            cells.append("n/a" if e["value"] is None else f"{e['value']:.4f} [{e['low']:.4f}, {e['high']:.4f}]")
        lines.append(f"{name:<14}{v['users']:>7}{v['answers']:>9}" + "".join(f"{c:>27}" for c in cells))
    for name, c in summary["against_control"].items():
        d = c["difference"][summary["primary"]]
        if d["value"] is not None:
            lines.append(f"{name} - {summary['control']} on {summary['primary']}: {d['value']:+.4f} "
                         f"[{d['low']:+.4f}, {d['high']:+.4f}]; guardrail: "
                         f"{'STOP' if c['guardrail']['stop'] else 'keep'} ({c['guardrail']['reason']})")
    for name, v in summary["variants"].items():  # the updater's report adds which versions ranked them
        if v.get("ranker_versions"):
            ranked = ", ".join(f"{version or 'unranked'} {n}" for version, n in v["ranker_versions"].items())
            lines.append(f"{name} ranked by: {ranked}")
    for name, v in summary["variants"].items():  # the updater's report: the interest model each variant names
        if "interest_model_version" in v:
            encoded = ", ".join(f"{version or 'no interest'} {n}"
                                for version, n in v.get("encoder_versions", {}).items())
            lines.append(f"{name} interest model: {v['interest_model_version'] or 'default'}"
                         + (f"; encoded by: {encoded}" if encoded else ""))
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> Path:
    """One panel per metric: each variant's value with its interval; a last one with each
    variant minus the control on the primary metric (interval; red where the guardrail stops it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    fig, axes = plt.subplots(1, len(METRICS) + 1, figsize=(4 * (len(METRICS) + 1), 3.2))
    for ax, metric in zip(axes, METRICS, strict=False):
        vals = [summary["variants"][n]["metrics"][metric] for n in names]
        ys = [v["value"] if v["value"] is not None else np.nan for v in vals]
        err = [[(y - v["low"]) if v["low"] is not None else 0 for y, v in zip(ys, vals, strict=True)],
               [(v["high"] - y) if v["high"] is not None else 0 for y, v in zip(ys, vals, strict=True)]]
        colors = ["#4c72b0" if n == summary["control"] else "#dd8452" for n in names]
        ax.bar(names, ys, yerr=err, capsize=6, color=colors)
        ax.set_title(metric)
    # The last panel: each variant minus the control on the primary metric, and the guardrail's call.
    ax, primary = axes[-1], summary["primary"]
    others = list(summary["against_control"])
    for x, name in enumerate(others):
        d = summary["against_control"][name]["difference"][primary]
        if d["value"] is not None:
            stop = summary["against_control"][name]["guardrail"]["stop"]
            ax.errorbar([x], [d["value"]], yerr=[[d["value"] - d["low"]], [d["high"] - d["value"]]], fmt="o",
                        capsize=6, color="#c44e52" if stop else "#55a868")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(others)), [f"{n} - {summary['control']}" for n in others])
    ax.set_xlim(-0.5, max(len(others), 1) - 0.5)
    ax.set_title(f"{primary}: difference (red: guardrail stops)")
    fig.suptitle(f"experiment {summary['experiment']}: {summary['level']:.0%} intervals")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
