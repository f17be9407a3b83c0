"""The 70B plan on paper (docs/scale-out.md, "A 70B model on 8 GPUs"): each stage's work counted in tokens, turned
into FLOPs, timed on 8×H100, and the same count checked against the recorded CPU times. Usage:
python benchmarks/plan_70b.py

Method: a stage processes ``prefill`` prompt tokens in forwards (``2·P`` FLOPs each; a forward + backward, the
attribution prior, counts 3 forwards) and ``decode`` generated tokens in ``steps`` batched decode steps. Compute
time = FLOPs / (GPUs × peak × MFU); a decode step also reads every weight once, so it takes at least weight bytes /
(HBM bandwidth of the GPUs reading at once); the stage takes the larger. Validation: the same token counts ×
``2·P_1.5B`` / the measured CPU bf16 throughput against the recorded CPU seconds (the factor is printed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ROOT / "docs/results/data/timings.json"
P_SMALL = 1.54e9  # Qwen2.5-Coder-1.5B-Instruct parameters (model card)
P_70B = 70.6e9  # Llama-3-70B: 80 layers, d = 8192
LAYERS_70B, D_70B = 80, 8192
WEIGHT_BYTES_70B = 2 * P_70B  # bf16
H100_BF16 = 989e12  # dense bf16 peak FLOP/s (NVIDIA H100 SXM datasheet, no sparsity)
H100_HBM = 3.35e12  # B/s (H100 SXM datasheet)
MFU = 0.4  # assumed for prefill-type forwards
# mean prompt tokens with the chat template: the bundled tokenizer on the 128 + 128 mixed train prompts (44.17 and
# 44.15; docs/scale-out.md gives the command); taken for every prompt set (val, eval) alike
PROMPT_TOKENS = 44.2
DOC_TOKENS = 128  # assumed per perplexity document
MC_TOKENS = 100  # assumed per MMLU / ARC question (question, choices, answer cue), one forward each
JUDGE_EXTRA = 200  # assumed rubric tokens the llm judge reads beside prompt and response

# selection (fast, DiM at scope all; configs/full.toml, the recorded run's: n_val 64, screen_prompts 4, finalists 8;
# SelectionConfig defaults: prior_prompts 32, screen_keep 24, kl_screen_prompts 8); one candidate checked (assumed)
N_VAL, PRIOR, SCREEN_KEEP, SCREEN_PROMPTS, FINALISTS, KL_SCREEN = 64, 32, 24, 4, 8, 8
# search (search_data.OptimizeConfig defaults): n_score 64 + n_kl 32 prompts per trial, 160 trials, 2 × 8 survivors
# generating 24 tokens on n_val 64 harmful prompts
N_SCORE, N_KL, TRIALS, SURVIVORS, SEARCH_NEW = 64, 32, 160, 16, 24
# evaluation (configs/evaluate.toml): ablate[all] + 3 controls + the baseline, n_eval 32 per side, lengths 24 and 128
# (both generated), mmlu 100 + arc 100, 16 docs × 3 text sets, llm judge on every response
CONDITIONS, N_EVAL, LENGTHS, MC, DOCS, BATCH = 5, 32, (24, 128), 200, 16 * 3, 32


def prompt_forwards(n: float) -> float:
    return n * PROMPT_TOKENS


def stages() -> list[dict]:
    """Each stage: prefill tokens, decode tokens and decode steps (batched), the recorded CPU seconds and the
    70B engine (GPUs computing at once, GPUs whose HBM a decode step reads in parallel)."""
    gen_seqs = CONDITIONS * 2 * N_EVAL  # per length
    eval_prefill = CONDITIONS * (prompt_forwards(2 * N_EVAL) + DOCS * DOC_TOKENS + MC * MC_TOKENS) \
        + sum(gen_seqs * prompt_forwards(1) for _ in LENGTHS) \
        + sum(gen_seqs * (PROMPT_TOKENS + n + JUDGE_EXTRA) for n in LENGTHS)  # the judge reads each response
    eval_decode = sum(gen_seqs * n for n in LENGTHS)
    eval_steps = sum(math.ceil(gen_seqs / BATCH) * n for n in LENGTHS)
    select_prompts = 2 * N_VAL + 3 * PRIOR + SCREEN_KEEP * SCREEN_PROMPTS + FINALISTS * N_VAL + KL_SCREEN + N_VAL \
        + (N_VAL - KL_SCREEN)
    survivors = SURVIVORS * N_VAL
    return [
        dict(name="activations (128 + 128 train prompts)", prefill=prompt_forwards(256), decode=0, steps=0,
             cpu=seconds(figures("activations.train")["seconds"]), engine="transformers + device_map", gpus=1),
        dict(name=f"selection (fast, {select_prompts} prompt-forwards)", prefill=prompt_forwards(select_prompts),
             decode=0, steps=0, cpu=seconds(figures("selection.kl-screen")["fast"]),
             engine="transformers + device_map, batched hooks", gpus=1),
        dict(name="search, per trial (64 + 32 prompts)", prefill=prompt_forwards(N_SCORE + N_KL), decode=0, steps=0,
             cpu=seconds(figures("optimize")["qwen2.5-coder-1.5b-instruct s per trial"]),
             engine="transformers + device_map, batched hooks", gpus=1),
        dict(name=f"search, {TRIALS} trials + survivors", prefill=TRIALS * prompt_forwards(N_SCORE + N_KL)
             + prompt_forwards(survivors), decode=survivors * SEARCH_NEW,
             steps=math.ceil(survivors / BATCH) * SEARCH_NEW, cpu=None,
             engine="transformers + device_map, batched hooks", gpus=1),
        dict(name="evaluation (5 conditions, generation + llm judge + ppl + MC)", prefill=eval_prefill,
             decode=eval_decode, steps=eval_steps, cpu=seconds(figures("evaluate")["wall"]),
             engine="vLLM TP 8 (bakeable) / transformers (hooked); lm-eval for MC", gpus=8),
    ]


def flops(params: float, prefill: float, decode: float) -> float:
    return 2 * params * (prefill + decode)


def gpu_seconds(prefill: float, decode: float, steps: int, gpus: int, mfu: float = MFU) -> tuple[float, float]:
    """(compute s, decode memory floor s) of the 70B on ``gpus`` H100s computing at once; a decode step reads the
    weights from ``gpus`` HBMs in parallel."""
    return flops(P_70B, prefill, decode) / (gpus * H100_BF16 * mfu), steps * WEIGHT_BYTES_70B / (gpus * H100_HBM)


def seconds(text: str) -> float:
    """'~60 s', '239 s', '16 s', '42 min (...)' → seconds."""
    value, unit = text.lstrip("~").split()[:2]
    return float(value) * (60 if unit.startswith("min") else 1)


def cpu_flops() -> float:
    return float(figures("dtype")["bfloat16"]) * 1e9


def figures(key: str) -> dict:
    records = json.loads(TIMINGS.read_text())["tables"]["timings"]["records"]
    return next(r for r in records if r["key"] == key)["figures"]


def activation_bytes(n_prompts: int, layers: int, positions: int, d: int, bytes_per: int = 2) -> int:
    return n_prompts * layers * positions * d * bytes_per


def main() -> None:
    cpu = cpu_flops()
    print(f"CPU bf16 linear throughput {cpu / 1e9:.0f} GFLOP/s (timings.json 'dtype'); mean prompt {PROMPT_TOKENS} "
          f"tokens; H100 {H100_BF16 / 1e12:.0f} TFLOP/s × MFU {MFU}, {H100_HBM / 1e12} TB/s\n")
    print("| stage | prefill tokens | decode tokens (steps) | 70B FLOPs | 70B min (compute / decode floor) | "
          "1.5B CPU s predicted / measured | engine, dominated by |")
    print("|---|---|---|---|---|---|---|")
    for s in stages():
        compute, floor = gpu_seconds(s["prefill"], s["decode"], s["steps"], s["gpus"])
        predicted = flops(P_SMALL, s["prefill"], s["decode"]) / cpu
        check = f"{predicted:.0f} / {s['cpu']:.0f} ({predicted / s['cpu']:.1f}×)" if s["cpu"] else "—"
        what = "decode (weight reads)" if floor > compute else "prefill compute"
        print(f"| {s['name']} | {s['prefill']:.3g} | {s['decode']:.3g} ({s['steps']}) | "
              f"{flops(P_70B, s['prefill'], s['decode']):.2e} | {max(compute, floor) / 60:.2f} ({compute / 60:.2f} / "
              f"{floor / 60:.2f}) | {check} | {s['engine']} ({s['gpus']} GPU busy); {what} |")
    size = activation_bytes(256, LAYERS_70B, 5, D_70B)
    print(f"\nactivations stored: 256 prompts × {LAYERS_70B} layers × 5 positions × {D_70B} × 2 B = {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
