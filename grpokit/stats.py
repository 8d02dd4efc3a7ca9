"""Small statistics for comparing runs: t-intervals over seeds, paired differences, unbiased pass@k, AUC.

Pure functions of numbers (no numpy, no scipy), each tested against hand-computed values in
tests/test_stats.py. Why a t-interval and not a bootstrap: with 3-5 seeds a bootstrap resamples
3-5 numbers and its interval is too narrow (it cannot see beyond the values it has); the Student t
interval is exact for normal errors and honest about how few seeds there are (t = 4.30 at 3 seeds).
"""

from __future__ import annotations

import math


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (bisection on t_cdf).

    >>> round(t_quantile(0.975, 2), 4)  # closed form for df=2: (2p-1)/sqrt(2p(1-p)): 4.3027
    4.3027
    """
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2.0


def mean_interval(values: list[float], confidence: float = 0.95) -> dict:
    """Mean of `values` and its Student-t confidence interval (seeds as independent draws).

    Returns {"mean", "low", "high", "sd", "n", "values"}; with fewer than 2 values low/high/sd are None.

    >>> r = mean_interval([0.5, 0.6, 0.7])  # sd 0.1, se 0.1/sqrt(3), t(0.975, 2) = 4.3027
    >>> round(r["low"], 4), round(r["high"], 4)
    (0.3516, 0.8484)
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "sd": None, "n": 0, "values": []}
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "sd": None, "n": 1, "values": xs}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": n, "values": xs}


def paired_difference(values: list[float], reference: list[float], confidence: float = 0.95) -> dict:
    """Mean of the per-seed differences values[i] - reference[i] with its t-interval, and whether it excludes 0.

    Pairing (same seed, same warm-up, same data order) removes what the two runs share, so the
    interval is narrower than the difference of two unpaired intervals.
    """
    if len(values) != len(reference):
        raise ValueError(f"paired_difference needs as many values as reference values ({len(values)} vs "
                         f"{len(reference)})")
    result = mean_interval([a - b for a, b in zip(values, reference)], confidence)
    result["excludes_zero"] = result["low"] is not None and (result["low"] > 0 or result["high"] < 0)
    return result


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating LLMs trained on code").

    pass@k = 1 - C(n-c, k) / C(n, k): the chance that k samples drawn without replacement from the
    n contain a correct one. Taking "some of the first k is correct" instead is unbiased only for
    n = k and has a higher variance; 1 - (1 - c/n)^k is biased (it draws with replacement).
    The product form avoids huge binomials.

    >>> pass_at_k(4, 1, 2)  # of the 6 pairs of 4 samples, 3 hold the correct one
    0.5
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_none = 1.0
    for i in range(n - c + 1, n + 1):
        prob_none *= 1.0 - k / i
    return 1.0 - prob_none


def area_under_curve(xs: list[float], ys: list[float], until: float | None = None) -> float:
    """Trapezoid area under y(x) from xs[0] to `until` (default the last x), interpolating linearly at `until`.

    xs must be increasing. Divided by (until - xs[0]) it is the curve's mean height over that span,
    which is how `compare` puts methods with different training times on one footing.
    """
    if len(xs) != len(ys) or not xs:
        raise ValueError("area_under_curve needs as many xs as ys, at least one")
    end = xs[-1] if until is None else until
    if end < xs[0] or end > xs[-1] + 1e-9:
        raise ValueError(f"until={end} lies outside the curve's x range [{xs[0]}, {xs[-1]}]")
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 >= end:
            break
        if x1 > end:  # cut the last segment at `end`
            y1 = y0 + (y1 - y0) * (end - x0) / (x1 - x0)
            x1 = end
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area


def binomial_standard_error(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent prompts: sqrt(p(1-p)/n)."""
    return math.sqrt(p * (1.0 - p) / n) if n else float("nan")
