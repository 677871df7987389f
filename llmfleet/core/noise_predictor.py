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

    def __post_init__(self) -> None:
        if not -1.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must be within [-1, 1], got {self.tau}")
        if self.log_std <= 0:
            raise ValueError("log_std must be positive")
        self.name = f"noise(tau={self.tau:g})"
        self._rho = math.sin(math.pi * self.tau / 2.0)
        self._resid = math.sqrt(max(0.0, 1.0 - self._rho**2))

    @classmethod
    def fitted(cls, lengths: Iterable[int], tau: float = 0.6, seed: int = 0) -> NoisyOraclePredictor:
        """Match `log_mean`/`log_std` to a workload's output lengths (a simulator knows them)."""
        logs = [math.log1p(max(0, n)) for n in lengths]
        if len(logs) < 2:
            return cls(tau=tau, seed=seed)
        mean = sum(logs) / len(logs)
        std = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1)) or 1.0
        return cls(tau=tau, seed=seed, log_mean=mean, log_std=std)

    def _noise(self, request_id: str) -> float:
        digest = hashlib.blake2b(f"{self.seed}:{request_id}".encode(), digest_size=8).digest()
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
            z = (math.log1p(item.true_output_tokens) - self.log_mean) / self.log_std
            score = self._rho * z + self._resid * self._noise(item.request_id)
            centre = self.log_mean + self.log_std * self._rho * score
            spread = self.log_std * math.sqrt(max(0.0, 1.0 - self._rho**2))
            expected = max(1.0, math.expm1(centre))
            upper = max(expected, math.expm1(centre + _Z90 * spread))
            out.append(LengthEstimate(score=score, expected_tokens=expected, upper_tokens=upper))
        return out


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-b (scipy when present; used by tests and benchmarks)."""
    from scipy.stats import kendalltau

    return float(kendalltau(xs, ys).statistic)
