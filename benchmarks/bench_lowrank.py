"""Forward throughput of a rank-k projection hook: low-rank ``h − (h V_kᵀ) V_k`` vs the dense ``h @ P_k``.

    python benchmarks/bench_lowrank.py [--model qwen2.5-coder-0.5b-instruct] [--ks 1 8 32] [--prompts 16]
                                       [--repeats 3] [--threads N] [--quick] [--record]

Both forms are hooked at every layer and site (``resid_pre``, ``attn_out``, ``mlp_out``: 3·L hook points, what
scope ``all`` means). The low-rank form costs ``4·k·d`` flops per token and hook point; the dense form ``2·d²``
(for d = 896 and k = 8: ~29 k vs ~1.6 M), against roughly ``2·N_params`` ≈ 1 G flops per token for the model.
A plain forward (no hook) is the reference. Conditions are interleaved within each repeat so drifting machine
load affects them alike; the best repeat is reported. Full-prompt forward passes (no prefix cache, all positions).

Measured (0.5B, float32, 2-core CPU shared with another model job, ``--threads 1 --repeats 4``, 735 tokens):

       k  low-rank tok/s  dense tok/s  low-rank/dense  low-rank/no hook      (no hook: 82.4 tokens/s)
       1            90.4         70.2            1.29              1.10
       8            80.2         70.7            1.13              0.97
      32            81.5         70.6            1.15              0.99

The low-rank hook is free within noise (±10 % here); the dense form costs ~15–25 % (72 hook points × 2·d² ≈
0.12 G flops per token, ~11 % of the model's). With two torch threads on the loaded machine every number was
2–3× lower and too noisy to rank (thread contention); pass ``--threads 1`` there. ``--record`` writes the range of
low-rank / dense over ``--ks`` into the timings page's ``lowrank`` row (the 0.5B's).
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import (
    Report,
    add_model_args,
    add_record_arg,
    load,
    readme_figures,
    record,
    setup,
)

from refusal_lab.core.vocabulary import SITES
from refusal_lab.data import HARMFUL, HARMLESS, builtin_prompts
from refusal_lab.interventions import Intervention, Projection, apply_interventions

# the README's low-rank / dense ratios (0.5B, float32, threads 1, contended; see above)
README = {"qwen2.5-coder-0.5b-instruct": {k: f"low-rank / dense {ratio}"
                                          for k, ratio in ((1, "1.29"), (8, "1.13"), (32, "1.15"))}}


class DenseProjection:
    """``h ↦ h @ P`` with a dense symmetric ``P [d, d]`` (the form the low-rank hook avoids)."""

    stacking = "each"
    idempotent = True

    def __init__(self, basis: torch.Tensor) -> None:
        self.matrix = torch.eye(basis.shape[1]) - basis.T @ basis

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return (h.float() @ self.matrix.to(h.device)).to(h.dtype)


@torch.no_grad()
def tokens_per_second(lm, batches, interventions) -> tuple[float, float]:
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    with apply_interventions(lm, interventions):
        start = time.perf_counter()
        for batch in batches:
            lm.model(**batch, use_cache=False, logits_to_keep=1)
        seconds = time.perf_counter() - start
    return tokens / seconds, seconds


def main() -> None:
    ap = add_model_args(argparse.ArgumentParser(description=__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    add_record_arg(ap)
    args = ap.parse_args()
    setup(args)
    if args.quick:
        args.ks, args.prompts, args.batch_size, args.repeats = [8], 4, 4, 1

    lm = load(args)
    prompts = builtin_prompts()
    texts = (prompts.filter(label=HARMFUL).texts[: args.prompts // 2]
             + prompts.filter(label=HARMLESS).texts[: args.prompts - args.prompts // 2])
    batches = [lm.tokenize(texts[i : i + args.batch_size]) for i in range(0, len(texts), args.batch_size)]
    d, layers = lm.hidden_size, tuple(range(lm.n_layers))
    generator = torch.Generator().manual_seed(0)
    conditions: dict[str, list[Intervention]] = {"none": []}
    for k in args.ks:
        basis = torch.linalg.qr(torch.randn(d, k, generator=generator))[0].T.contiguous()
        conditions[f"lowrank-{k}"] = [Intervention(Projection(basis), layers, SITES)]
        conditions[f"dense-{k}"] = [Intervention(DenseProjection(basis), layers, SITES)]
        # same map: check it once on a random batch
        h = torch.randn(4, d)
        torch.testing.assert_close(Projection(basis)(h), DenseProjection(basis)(h), atol=1e-4, rtol=1e-4)

    tokens_per_second(lm, batches[:1], [])  # warm-up
    best = {name: 0.0 for name in conditions}
    for _ in range(args.repeats):
        for name, interventions in conditions.items():
            best[name] = max(best[name], tokens_per_second(lm, batches, interventions)[0])

    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    report = Report(f"{lm.name} ({lm.dtype}): {lm.n_layers} layers × {len(SITES)} sites = "
                    f"{lm.n_layers * len(SITES)} hook points, d = {d}; {len(texts)} prompts, {n_tokens} tokens per "
                    f"pass; best of {args.repeats}; no hook {best['none']:.1f} tokens/s",
                    ("low-rank tok/s", "dense tok/s", "low-rank / dense", "low-rank / no hook"))
    figures = readme_figures(README, args.model)
    for k in args.ks:
        low, dense = best[f"lowrank-{k}"], best[f"dense-{k}"]
        report.add(f"k = {k}", f"{low:.1f}", f"{dense:.1f}", f"{low / dense:.2f}", f"{low / best['none']:.2f}",
                   readme=figures.get(k))
    report.print()
    if args.record:
        ratios = [best[f"lowrank-{k}"] / best[f"dense-{k}"] for k in args.ks]
        record("timings", "lowrank", {"ratio": f"{min(ratios):.2f}–{max(ratios):.2f}×"}, model=args.model)


if __name__ == "__main__":
    main()
