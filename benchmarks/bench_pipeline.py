"""Speed of the core pipeline's stages, beside the README's figures.

    python benchmarks/bench_pipeline.py activations --model qwen2.5-coder-0.5b-instruct
    python benchmarks/bench_pipeline.py selection   --model qwen2.5-coder-0.5b-instruct --exhaustive
    python benchmarks/bench_pipeline.py selection   --model qwen2.5-coder-1.5b-instruct --config configs/full.toml \\
                                                    --without-kl-screen
    python benchmarks/bench_pipeline.py run         --run runs/demo

* activations: throughput of ``collect_activations`` (every layer, post-instruction positions) as a ratio to a
  plain forward pass of the full model over the same prompts and batch size (goal ≥ 0.8), and the wall time of
  collecting the whole train split (128 + 128 prompts), uncached.
* selection: wall time of the fast selection over every layer < 0.8·L × every post-instruction position; with
  ``--without-kl-screen`` the fast selection again with its KL screen off, and with ``--exhaustive`` the exhaustive
  pass, showing whether each picks the same candidate as the fast one. ``--config`` takes the selection settings
  from a run config's ``[selection]`` table (the README's 1.5B figures used ``configs/full.toml``'s, which the
  demo shared before it became a study). On the 0.5B, DiM ActAdd reaches induce > 0 only at scale 4; the default ``induce_scales`` try 1, 2, 4, so both models pick.
* run: the stage timings a finished run (``make demo`` → runs/demo, ``configs/full.toml`` → runs/full) recorded in
  its manifest.

``--record`` writes the timings page's rows: ``activations.train`` and ``activations.ratio`` (the 1.5B's),
``selection.kl-screen`` (1.5B, ``--without-kl-screen``), ``selection.exhaustive`` (0.5B, ``--exhaustive``), and from a
study's manifest (``run --run runs/demo``) the ``make demo`` row's stage times (its wall time and peak RSS are the
whole command's, which no manifest holds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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

from refusal_lab.data import default_splits
from refusal_lab.models.activations import collect_activations
from refusal_lab.selection.select import SelectionConfig

README_ACTIVATIONS = {"qwen2.5-coder-1.5b-instruct": {"ratio": "1.79× (17.8 s vs 31.9 s)", "train": "~60 s"}}
README_SELECTION = {
    "qwen2.5-coder-0.5b-instruct": {"fast pick": "(12, -4)", "fast scores": "-1.64 / 0.73 / 0.053"},
    "qwen2.5-coder-1.5b-instruct": {"fast": "239 s", "fast, no KL screen": "341 s", "fast pick": "(18, -2)",
                                    "fast scores": "-3.13 / 1.05 / 0.097"},
}
README_RUNS = {"qwen2.5-coder-1.5b-instruct": {"extract": "351 s", "evaluate": "435 s", "analyse": "82 s", "figures": "3 s",
                                               "total": "872 s"}}  # make demo → runs/demo/<model>
VARIANTS = ("fast", "fast, no KL screen", "exhaustive")


@torch.no_grad()
def bench_activations(args: argparse.Namespace) -> None:
    lm = load(args)
    splits = default_splits()
    n = 8 if args.quick else args.n
    prompts = splits.train_harmful.texts[:n]
    tokens = sum(len(ids) for ids in lm.tokenizer(lm.format(prompts), add_special_tokens=False)["input_ids"])

    def plain_forward() -> None:
        for i in range(0, n, args.batch_size):
            lm.model(**lm.tokenize(prompts[i : i + args.batch_size]), use_cache=False)

    lm.model(**lm.tokenize(prompts[:2]), use_cache=False)  # warm-up: first calls pick kernels
    collect_activations(lm, prompts[:2], use_cache=False)
    plain = timed(plain_forward)[1]
    collected = timed(collect_activations, lm, prompts, batch_size=args.batch_size, use_cache=False)[1]
    n_train = n if args.quick else None
    train = (splits.train_harmful.texts[:n_train], splits.train_harmless.texts[:n_train])
    whole = sum(timed(collect_activations, lm, texts, batch_size=args.batch_size, use_cache=False)[1]
                for texts in train)
    figures = readme_figures(README_ACTIVATIONS, args.model)
    report = Report(f"activation collection, {lm.name} ({lm.dtype}), {n} prompts ({tokens} tokens), "
                    f"batch {args.batch_size}")
    report.add("plain forward (s)", f"{plain:.1f}")
    report.add("plain forward tokens/s", f"{tokens / plain:.0f}")
    report.add("collect_activations (s)", f"{collected:.1f}")
    report.add("throughput ratio collect / plain (goal ≥ 0.8)", f"{plain / collected:.2f}×",
               readme=figures.get("ratio"))
    report.add(f"collect_activations, train split {len(train[0])} + {len(train[1])} (s)", f"{whole:.0f}",
               readme=figures.get("train"))
    report.print()
    if args.record:
        record("timings", "activations.train", {"seconds": f"{whole:.0f} s"}, model=args.model)
        record("timings", "activations.ratio", {"ratio": f"{plain / collected:.2f}×", "collect": f"{collected:.1f} s",
                                                 "plain": f"{plain:.1f} s"}, model=args.model)


def select(lm, candidates: dict, val_harmful: list[str], val_harmless: list[str], variant: str,
           selection: SelectionConfig):
    """The one call into :mod:`refusal_lab.selection.select` (adapt it here if that API changes): ``selection`` with the
    variant's mode and, for "fast, no KL screen", its KL screen off."""
    from refusal_lab.methods.registry import MethodsConfig
    from refusal_lab.pipeline.extraction import select_candidates

    update = {"mode": "exhaustive" if variant == "exhaustive" else "fast"}
    if variant == "fast, no KL screen":
        update["kl_screen_prompts"] = 0
    return select_candidates(lm, "dim", candidates, "all", val_harmful, val_harmless,
                             selection.model_copy(update=update), MethodsConfig())


