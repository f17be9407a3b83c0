"""Is the search's limit the edit or the search? One optimize trial under edit variants, on validation prompts.

    python benchmarks/edit_variants.py --run runs/opt-0.5b --trial 97

For the trial's directions and weights, the validation refusals (the run's judge, 24 tokens, the 64 harmful
validation prompts, each in the chat context the search scored it in) and the worst context's mean first-token KL
(the 32 harmless ones) of: the edit as searched; the edit with every
edited column of ``W [d, d_in]`` rescaled to its original norm (norm-preserving, as heretic's default
row normalisation intends); the edit plus the token embeddings' component along the direction removed (Arditi et al.
also edit the embeddings; the unembedding is untied first and left alone); and each at every weight × 1.15.
Validation only: nothing here looks at held-out prompts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import Report, add_run_args, setup
from torch import nn

from refusal_lab.evaluation.generate import generate
from refusal_lab.pipeline.judging import make_judge
from refusal_lab.interventions.scoring import kl_divergence, last_token_logprobs
from refusal_lab.models.load import load_model
from refusal_lab.pipeline.export import trial_ablation
from refusal_lab.pipeline.search_data import OptimizeConfig, dealt, prepare


@torch.no_grad()
def edit(lm, ablation, scale: float, norm_preserving: bool, embeddings: bool) -> None:
    """``W ← W − s·w r̂ (r̂ᵀ W)`` per edited writer; optionally columns rescaled to their old norms; optionally
    ``E ← E − (E r̂) r̂ᵀ`` with the direction of layer 0."""
    for _, _, linear, r, w in ablation.writers(lm):
        W = linear.weight.float()
        edited = W - scale * w * torch.outer(r, r @ W)
        if norm_preserving:
            edited = edited * (W.norm(dim=0, keepdim=True) / edited.norm(dim=0, keepdim=True).clamp_min(1e-12))
        linear.weight.copy_(edited)
    if embeddings:
        output = lm.model.get_output_embeddings()
        if output.weight is lm.model.get_input_embeddings().weight:
            output.weight = nn.Parameter(output.weight.detach().clone())
        E, r = lm.model.get_input_embeddings().weight, ablation.directions[0].float()
        E.copy_(E.float() - torch.outer(E.float() @ r, r))


def main() -> None:
    parser = add_run_args(argparse.ArgumentParser(description=__doc__,
                                                  formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--run", type=Path, required=True, help="an optimize run directory")
    parser.add_argument("--trial", type=int, required=True)
    args = parser.parse_args()
    setup(args)
    config = OptimizeConfig.model_validate(json.loads((args.run / "config.json").read_text()))
    judge = make_judge(config.judge)
    report = Report(f"trial {args.trial} of {args.run} under edit variants (validation)", ("refusals", "KL"))
    for scale in (1.0, 1.15):
        for name, norm_preserving, embeddings in (("as searched", False, False), ("norm-preserving", True, False),
                                                  ("+ embeddings", False, True)):
            lm = load_model(config.model, dtype=config.dtype)  # fresh weights for every variant
            data = prepare(lm, config, args.run)
            edit(lm, trial_ablation(lm, args.run, args.trial), scale, norm_preserving, embeddings)
            harmful = dealt(data.harmful, config.contexts)  # each context's prompts in it, as the search scored
            completions = [text for c in config.contexts
                           for text in generate(lm.in_context(c), harmful[c], max_new_tokens=config.max_new_tokens)]
            kl = max(float(kl_divergence(part.base_logprobs[len(part.scored):],
                                         last_token_logprobs(lm.in_context(part.context), part.harmless)).mean())
                     for part in data.slices)  # the worst context's
            report.add(f"{name}, weights × {scale}", f"{sum(map(judge.refuses, completions))} / {len(completions)}",
                       f"{kl:.3f}")
    report.print()


if __name__ == "__main__":
    main()
