"""Export one trial of an ``optimize`` run: merged safetensors that plain transformers loads, optionally the same
edit as a PEFT LoRA adapter (rank 1 per edited writer), and ``reproduce.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console

from refusal_lab import __version__
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import json_safe, write_json
from refusal_lab.pipeline.compliance import by_refusal
from refusal_lab.pipeline.optimize import load_study, trial_params
from refusal_lab.pipeline.rundir import RunDirectory
from refusal_lab.pipeline.search_data import OptimizeConfig, SearchData, load_means, load_refined
from refusal_lab.search.edit import Abliteration

log = Console(stderr=True, width=None if sys.stderr.isatty() else 150).log


def choose_trial(run_dir: Path, trial: int | None, max_kl: float) -> tuple[int, str]:
    """``trial`` (criterion "given"); where the llm judge judged Pareto trials within ``max_kl``
    (``noncompliant_rate``, :mod:`~refusal_lab.pipeline.compliance`), the one it judged least often non-compliant,
    ties to the lower refusal rate and p_R; else the Pareto trial (``pareto.csv``) with ``KL ≤ max_kl`` and the lowest
    validation refusal rate over the search's chat contexts (``refusal_rate``: the worst context's, or their mean,
    as the search's objective said; a run from before contexts: the refusals), ties broken by the lower first-token
    refusal probability — the stronger edit, so a tie spends the KL budget rather than keeping the mildest trial.
    Returns the trial and the criterion that chose it, in words."""
    if trial is not None:
        return trial, "given (--trial)"
    path = run_dir / "pareto.csv"
    if not path.exists():
        raise RefusalLabError(f"{run_dir} has no pareto.csv; run `refusal-lab optimize --out {run_dir}` first")
    pareto = pd.read_csv(path)
    rate = "refusal_rate" if "refusal_rate" in pareto else "refusals"
    within = by_refusal(pareto, max_kl, rate)
    if within.empty:
        raise RefusalLabError(f"no Pareto trial in {path} has KL ≤ {max_kl} (lowest {pareto['kl'].min():.3f}); "
                              "raise --max-kl or pass --trial N")
    search = json.loads((run_dir / "search.json").read_text()) if (run_dir / "search.json").exists() else {}
    over = {"worst": "its worst chat context", "mean": "the mean over its chat contexts"}.get(
        search.get("objective"), "the validation prompts")
    judged = within.dropna(subset=["noncompliant_rate"]) if "noncompliant_rate" in within else within.iloc[:0]
    if not judged.empty:
        chosen = int(judged.sort_values("noncompliant_rate", kind="stable").iloc[0]["trial"])
        return chosen, (f"the lowest validation rate judged non-compliant by the llm judge over {over} among the "
                        f"{len(judged)} llm-judged Pareto trials with KL ≤ {max_kl:g}, ties to the lower refusal "
                        "rate, then the lower first-token refusal probability")
    chosen = int(within.iloc[0]["trial"])
    return chosen, (f"the lowest validation refusal rate over {over} among the Pareto trials with KL ≤ {max_kl:g}, "
                    "ties to the lower first-token refusal probability")


def trial_ablation(lm, run_dir: Path, trial: int) -> Abliteration:
    """Trial ``trial``'s edit, rebuilt from its parameters and the run's stored class means (the run is only read)."""
    config = OptimizeConfig.model_validate(json.loads((run_dir / "config.json").read_text()))
    found = [t for t in load_study(run_dir).get_trials() if t.number == trial and "params" in t.user_attrs]
    if not found:
        raise RefusalLabError(f"{run_dir} has no finished trial {trial}")
    stored = load_means(run_dir, config.training_sources)
    if stored is None:
        raise RefusalLabError(f"{run_dir} has no class means (means.safetensors); rerun `refusal-lab optimize --out "
                              f"{run_dir}` to make them")
    data = SearchData([], [], *stored, load_refined(run_dir, config, stored[1]))
    return data.ablation(lm, trial_params(found[0]), trial=trial)


def lora_adapter(lm, ablation: Abliteration, out: Path) -> Path:
    """Save the edit as a PEFT LoRA adapter for the *unedited* model: per edited writer ``B = −w r̂`` ``[d, 1]``,
    ``A = r̂ᵀ W`` ``[1, d_in]`` (``lora_alpha = r = 1``), so ``W + B A`` is the edited weight."""
    from peft import LoraConfig, get_peft_model

    if ablation.norm_preserving:
        raise RefusalLabError("a norm-preserving edit changes each weight matrix by more than rank 1, so it has no "
                              "exact LoRA form; export the merged model (drop --lora)")

    names = {id(module): name for name, module in lm.model.named_modules()}
    edits = {names[id(linear)]: (r, w) for _, _, linear, r, w in ablation.writers(lm)}
    config = LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, bias="none", target_modules=sorted(edits))
    peft_model = get_peft_model(lm.model, config)
    with torch.no_grad():
        for name, (r, w) in edits.items():
            module = peft_model.base_model.model.get_submodule(name)
            W = module.base_layer.weight.float()
            module.lora_A["default"].weight.copy_((r.to(W.device) @ W)[None, :])
            module.lora_B["default"].weight.copy_((-w * r)[:, None])
    peft_model.save_pretrained(out)
    lm.model = peft_model.unload()  # back to the plain, unedited model
    return out


def export_trial(lm, run_dir: str | Path, out: str | Path, trial: int | None = None, max_kl: float = 0.1,
                 lora: bool = False) -> Path:
    """Bake trial ``trial`` (default: :func:`choose_trial`) into ``lm`` and save it at ``out`` with
    ``reproduce.json`` (the trial and the criterion that chose it, parameters, validation figures, data hash,
    versions); with ``lora`` also the
    adapter at ``out/lora``."""
    import optuna
    import peft
    import transformers

    run_dir, out = Path(run_dir), Path(out)
    RunDirectory(run_dir).check(lm=lm, same_dtype=False)  # the edit is built for the weights the run searched
    number, criterion = choose_trial(run_dir, trial, max_kl)
    log(f"exporting trial {number}, chosen by {criterion}")
    ablation = trial_ablation(lm, run_dir, number)
    if lora:
        lora_adapter(lm, ablation, out / "lora")
    ablation.apply_to_weights(lm)
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    ablation.save(out / "abliteration")
    pareto = pd.read_csv(run_dir / "pareto.csv") if (run_dir / "pareto.csv").exists() else pd.DataFrame()
    scores = pareto[pareto["trial"] == number].to_dict("records") if not pareto.empty else []
    checked = run_dir / "capability.csv"  # optimize's capability check, where it checked this trial
    capability = pd.read_csv(checked) if checked.exists() else pd.DataFrame(columns=["trial"])
    write_json(out / "reproduce.json", {
        "run": str(run_dir), "trial": number, "chosen_by": criterion, "validation": scores[0] if scores else None,
        "capability": json_safe(capability[capability["trial"] == number].drop(columns="trial").to_dict("records"))
        or None,
        "params": ablation.meta["params"], "data_hash": ablation.meta["data_hash"], "model": ablation.meta["model"],
        "config": json.loads((run_dir / "config.json").read_text()),
        "versions": {"refusal_lab": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "optuna": optuna.__version__,
                     "peft": peft.__version__}})
    return out