def bench_selection(args: argparse.Namespace) -> None:
    from refusal_lab.data import dataset_splits
    from refusal_lab.methods.registry import METHODS, MethodsConfig
    from refusal_lab.pipeline.experiment import load_config
    from refusal_lab.pipeline.extraction import fit_context

    lm = load(args)
    run_config = load_config(args.config)  # its data source and split sizes (defaults: mixed, 128 + 64)
    splits = dataset_splits(run_config.data, n_train=run_config.n_train, n_val=run_config.n_val, seed=run_config.seed)
    n_val = 8 if args.quick else None  # --quick: fewer validation prompts, the same code path
    val = (splits.val_harmful.texts[:n_val], splits.val_harmless.texts[:n_val])
    candidates = METHODS["dim"].fit(fit_context(lm, splits, run_config), MethodsConfig())
    eligible = sum(layer < 0.8 * lm.n_layers for layer in range(lm.n_layers)) * lm.n_post_instruction
    figures = readme_figures(README_SELECTION, args.model)
    report = Report(f"direction selection, {lm.name} ({lm.dtype}), "
                    f"{run_config.data} data, {len(val[0])} + {len(val[1])} val prompts, settings from "
                    f"{args.config or 'SelectionConfig defaults'}")
    report.add("candidates (layer < 0.8L × positions)", str(eligible))
    variants = [v for v in VARIANTS if v == "fast" or (v == "exhaustive" and args.exhaustive)
                or (v == "fast, no KL screen" and args.without_kl_screen)]
    picks, seconds_of = {}, {}
    for variant in variants:
        result, seconds = timed(select, lm, candidates, *val, variant, run_config.selection)
        chosen = result.chosen
        picks[variant] = None if chosen is None else (chosen.layer, chosen.position)
        seconds_of[variant] = seconds
        report.add(f"{variant}: wall time (s)", f"{seconds:.0f}", readme=figures.get(variant))
        report.add(f"{variant}: chosen (layer, position)", str(picks[variant]),
                   readme=figures.get(f"{variant} pick"))
        report.add(f"{variant}: bypass / induce / KL", "-" if chosen is None else
                   f"{chosen.bypass:.2f} / {chosen.induce:.2f} / {chosen.kl:.3f}",
                   readme=figures.get(f"{variant} scores"))
        for stage, t in result.timings_s.items():
            report.add(f"{variant}:   {stage} (s)", f"{t:.0f}")
    for variant in variants[1:]:
        report.add(f"{variant} picks the fast candidate", str(picks[variant] == picks["fast"]))
    report.print()
    if args.record:
        record_selection(args, eligible, picks, seconds_of)


