"""benchmarks/plan_70b.py: its arithmetic on hand-computed inputs."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plan_70b  # noqa: E402


def test_seconds_parses_the_recorded_figures():
    assert plan_70b.seconds("~60 s") == 60 and plan_70b.seconds("239 s") == 239
    assert plan_70b.seconds("42 min (22 + 20, interrupted and resumed)") == 2520


def test_flops_by_hand():
    assert plan_70b.flops(1e9, 1000, 24) == pytest.approx(2 * 1e9 * 1024)


def test_gpu_seconds_by_hand():
    # 1e4 prefill + 100 decode tokens on the 70B: 2 · 70.6e9 · 10100 = 1.42612e15 FLOPs over 8 × 989e12 × 0.4
    compute, floor = plan_70b.gpu_seconds(1e4, 100, 10, 8, mfu=0.4)
    assert compute == pytest.approx(1.42612e15 / (8 * 989e12 * 0.4)) == pytest.approx(0.45061, rel=1e-4)
    # 10 decode steps, each reading 141.2 GB from 8 HBMs at 3.35 TB/s
    assert floor == pytest.approx(10 * 141.2e9 / (8 * 3.35e12)) == pytest.approx(0.052687, rel=1e-4)


def test_stage_token_counts_by_hand():
    stages = {s["name"].split(" (")[0].split(",")[0]: s for s in plan_70b.stages()}
    assert stages["activations"]["prefill"] == pytest.approx(256 * 44.2)
    # selection: baseline 64 + 64, prior 3 × 32, screen 24 × 4, finalists 8 × 64, KL screen 8, induce 64, KL 56
    assert stages["selection"]["prefill"] == pytest.approx(960 * 44.2)
    # evaluation: 5 conditions × (64 first-token prompts + 48 docs × 128 + 200 MC × 100); generation 320 sequences
    # per length (prefill 44.2 each); judge 320 × (44.2 + n + 200) per length
    prefill = 5 * (64 * 44.2 + 48 * 128 + 200 * 100) + 2 * 320 * 44.2 + 320 * (244.2 + 24) + 320 * (244.2 + 128)
    assert stages["evaluation"]["prefill"] == pytest.approx(prefill)
    assert stages["evaluation"]["decode"] == 320 * (24 + 128) and stages["evaluation"]["steps"] == 10 * (24 + 128)


def test_activation_bytes_by_hand():
    assert plan_70b.activation_bytes(256, 80, 5, 8192) == 1_677_721_600
    assert plan_70b.activation_bytes(1, 1, 1, 10, bytes_per=4) == 40


def test_inputs_are_the_recorded_ones():
    assert plan_70b.cpu_flops() == 181e9
    assert plan_70b.figures("optimize")["qwen2.5-coder-1.5b-instruct s per trial"] == "16 s"
