"""benchmarks/plan_70b.py: its arithmetic on hand-computed inputs."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plan_70b  # noqa: E402


def test_seconds_parses_the_recorded_figures():
    assert plan_70b.seconds("~60 s") == 60 and plan_70b.seconds("239 s") == 239
    assert plan_70b.seconds("42 min (22 + 20, interrupted and resumed)") == 2520


def test_stage_hours_by_hand():
    # 3600 s at 1e11 FLOP/s on the 1.5B = 3.6e14 FLOPs; × 70.6/1.54 = 1.6504e16; over 2 GPUs × 989e12 × 0.5
    expected = 3.6e14 * 70.6e9 / 1.54e9 / (2 * 989e12 * 0.5) / 3600
    assert plan_70b.stage_hours(3600, 1e11, 2, 0.5) == pytest.approx(expected)
    assert expected == pytest.approx(4.6355e-3, rel=1e-4)


def test_activation_bytes_by_hand():
    assert plan_70b.activation_bytes(256, 80, 5, 8192) == 1_677_721_600
    assert plan_70b.activation_bytes(1, 1, 1, 10, bytes_per=4) == 40


def test_inputs_are_the_recorded_ones():
    assert plan_70b.cpu_flops() == 181e9
    assert plan_70b.figures("optimize")["qwen2.5-coder-1.5b-instruct s per trial"] == "16 s"
