"""Greedy generation throughput: the transformers path against the vLLM backend on the same prompts.

    python benchmarks/bench_vllm.py [--model M] [--n 32] [--max-new-tokens 64] [--batch-size 16] [--quick]

Needs vLLM (the venv of `make test-vllm`; on a CPU set VLLM_CPU_KVCACHE_SPACE, e.g. 2). For ``n`` held-out prompts
(half AdvBench, half generic requests) and two conditions — the baseline and a baked ablation (a random unit
direction projected out at every layer and site, as tests/test_vllm.py builds one) — it times:
  * transformers — :func:`refusal_lab.evaluation.generate.generate_ids` (the suite's batching; the ablation as hooks);
  * vLLM start-up — :class:`~refusal_lab.evaluation.vllm_backend.VllmGenerator` baking the condition, saving it and
    starting its engine (once per condition);
  * vLLM generation — steady state, on the started engine.
Prints prompts/s and generated tokens/s (the new ids each path returns, stop token included) for each, and how many
prompts' greedy ids agree between the two paths token for token (bf16 ties can flip a few). ``--quick``: 8 prompts,
16 tokens. No ``--record``: no results page holds vLLM figures (docs/scale-out.md quotes them).
"""

from __future__ import annotations

import argparse
import os

import torch
from _common import Report, add_model_args, load, setup, timed

from refusal_lab.data import heldout_advbench, heldout_generic
from refusal_lab.evaluation.generate import generate_ids
from refusal_lab.interventions.base import Projection
from refusal_lab.interventions.hooks import Intervention


def main() -> None:
    parser = add_model_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--n", type=int, default=32, help="prompts (half harmful, half harmless)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="transformers batch size (vLLM schedules its own)")
    parser.add_argument("--max-model-len", type=int, default=1024, help="vLLM engine context length")
    args = parser.parse_args()
    setup(args)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from refusal_lab.evaluation.vllm_backend import VllmGenerator

    n, tokens = (8, 16) if args.quick else (args.n, args.max_new_tokens)
    prompts = heldout_advbench().texts[: n // 2] + heldout_generic().texts[: n - n // 2]
    lm = load(args)
    unit = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    ablation = [Intervention(Projection((unit / unit.norm())[None]), layers=tuple(range(lm.n_layers)))]
    generate_ids(lm, prompts[:2], max_new_tokens=2)  # warm-up (first-call allocations)
    vllm = VllmGenerator(max_model_len=args.max_model_len)
    report = Report(f"greedy generation, {n} prompts × {tokens} new tokens, {lm.name} ({lm.dtype})",
                    ("seconds", "prompts/s", "generated tokens/s", "same ids as transformers"))
    try:
        for condition, interventions in (("baseline", ()), ("baked ablation", ablation)):
            hf, t_hf = timed(generate_ids, lm, prompts, interventions, max_new_tokens=tokens,
                             batch_size=args.batch_size)
            _, t_start = timed(vllm._llm, lm, interventions)  # bake, save, start the engine
            vl, t_vl = timed(vllm.generate_ids, lm, prompts, interventions, max_new_tokens=tokens)
            vllm.close()  # an idle engine's processes would share the CPU with the next transformers run
            same = sum(a == b for a, b in zip(hf, vl))
            for name, seconds, ids in ((f"{condition}: transformers, batches of {args.batch_size}", t_hf, hf),
                                       (f"{condition}: vLLM generation (engine started)", t_vl, vl)):
                report.add(name, f"{seconds:.1f}", f"{n / seconds:.2f}", f"{sum(map(len, ids)) / seconds:.1f}",
                           f"{same}/{n}" if ids is vl else "—")
            report.add(f"{condition}: vLLM start-up (bake, save, engine)", f"{t_start:.1f}", "—", "—", "—")
            total = t_start + t_vl
            report.add(f"{condition}: vLLM start-up + generation", f"{total:.1f}", f"{n / total:.2f}",
                       f"{sum(map(len, vl)) / total:.1f}", "—")
    finally:
        vllm.close()
    report.print()


if __name__ == "__main__":
    main()
