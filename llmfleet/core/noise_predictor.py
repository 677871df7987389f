"""A stand-in output-length predictor whose ranking quality (Kendall's tau) is a dial.

Until a learned ranker is plugged in, `ltr`, `alise` and `llmfleet` rank requests with this
noise model. It needs the true output length, so it only exists inside simulators.

The model (a Gaussian copula): with ``z = (log(1 + L) - mu) / sigma`` the standardised log of
the true length ``L``, the score is ``s = rho * z + sqrt(1 - rho**2) * e`` with ``e ~ N(0, 1)``
drawn deterministically from ``(seed, request_id)``. For a Gaussian ``z`` the Kendall's tau
between ``s`` and ``L`` is ``(2 / pi) * asin(rho)``, so ``rho = sin(pi * tau / 2)``. Log
lengths are close to Gaussian on the Azure traces, so the measured tau lands near the target
(the tests check it). ``tau=1`` is a perfect ranking, ``tau=0`` is pure noise.

The length estimate is the conditional distribution of the log length given the score:
mean ``mu + sigma * rho * s`` and spread ``sigma * sqrt(1 - rho**2)``, giving a median and
a p90 for memory-aware policies.

Re-estimates: with a `tau_curve` of (generated tokens k, tau) points, a request asked about
again after k generated tokens gets the same model applied to its *remaining* length, at the
tau the curve gives for k (interpolated; `tau` itself at k = 0; the last point beyond it) and
with fresh noise per (request, k). The curve is measured, not assumed: `from_eval` reads it from
`llmfleet ranker eval --generated-tokens` output, the learned ranker's remaining-length tau on
real answer prefixes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from llmfleet.core.prediction import LengthEstimate, PredictionInput

_STD_NORMAL = NormalDist()
_Z90 = _STD_NORMAL.inv_cdf(0.9)


@dataclass
class NoisyOraclePredictor:
    """`LengthPredictor` that corrupts the true length to a chosen Kendall's tau."""

    tau: float = 0.6
    seed: int = 0
    log_mean: float = math.log(1 + 129)
    log_std: float = 1.2
    name: str = "noise"
    tau_curve: tuple[tuple[int, float], ...] = ()  # (generated tokens, remaining-length tau), k > 0

    def __post_init__(self) -> None:
        if not -1.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must be within [-1, 1], got {self.tau}")
        if self.log_std <= 0:
            raise ValueError("log_std must be positive")
        self.name = f"noise(tau={self.tau:g}{', re-estimating' if self.tau_curve else ''})"
        self._rho = math.sin(math.pi * self.tau / 2.0)
        self._resid = math.sqrt(max(0.0, 1.0 - self._rho**2))
        self.tau_curve = tuple(sorted((int(k), float(t)) for k, t in self.tau_curve if int(k) > 0))
        if any(not -1.0 <= t <= 1.0 for _, t in self.tau_curve):
            raise ValueError("tau_curve values must be within [-1, 1]")

    @property
    def reestimates(self) -> bool:
        return bool(self.tau_curve)

    def tau_at(self, generated: int) -> float:
        """The ranking quality after `generated` tokens: `tau` at 0, the curve after."""
        points = [(0, self.tau), *self.tau_curve]
        if generated >= points[-1][0]:
            return points[-1][1]
        for (k0, t0), (k1, t1) in zip(points, points[1:], strict=False):
            if k0 <= generated <= k1:
                return t0 + (t1 - t0) * (generated - k0) / (k1 - k0)
        return self.tau

    @classmethod
    def from_eval(cls, path: str, lengths: Iterable[int], seed: int = 0) -> NoisyOraclePredictor:
        """Fitted to a workload's lengths, with tau and the re-estimate curve of a ranker's eval.json."""
        import json
        from pathlib import Path

        data = json.loads(Path(path).read_text(encoding="utf-8"))
        curve = data.get("remaining_tau") or {}
        return cls.fitted(lengths, tau=float(curve.get("0", data["kendall_tau"])), seed=seed,
                          tau_curve=tuple((int(k), float(t)) for k, t in curve.items() if int(k) > 0))  # fmt: skip

    @classmethod
    def fitted(
        cls, lengths: Iterable[int], tau: float = 0.6, seed: int = 0, tau_curve: tuple[tuple[int, float], ...] = ()
    ) -> NoisyOraclePredictor:
        """Match `log_mean`/`log_std` to a workload's output lengths (a simulator knows them)."""
        logs = [math.log1p(max(0, n)) for n in lengths]
        if len(logs) < 2:
            return cls(tau=tau, seed=seed, tau_curve=tau_curve)
        mean = sum(logs) / len(logs)
        std = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1)) or 1.0
        return cls(tau=tau, seed=seed, log_mean=mean, log_std=std, tau_curve=tau_curve)

    def _noise(self, request_id: str, generated: int = 0) -> float:
        key = f"{self.seed}:{request_id}" if not generated else f"{self.seed}:{request_id}:{generated}"
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        u = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
        return _STD_NORMAL.inv_cdf(u)

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        out = []
        for item in items:
            if item.true_output_tokens is None:
                raise ValueError(
                    f"request {item.request_id!r}: the noise stand-in needs true_output_tokens "
                    "(it only works inside a simulator; use a learned ranker for live traffic)"
                )
            k = item.generated_tokens if self.tau_curve else 0
            rho = self._rho if not k else math.sin(math.pi * self.tau_at(k) / 2.0)
            resid = math.sqrt(max(0.0, 1.0 - rho**2))
            left = max(item.true_output_tokens - k, 1)  # what is still to come (all of it at k = 0)
            z = (math.log1p(left) - self.log_mean) / self.log_std
            score = rho * z + resid * self._noise(item.request_id, k)
            centre = self.log_mean + self.log_std * rho * score
            spread = self.log_std * resid
            expected = max(1.0, math.expm1(centre))
            upper = max(expected, math.expm1(centre + _Z90 * spread))
            out.append(LengthEstimate(score=score, expected_tokens=k + expected, upper_tokens=k + upper, at_generated=k))
        return out


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-b (scipy when present; used by tests and benchmarks)."""
    from scipy.stats import kendalltau

    return float(kendalltau(xs, ys).statistic)
