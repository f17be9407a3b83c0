"""bfloat16 vs float32 on this CPU: a ``linear`` of the 1.5B's MLP shape, and a model's forward pass.

    python benchmarks/bench_dtype.py [--model qwen2.5-coder-0.5b-instruct] [--tokens 512] [--repeats 5] [--quick]
                                     [--record]

* linear: ``y = x Wᵀ`` with ``x [tokens, 1536]`` and ``W [8960, 1536]`` (qwen2.5-coder-1.5b's ``gate_proj`` /
  ``up_proj``), ``2 · tokens · 1536 · 8960`` flops, best of ``--repeats``, in GFLOP/s.
* forward: prompt tokens/s of the model's full forward pass (``use_cache=False``, last-position logits) over the
  same chat-formatted prompts, loaded once in each dtype, best of ``--repeats``.

This is the measurement behind ``dtype="auto"`` (:func:`refusal_lab.models.load.default_dtype`): bfloat16 only where
oneDNN has native bf16 matmul. The README's AVX2-only figure (bf16 10× slower) needs such a CPU to reproduce.
``--record`` writes the timings page's ``dtype`` row (the forward ratio is the 0.5B's there: other models refuse).
"""

from __future__ import annotations

import argparse

import torch
from _common import (
    Report,
    add_model_args,
    add_record_arg,
    best_seconds,
    load,
    model_name,
    readme_figures,
    record,
    setup,
)

from refusal_lab.data import default_splits

D_MODEL, D_MLP = 1536, 8960  # qwen2.5-coder-1.5b-instruct
README_LINEAR = {"bfloat16": "181", "float32": "56", "ratio": "3.3×"}
README_FORWARD = {"qwen2.5-coder-0.5b-instruct": {"ratio": "1.9×"}}
DTYPES = (torch.bfloat16, torch.float32)


@torch.no_grad()
def linear_gflops(tokens: int, dtype: torch.dtype, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, D_MODEL, generator=generator).to(dtype)
    weight = (torch.randn(D_MLP, D_MODEL, generator=generator) / D_MODEL**0.5).to(dtype)
    torch.nn.functional.linear(x, weight)  # warm-up: oneDNN picks its kernel on the first call
    seconds = best_seconds(lambda: torch.nn.functional.linear(x, weight), repeats)
    return 2 * tokens * D_MODEL * D_MLP / seconds / 1e9


@torch.no_grad()
def forward_tokens_per_second(lm, prompts: list[str], batch_size: int, repeats: int) -> float:
    batches = [lm.tokenize(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def run() -> None:
        for batch in batches:
            lm.model(**batch, use_cache=False, logits_to_keep=1)

    lm.model(**batches[0], use_cache=False, logits_to_keep=1)  # warm-up
    return tokens / best_seconds(run, repeats)


def main() -> None:
    parser = add_model_args(argparse.ArgumentParser(description=__doc__,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter),
                            dtype=False)
    parser.add_argument("--tokens", type=int, default=512, help="rows of x in the linear benchmark")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    add_record_arg(parser)
    args = parser.parse_args()
    setup(args)
    if args.quick:
        args.tokens, args.prompts, args.batch_size, args.repeats = 64, 4, 4, 2

    gflops = {dtype: linear_gflops(args.tokens, dtype, args.repeats) for dtype in DTYPES}
    report = Report(f"linear [{args.tokens}, {D_MODEL}] × [{D_MLP}, {D_MODEL}]ᵀ (1.5B MLP shape), GFLOP/s, "
                    f"best of {args.repeats}")
    for dtype in DTYPES:
        name = str(dtype).removeprefix("torch.")
        report.add(f"{name} GFLOP/s", f"{gflops[dtype]:.0f}", readme=README_LINEAR[name])
    report.add("bf16 / fp32", f"{gflops[torch.bfloat16] / gflops[torch.float32]:.1f}×", readme=README_LINEAR["ratio"])
    report.print()

    prompts = default_splits().train_harmful.texts[: args.prompts]
    speed = {}
    for dtype in DTYPES:
        lm = load(args, dtype=str(dtype).removeprefix("torch."))
        speed[dtype] = forward_tokens_per_second(lm, prompts, args.batch_size, args.repeats)
        del lm
    report = Report(f"{args.model} forward pass, {len(prompts)} prompts, batch {args.batch_size}, tokens/s, "
                    f"best of {args.repeats}")
    for dtype in DTYPES:
        report.add(f"{str(dtype).removeprefix('torch.')} tokens/s", f"{speed[dtype]:.0f}")
    report.add("bf16 / fp32", f"{speed[torch.bfloat16] / speed[torch.float32]:.1f}×",
               readme=readme_figures(README_FORWARD, args.model).get("ratio"))
    report.print()
    if args.record:
        record("timings", "dtype", {"bfloat16": f"{gflops[torch.bfloat16]:.0f}",
                                    "float32": f"{gflops[torch.float32]:.0f}",
                                    model_name(args.model): f"{speed[torch.bfloat16] / speed[torch.float32]:.1f}×"})


if __name__ == "__main__":
    main()
