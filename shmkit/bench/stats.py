"""Median, spread and stability warnings of a benchmark's values (pyperf's checks)."""
from __future__ import annotations

import statistics

SPREAD_WARN = 0.10          # pyperf: "the standard deviation is more than 10% of the mean"


def summarise(values: list[float], seconds: list[float], min_time: float) -> dict:
    """values: the metric of every value (B/s or s per round trip); seconds: how long each
    value lasted."""
    if not values:
        return {"median": None, "mean": None, "stdev": None, "min": None, "max": None,
                "rel_stdev": None, "warnings": ["no value"]}
    med = statistics.median(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    rel = sd / mean if mean else 0.0
    warnings = []
    if rel > SPREAD_WARN:
        warnings.append(f"the standard deviation ({sd / mean * 100:.0f}% of the mean) is above "
                        f"{SPREAD_WARN * 100:.0f}%: unstable")
    if len(values) > 1 and mean and max(values) > 1.5 * mean:
        warnings.append(f"the maximum is {(max(values) / mean - 1) * 100:.0f}% above the mean")
    if len(values) > 1 and mean and min(values) < 0.5 * mean:
        warnings.append(f"the minimum is {(1 - min(values) / mean) * 100:.0f}% below the mean")
    short = min(seconds)
    if short < 0.5 * min_time:
        warnings.append(f"the shortest value lasted only {short * 1e3:.2f} ms "
                        f"(calibrated for {min_time * 1e3:.0f} ms)")
    q = statistics.quantiles(values, n=4) if len(values) >= 4 else [min(values), med, max(values)]
    return {"median": med, "mean": mean, "stdev": sd, "min": min(values), "max": max(values),
            "q1": q[0], "q3": q[-1], "rel_stdev": rel, "warnings": warnings}
