"""What the gradient refinement alone does: the refined source's first trial against the same edit with the direction
it started from, and with random unit directions, on the held-out requests.

    python benchmarks/refine_isolation.py --run runs/opt-0.5b [--n 100] [--controls 2]

Every row is the same edit, the full-weight abliteration of every attention and MLP writer
(:func:`refusal_lab.search.refine.full_ablation`), with one direction: the mixed DiM direction the refinement
started from (``init`` in ``RUN_DIR/refined.safetensors``), the refined direction (trial 0 of the search), and
``--controls`` random unit directions (seeds 0, 1, …). Scored as the run's held-out front
(:func:`refusal_lab.pipeline.assess.heldout_scorer`): greedy completions of the held-out AdvBench requests judged by
the run's judge, mean first-token KL on the held-out generic requests; the run's seen prompts are checked first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import Report, add_run_args, setup
from safetensors.torch import load_file

from refusal_lab.models.load import load_model
from refusal_lab.pipeline.assess import heldout_scorer
from refusal_lab.pipeline.search_data import OptimizeConfig
from refusal_lab.search.refine import full_ablation


def main() -> None:
    parser = add_run_args(argparse.ArgumentParser(description=__doc__,
                                                  formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--run", type=Path, required=True, help="an optimize run directory with a refined direction")
    parser.add_argument("--n", type=int, default=100, help="held-out prompts per side")
    parser.add_argument("--controls", type=int, default=2, help="random unit directions")
    args = parser.parse_args()
    setup(args)
    config = OptimizeConfig.model_validate(json.loads((args.run / "config.json").read_text()))
    stored = load_file(str(args.run / "refined.safetensors"))
    lm = load_model(config.model, dtype=config.dtype)
    n = 8 if args.quick else args.n
    directions = {"mixed DiM (where the refinement starts)": stored["init"], "refined (trial 0)": stored["direction"]}
    for seed in range(args.controls):
        directions[f"random unit direction, seed {seed}"] = torch.randn(
            lm.hidden_size, generator=torch.Generator().manual_seed(seed))
    with heldout_scorer(lm, args.run, config, n) as scorer:  # the run's seen prompts checked first
        report = Report(f"every writer ablated along one direction, {args.run} (held out)",
                        (f"refusals of {scorer.n}", "KL"))
        held = scorer.score("baseline", None)
        report.add("unedited", str(held["refusals"]), "0")
        for name, direction in directions.items():
            held = scorer.score(name, full_ablation(direction, lm.n_layers))
            report.add(name, str(held["refusals"]), f"{held['kl']:.3f}")
    report.print()


if __name__ == "__main__":
    main()
