"""The 70B plan on paper (docs/scale-out.md, "A 70B model on 8 GPUs"): each stage's measured CPU time on the 1.5B,
turned into FLOPs and scaled by parameters to a 70B on 8×H100. Prints the table; every input is a named constant
with its source. Usage: python benchmarks/plan_70b.py

Method: a stage that took ``t`` s on the CPU is taken to have done ``t · CPU_FLOPS`` FLOPs (CPU_FLOPS: the measured
bf16 ``linear`` throughput), i.e. ``t · CPU_FLOPS / (2 · P_1.5B)`` equivalent token-forwards; the 70B does the same
token-forwards at ``2 · P_70B`` FLOPs each, on ``gpus`` H100s at ``mfu`` of the bf16 dense peak. Compute only: the
weights' load (141 GB) and decode's memory bound are separate lines (docs/scale-out.md).
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ROOT / "docs/results/data/timings.json"
P_SMALL = 1.54e9  # Qwen2.5-Coder-1.5B-Instruct parameters (model card)
P_70B = 70.6e9  # Llama-3-70B: 80 layers, d = 8192
LAYERS_70B, D_70B = 80, 8192
H100_BF16 = 989e12  # dense bf16 peak FLOP/s (NVIDIA H100 SXM datasheet, no sparsity)
# (stage, timings.json key, figure, multiplier of the figure, engine, GPUs busy, MFU)
STAGES = (
    ("activations (256 train prompts)", "activations.train", "seconds", 1,
     "transformers + device_map (one GPU busy at a time)", 1, 0.4),
    ("selection (115 candidates, fast)", "selection.kl-screen", "fast", 1,
     "transformers + device_map, batched hooks", 1, 0.4),
    ("search (200 trials)", "optimize", "qwen2.5-coder-1.5b-instruct s per trial", 200,
     "transformers + device_map, batched hooks", 1, 0.4),
    ("evaluation (ablate + 3 controls, generation + judge)", "evaluate", "wall", 1,
     "vLLM TP 8 for bakeable conditions (hooked ones: transformers)", 8, 0.05),
)


def seconds(text: str) -> float:
    """'~60 s', '239 s', '16 s', '42 min (...)' → seconds."""
    value, unit = text.lstrip("~").split()[:2]
    return float(value) * (60 if unit.startswith("min") else 1)


def cpu_flops() -> float:
    return float(figures("dtype")["bfloat16"]) * 1e9


def figures(key: str) -> dict:
    records = json.loads(TIMINGS.read_text())["tables"]["timings"]["records"]
    return next(r for r in records if r["key"] == key)["figures"]


def stage_hours(cpu_seconds: float, cpu_flops_per_s: float, gpus: int, mfu: float) -> float:
    """Hours on ``gpus`` H100s at ``mfu`` for the 70B of a stage that took ``cpu_seconds`` on the 1.5B (module)."""
    flops_70b = cpu_seconds * cpu_flops_per_s * P_70B / P_SMALL
    return flops_70b / (gpus * H100_BF16 * mfu) / 3600


def activation_bytes(n_prompts: int, layers: int, positions: int, d: int, bytes_per: int = 2) -> int:
    return n_prompts * layers * positions * d * bytes_per


def main() -> None:
    flops = cpu_flops()
    print(f"CPU bf16 linear throughput {flops / 1e9:.0f} GFLOP/s (timings.json 'dtype'); 70B/1.5B = "
          f"{P_70B / P_SMALL:.1f}x parameters\n")
    print("| stage | 1.5B CPU s | equiv. token-forwards | 70B GPU-min | wall min | engine |")
    print("|---|---|---|---|---|---|")
    for name, key, figure, times, engine, gpus, mfu in STAGES:
        t = seconds(figures(key)[figure]) * times
        hours = stage_hours(t, flops, gpus, mfu)
        print(f"| {name} | {t:.0f} | {t * flops / (2 * P_SMALL):.2e} | {hours * gpus * 60:.1f} | {hours * 60:.1f} | {engine} "
              f"(MFU {mfu}) |")
    size = activation_bytes(256, LAYERS_70B, 5, D_70B)
    print(f"\nactivations stored: 256 prompts × {LAYERS_70B} layers × 5 positions × {D_70B} × 2 B = {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
