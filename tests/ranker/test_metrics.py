"""Rank metrics and the toy SJF queue behave as their definitions say."""

from __future__ import annotations

import numpy as np
import pytest

from llmfleet.ranker.metrics import kendall_tau, kendall_tau_batches, sjf_queue_latency, spearman


def test_tau_extremes_and_constant_order():
    truth = np.arange(50)
    assert kendall_tau(truth, truth) == pytest.approx(1.0)
    assert kendall_tau(-truth, truth) == pytest.approx(-1.0)
    assert kendall_tau(np.zeros(50), truth) == 0.0
    assert spearman(truth**2, truth) == pytest.approx(1.0)
    assert kendall_tau_batches(truth, truth, batch=32) == pytest.approx(1.0)


def test_batch_tau_tracks_overall_tau_for_noisy_scores():
    rng = np.random.default_rng(0)
    truth = rng.exponential(300, 640)
    noisy = np.log(truth) + rng.normal(0, 1.0, 640)
    assert abs(kendall_tau_batches(noisy, truth) - kendall_tau(noisy, truth)) < 0.05


def test_single_server_latency_by_hand():
    # Burst of three jobs of 3, 1, 2 tokens: SJF finishes at 1, 3, 6 -> mean 10/3.
    out = sjf_queue_latency({"reverse": [-1.0, 1.0, 0.0]}, [3, 1, 2], load=None, repeats=1)
    assert out["oracle"] == pytest.approx(10 / 3)
    assert out["reverse"] == pytest.approx((3 + 5 + 6) / 3)  # longest first


def test_sjf_orders_between_oracle_and_fcfs():
    rng = np.random.default_rng(1)
    truth = rng.exponential(200, 300)
    good = np.log(truth) + rng.normal(0, 0.5, 300)
    out = sjf_queue_latency({"good": good}, truth, load=0.9, repeats=3)
    assert out["oracle"] < out["good"] < out["fcfs"]
