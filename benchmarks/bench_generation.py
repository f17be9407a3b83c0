"""Greedy generation throughput: refusal-lab's generator against plain transformers loops on the same prompts.

    python benchmarks/bench_generation.py [--model M] [--n 32] [--max-new-tokens 64] [--batch-size 16] [--quick]
                                          [--record]

Three ways to produce the same greedy completions of ``n`` held-out prompts (half AdvBench, half generic requests):
  * plain, one at a time — ``model.generate`` per prompt, what a short script does;
  * plain, batched — ``model.generate`` on left-padded batches in the given order;
  * refusal-lab — :func:`refusal_lab.evaluation.generate.generate_ids`: length-sorted batches that reuse the chat
    template's shared prefix.
Prints prompts/s for each, the speed-up of refusal-lab over each plain loop, and how many completions equal the
one-at-a-time ones token for token (greedy ties and bf16 rounding can flip a few). ``--record`` writes the timings
page's ``generation`` row (the 0.5B's).
"""

from __future__ import annotations

import argparse

import torch
from _common import (
    Report,
    add_model_args,
    add_record_arg,
    load,
    readme_figures,
    record,
    setup,
    timed,
)

from refusal_lab.data import heldout_advbench, heldout_generic
from refusal_lab.evaluation.generate import generate_ids, stop_ids, until_stop

README = {"qwen2.5-coder-0.5b-instruct": {"plain transformers, one at a time": "0.36 (6.85×)",
                                         "plain transformers, batches of 16": "1.79 (1.38×)",
                                         "refusal-lab, batches of 16": "2.47"}}


@torch.no_grad()
def plain(lm, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """``model.generate`` on left-padded batches of ``prompts`` in order (batch_size 1: one at a time)."""
    stops, out = stop_ids(lm), []
    for start in range(0, len(prompts), batch_size):
        batch = lm.tokenize(prompts[start : start + batch_size])
        ids = lm.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
        out += [until_stop(row.tolist(), stops) for row in ids[:, batch["input_ids"].shape[1]:]]
    return out


def main() -> None:
    parser = add_model_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--n", type=int, default=32, help="prompts (half harmful, half harmless)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    add_record_arg(parser)
    args = parser.parse_args()
    setup(args)
    n, tokens = (8, 8) if args.quick else (args.n, args.max_new_tokens)
    prompts = heldout_advbench().texts[: n // 2] + heldout_generic().texts[: n - n // 2]
    lm = load(args)
    generate_ids(lm, prompts[:2], max_new_tokens=2)  # warm-up (first-call allocations)
    one, t_one = timed(plain, lm, prompts, tokens, 1)
    batched, t_batched = timed(plain, lm, prompts, tokens, args.batch_size)
    ours, t_ours = timed(generate_ids, lm, prompts, max_new_tokens=tokens, batch_size=args.batch_size)
    figures = readme_figures(README, args.model)
    report = Report(f"greedy generation, {n} prompts × {tokens} new tokens, {lm.name} ({lm.dtype})",
                    ("prompts/s", "refusal-lab speed-up", "same tokens as one-at-a-time"))
    for name, seconds, ids in (("plain transformers, one at a time", t_one, one),
                               (f"plain transformers, batches of {args.batch_size}", t_batched, batched),
                               (f"refusal-lab, batches of {args.batch_size}", t_ours, ours)):
        same = sum(a == b for a, b in zip(ids, one))
        report.add(name, f"{n / seconds:.2f}", f"{seconds / t_ours:.2f}×", f"{same}/{n}",
                   readme=figures.get(name))
    report.print()
    if args.record:
        record("timings", "generation", {"refusal-lab": f"{n / t_ours:.2f}", "one at a time": f"{n / t_one:.2f}",
                                          "batched": f"{n / t_batched:.2f}",
                                          "speed-up vs one at a time": f"{t_one / t_ours:.2f}×",
                                          "speed-up vs batched": f"{t_batched / t_ours:.2f}×"}, model=args.model)


if __name__ == "__main__":
    main()
