"""The live plot, rendered on the server as PNG (matplotlib, Agg): answers per second and p99
per scrape interval, with the degraded share."""

from __future__ import annotations

import io
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from services.console.live import Window  # noqa: E402


def live_png(series: list[tuple[float, Window]], now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 3.6), dpi=100, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    ages = [at - now for at, _ in series]
    top.plot(ages, [w.throughput for _, w in series], "o-", color="#1f6feb", markersize=3, label="answers/s")
    top.set_ylabel("answers/s")
    right = top.twinx()
    right.plot(ages, [w.p99_ms if w.p99_ms is not None else float("nan") for _, w in series], "o-",
               color="#d1242f", markersize=3, label="p99 ms")
    right.set_ylabel("p99 ms")
    right.set_ylim(bottom=0)
    top.set_ylim(bottom=0)
    bottom.plot(ages, [100 * w.degraded_share if w.degraded_share is not None else float("nan")
                       for _, w in series], "o-", color="#9a6700", markersize=3)
    bottom.set_ylabel("degraded %")
    bottom.set_ylim(0, 100)
    bottom.set_xlabel("seconds ago")
    handles = top.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    top.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    if not series:
        top.text(0.5, 0.5, "waiting for two scrapes", transform=top.transAxes, ha="center", va="center")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()