def minus(text: str) -> str:
    """The pages' minus sign."""
    return text.replace("-", "−")


def record_selection(args: argparse.Namespace, eligible: int, picks: dict, seconds: dict) -> None:
    """The timings rows of a selection run: ``selection.kl-screen`` with ``--without-kl-screen``,
    ``selection.exhaustive`` with ``--exhaustive``."""
    fast = picks["fast"]
    if args.without_kl_screen:
        other = picks["fast, no KL screen"]
        pick = f"same pick {minus(str(fast))}" if other == fast else f"picks {minus(str(fast))} vs {minus(str(other))}"
        record("timings", "selection.kl-screen", {"candidates": str(eligible), "pick": pick,
                                                   "fast": f"{seconds['fast']:.0f} s",
                                                   "fast, no KL screen": f"{seconds['fast, no KL screen']:.0f} s"},
               model=args.model)
    if args.exhaustive:
        same = "the same pick" if picks["exhaustive"] == fast else f"picks {minus(str(picks['exhaustive']))}"
        record("timings", "selection.exhaustive",
               {"pick": "nothing selected" if fast is None else minus(f"layer {fast[0]}, position {fast[1]}"),
                "wall": f"{seconds['fast']:.0f} s fast selection",
                "exhaustive": f"exhaustive {seconds['exhaustive']:.0f} s, {same}"}, model=args.model)


def bench_run(args: argparse.Namespace) -> None:
    if (args.run / "study.json").exists():  # a study (make demo): one run directory per model
        for model_dir in sorted(p.parent for p in args.run.glob("*/manifest.json")):
            bench_run(argparse.Namespace(**{**vars(args), "run": model_dir}))
        return
    manifest = json.loads((args.run / "manifest.json").read_text())
    timings = manifest["timings_s"]
    figures = README_RUNS.get(args.run.name, {})
    report = Report(f"stage timings recorded by {args.run} ({manifest['model']})")
    for stage, seconds in timings.items():
        report.add(f"{stage} (s)", f"{seconds:.0f}", readme=figures.get(stage))
    for stage, seconds in manifest.get("selection_timings_s", {}).items():
        report.add(f"  selection: {stage} (s)", f"{seconds:.0f}")
    report.add("total (s, goal ≤ 900 for make demo)", f"{sum(timings.values()):.0f}", readme=figures.get("total"))
    report.print()
    if args.record:  # the make demo row: the study's stage times (runs/demo/<model>/manifest.json)
        stages = ("extract", "evaluate", "analyse")
        if not set(stages) <= set(timings):
            raise SystemExit(f"{args.run}/manifest.json has no {', '.join(sorted(set(stages) - set(timings)))} "
                             "timings: --record takes the stage times of make demo's study")
        record("timings", "demo", {stage: f"{timings[stage]:.0f} s" for stage in stages}, model=manifest["model"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    a = add_model_args(sub.add_parser("activations"))
    a.add_argument("--n", type=int, default=64)
    a.add_argument("--batch-size", type=int, default=32)
    add_record_arg(a)
    s = add_model_args(sub.add_parser("selection"))
    s.add_argument("--exhaustive", action="store_true", help="also time the exhaustive selection")
    s.add_argument("--without-kl-screen", action="store_true",
                   help="also time the fast selection with its KL screen off")
    s.add_argument("--config", type=Path, help="run config whose [selection] table sets the selection")
    add_record_arg(s)
    r = sub.add_parser("run")
    r.add_argument("--run", type=Path, default=Path("runs/demo"))
    add_record_arg(r)
    args = parser.parse_args()
    setup(args)
    {"activations": bench_activations, "selection": bench_selection, "run": bench_run}[args.what](args)


if __name__ == "__main__":
    main()
