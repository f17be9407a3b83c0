"""refusal-lab optimize against heretic 1.4.0: fronts, wall time and peak memory, side by side.

    python benchmarks/bench_optimize.py --model qwen2.5-coder-0.5b-instruct --out runs/bench-opt05
    python benchmarks/bench_optimize.py ... --heretic-venv /path/to/venv   # also heretic (pip install heretic-llm==1.4.0)

refusal-lab: ``refusal-lab optimize --heldout 100 --time-budget 14`` as a subprocess (its default search; wall time
and peak RSS of the whole command, the held-out scoring reported apart). heretic, when asked: run in its own virtual
environment on the same converted model directory with the same prompts (its direction prompts = the search's train
prompts of the ``mixed`` source, its evaluation prompts = the same validation prompts: 64 harmful, 32 harmless), the
same judge (its own markers, which refusal-lab's ``markers`` judge copies), 24 new tokens and the same first-token
KL; its front is read from its Optuna journal. Both fronts are validation figures; beside them, held-out figures:
refusal-lab's own, and heretic's front trials (within --max-kl) rebuilt as refusal-lab edits of the same parameters
and scored the same way. The held-out requests are never seen by either search. Each tool's wall time and peak RSS
are measured once and kept (RUN_DIR/bench.json, RUN_DIR/heretic/bench.json), so a rerun only redoes what is missing.
``--record`` writes this model's part of the timings page's ``optimize`` row: search time (trials, s per trial), the
whole command's wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from _common import (
    Report,
    add_record_arg,
    add_run_args,
    model_name,
    readme_figures,
    record,
    setup,
)

README = {
    "qwen2.5-coder-0.5b-instruct": {"refusal-lab": "1 @ 0.035 · 7 @ 0.020 (val), 3 @ 0.039 (held out); 18.7 min, "
                                                   "2.7 GB",
                                    "heretic": "22 @ 0.035 · 25 @ 0.026 (val), 36 @ 0.049 (held out); 8 trials, "
                                               "24.8 min, 10.1 GB"},
    "qwen2.5-coder-1.5b-instruct": {"refusal-lab": "2 @ 0.028 · 39 @ 0.015 (val), 2 @ 0.025 (held out); 21.2 min, "
                                                   "4.9 GB",
                                    "heretic": "1 @ 0.086 (val), 2 @ 0.062 (held out); 4 trials, 40.6 min, "
                                               "18.2 GB"},
}


def run_measured(args: list[str], check: bool = True, **kwargs) -> tuple[float, float]:
    """Run ``args``; its wall seconds and peak RSS in GB (that child's own, from ``wait4``); with ``check``, exit
    if it failed."""
    start = time.perf_counter()
    child = subprocess.Popen(args, **kwargs)
    _, status, usage = os.wait4(child.pid, 0)
    if (code := os.waitstatus_to_exitcode(status)) and check:
        raise SystemExit(f"{' '.join(map(str, args))} exited with {code}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024**2


def measured_once(stored: Path, command: list[str], args: list[str], **kwargs) -> tuple[float, float]:
    """Wall seconds and peak RSS of ``args`` (:func:`run_measured`), measured once and kept in ``stored`` with
    ``command`` (what was measured), so either tool can be rerun beside the other's finished measurement; a stored
    measurement of another command stops the benchmark."""
    if stored.exists():
        measured = json.loads(stored.read_text())
        if measured["command"] != command:
            raise SystemExit(f"{stored} measured {measured['command']}, not {command}; use another --out or the same "
                             "options")
        return measured["seconds"], measured["rss_gb"]
    seconds, rss = run_measured(args, **kwargs)
    stored.write_text(json.dumps({"seconds": seconds, "rss_gb": rss, "command": command}))
    return seconds, rss


def run_refusal_lab(model: str, out: Path, trials: int | None, heldout: int, budget: float) -> tuple[float, float]:
    """Wall seconds and peak RSS of ``refusal-lab optimize`` on ``out`` (kept in ``out/bench.json``)."""
    cli = shutil.which("refusal-lab", path=str(Path(sys.executable).parent)) or "refusal-lab"
    args = [cli, "optimize", "--model", model, "--out", str(out), "--heldout", str(heldout),
            "--time-budget", str(budget)]
    if trials:
        args += ["--trials", str(trials)]
    return measured_once(out / "bench.json", args[1:], args)


def default_system_prompt(model_dir: str) -> str:
    """The system message in the prompts refusal-lab sends (the family adapter's ``format_prompt``: no system turn
    of its own, so whatever the chat template inserts; heretic always sends one, by default "You are a helpful
    assistant.", which lowers this 0.5B's validation refusals from 47 to 27 of 64); "" when there is none."""
    from transformers import AutoConfig, AutoTokenizer

    from refusal_lab.models.adapters import adapter_for

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sent = adapter_for(AutoConfig.from_pretrained(model_dir).model_type).format_prompt(tokenizer, "X")
    sentinel = "\x00SYSTEM\x00"
    turns = [{"role": "system", "content": sentinel}, {"role": "user", "content": "X"}]
    with_system = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    before, after = with_system.split(sentinel)
    if not sent.startswith(before) or after not in sent[len(before):]:
        return ""
    return sent[len(before):].split(after)[0]


def heretic_config(run: Path, model_dir: str, work: Path, trials: int, startup: int) -> Path:
    """heretic's config.toml with refusal-lab's prompts written as text files (one prompt a line), the system
    prompt refusal-lab's prompts get (:func:`default_system_prompt`), batch size 32 (the issue's measurement;
    heretic's own batch-size search took ~20 min of CPU here), seed 0."""
    from refusal_lab.pipeline.search_data import OptimizeConfig, search_prompts

    config = OptimizeConfig.model_validate(json.loads((run / "config.json").read_text()))
    harmful, harmless, train = search_prompts(config)
    files = {"good": train["mixed"][1], "bad": train["mixed"][0], "good_eval": harmless[: config.n_kl],
             "bad_eval": harmful}
    work.mkdir(parents=True, exist_ok=True)
    for name, texts in files.items():
        (work / f"{name}.txt").write_text("".join(" ".join(t.split()) + "\n" for t in texts))
    toml = [f'model = "{model_dir}"', f"n_trials = {trials}", f"n_startup_trials = {startup}", "batch_size = 32",
            "seed = 0", f"max_response_length = {config.max_new_tokens}",
            f"system_prompt = {json.dumps(default_system_prompt(model_dir))}",
            'export_strategy = "merge"', f'study_checkpoint_dir = "{work / "checkpoints"}"']
    for key, name in (("good_prompts", "good"), ("bad_prompts", "bad"), ("good_evaluation_prompts", "good_eval"),
                      ("bad_evaluation_prompts", "bad_eval")):
        toml += [f"[{key}]", f'dataset = "{work / (name + ".txt")}"']
    path = work / "config.toml"
    path.write_text("\n".join(toml) + "\n")
    return path


def run_heretic(venv: Path, run: Path, model_dir: str, work: Path, trials: int,
                startup: int) -> tuple[pd.DataFrame, float, float]:
    """heretic's validation front (refusals, KL, its parameters) from its journal, its wall time and peak RSS (kept
    in ``work/bench.json`` with its config; the menu it opens after the search gets no input and ends it)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    work = work.resolve()  # heretic runs in work/ and reads the prompt files by these paths
    config = heretic_config(run, model_dir, work, trials, startup)
    seconds, rss = measured_once(work / "bench.json", ["heretic", config.read_text()], [str(venv / "bin" / "heretic")],
                                 check=False, cwd=work, stdin=subprocess.DEVNULL,
                                 env={"HF_HUB_OFFLINE": "1", "PATH": str(venv / "bin")})
    journals = sorted((work / "checkpoints").glob("*.jsonl")) if (work / "checkpoints").is_dir() else []
    if not journals:
        raise SystemExit(f"heretic wrote no study journal under {work / 'checkpoints'}; see its output above")
    journal = journals[0]
    study = optuna.load_study(study_name="heretic", storage=JournalStorage(JournalFileBackend(str(journal))))
    rows = [{"trial": t.number, "refusals": t.user_attrs["refusals"], "kl": t.user_attrs["kl_divergence"],
             "params": t.params} for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])]
    from refusal_lab.pipeline.optimize import front

    return front(pd.DataFrame(rows), "refusals", "kl"), seconds, rss


def heretic_params(params: dict):
    """One heretic trial as refusal-lab's :class:`AbliterationParams`: the same tent kernels (``o_proj`` → attention,
    ``down_proj`` → MLP), the same directions (difference of means of its direction prompts — the ``mixed``
    source's train prompts — at the last position, orthogonalised against the harmless mean: heretic's default
    ``orthogonalize_direction``; ``global``: interpolated at its ``direction_index``, which counts the embeddings as
    stream 0, so it is refusal-lab's ``direction_index + 1``, clamped at the last layer's input; per layer: the
    stream a layer writes into) and the same edit, norm-preserving (heretic's default ``row_normalization =
    "full"``, which it stores as a rank-3 SVD approximation; refusal-lab applies it exactly). heretic samples
    ``min_weight`` as a fraction of ``max_weight``."""
    from refusal_lab.search.space import AbliterationParams, Kernel

    kernel = {c: Kernel(max_weight=params[f"{module}.max_weight"],
                        max_weight_position=params[f"{module}.max_weight_position"],
                        min_weight=params[f"{module}.min_weight"] * params[f"{module}.max_weight"],  # a fraction
                        min_weight_distance=params[f"{module}.min_weight_distance"])
              for c, module in (("attn", "attn.o_proj"), ("mlp", "mlp.down_proj"))}
    scope = "per_layer" if params["direction_scope"] == "per layer" else "global"
    return AbliterationParams(source="mixed", position=-1, direction_scope=scope,
                              direction_index=params["direction_index"] + 1, orthogonalize=True,
                              norm_preserving=True, **kernel)


def heretic_heldout(model: str, run: Path, front_h: pd.DataFrame, max_kl: float, n: int) -> pd.DataFrame:
    """heretic's front trials within ``max_kl``, rebuilt as refusal-lab edits and scored on the held-out requests the
    way refusal-lab's front is (:func:`refusal_lab.pipeline.assess.heldout_scorer`)."""
    from refusal_lab.models.load import load_model
    from refusal_lab.pipeline.assess import heldout_scorer
    from refusal_lab.pipeline.search_data import OptimizeConfig, load_means
    from refusal_lab.search.edit import Abliteration

    config = OptimizeConfig.model_validate(json.loads((run / "config.json").read_text()))
    lm = load_model(model, dtype=config.dtype)
    means, data_hash = load_means(run, ["mixed"])
    harmful_means, harmless_means = means["mixed"]
    rows = []
    with heldout_scorer(lm, run, config, n) as scorer:  # checked against what the searches saw
        for row in front_h[front_h["kl"] <= max_kl].itertuples():
            edit = Abliteration.from_params(heretic_params(row.params), harmful_means - harmless_means,
                                            harmless_means, lm.n_layers, model=lm.name, data_hash=data_hash)
            held = scorer.score(f"heretic-trial-{row.trial}", edit)
            rows.append({"trial": row.trial, "heldout_refusals": held["refusals"], "heldout_kl": held["kl"]})
    return pd.DataFrame(rows)


def describe(frame: pd.DataFrame, refusals: str, n: int | str, kl: str, max_kl: float) -> str:
    within = frame[frame[kl] <= max_kl].sort_values([refusals, kl])
    points = " · ".join(f"{int(r[refusals])} @ {r[kl]:.3f}" for _, r in within.head(4).iterrows())
    return f"{points or 'none'} (of {n})"


def main() -> None:
    parser = add_run_args(argparse.ArgumentParser(description=__doc__,
                                                  formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--out", type=Path, required=True, help="refusal-lab's run directory (resumable)")
    parser.add_argument("--trials", type=int, help="refusal-lab trials (default: its default)")
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--time-budget", type=float, default=14.0, help="minutes (the issue's bar)")
    parser.add_argument("--max-kl", type=float, default=0.1)
    parser.add_argument("--heretic-venv", type=Path, help="a venv with heretic-llm==1.4.0: also run heretic")
    parser.add_argument("--heretic-trials", type=int, default=20, help="the issue's measurement: 20 (8 random)")
    parser.add_argument("--heretic-startup", type=int, default=8, help="heretic's random trials")
    add_record_arg(parser)
    args = parser.parse_args()
    setup(args)
    if args.quick:
        args.trials, args.heldout, args.heretic_trials, args.heretic_startup = 8, 8, 4, 2
    seconds, rss = run_refusal_lab(args.model, args.out, args.trials, args.heldout, args.time_budget)
    pareto, heldout = pd.read_csv(args.out / "pareto.csv"), pd.read_csv(args.out / "heldout.csv")
    search = json.loads((args.out / "search.json").read_text())
    readme = readme_figures(README, args.model)
    report = Report(f"abliteration search on {args.model}: refusals @ KL ≤ {args.max_kl} (best four)",
                    ("validation front", "held-out front", "wall", "peak RSS"))
    trials = heldout.iloc[1:].assign(heldout_kl=lambda f: f["heldout_kl"].astype(float))
    report.add("refusal-lab optimize", describe(pareto, "refusals", search["n"], "kl", args.max_kl),
               describe(trials, "heldout_refusals", int(heldout.iloc[0]["heldout_n"]), "heldout_kl", args.max_kl),
               f"{seconds / 60:.1f} min ({search['seconds'] / 60:.1f} search)", f"{rss:.1f} GB",
               readme=readme.get("refusal-lab"))
    report.add("baseline (no edit)", f"{search['baseline_refusals']} (of {search['n']})",
               f"{int(heldout.iloc[0]['heldout_refusals'])} (of {int(heldout.iloc[0]['heldout_n'])})", "", "")
    if args.heretic_venv:
        from refusal_lab.models.load import resolve_model_dir

        _, model_dir = resolve_model_dir(args.model)
        front_h, seconds_h, rss_h = run_heretic(args.heretic_venv, args.out, model_dir, args.out / "heretic",
                                                args.heretic_trials, args.heretic_startup)
        held_h = heretic_heldout(args.model, args.out, front_h, args.max_kl, args.heldout)
        report.add("heretic 1.4.0", describe(front_h, "refusals", search["n"], "kl", args.max_kl),
                   describe(held_h, "heldout_refusals", args.heldout, "heldout_kl", args.max_kl) if len(held_h)
                   else "none", f"{seconds_h / 60:.1f} min", f"{rss_h:.1f} GB", readme=readme.get("heretic"))
    report.print()
    if args.record:
        name, per_trial = model_name(args.model), search["seconds"] / max(search["trials"], 1)
        per_trial_text = f"{per_trial:.1f} s" if per_trial < 10 else f"{per_trial:.0f} s"
        record("timings", "optimize", {f"{name} search": f"{search['seconds'] / 60:.1f} min",
                                        f"{name} trials": str(search["trials"]),
                                        f"{name} s per trial": per_trial_text,
                                        f"{name} wall": f"{seconds / 60:.1f} min", f"{name} peak RSS": f"{rss:.1f} GB"})


if __name__ == "__main__":
    main()
