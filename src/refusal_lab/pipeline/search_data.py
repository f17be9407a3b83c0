"""What an ``optimize`` search works from (:mod:`refusal_lab.pipeline.optimize`): its settings, the validation
prompts it scores, each training source's class means and the refined direction, all cached in the run directory.

Data (train / validation only; the held-out AdvBench and generic slices are never touched): class means of
``resid_pre`` at every layer and post-instruction position from the train split of each training source
(``mixed``, ``unmatched``, ``matched``), minus any scoring prompt, cached in ``RUN_DIR/means.safetensors``; and the
``refined`` source's direction: the ``mixed`` DiM direction refined by a few gradient steps on the ``mixed`` train
prompts (:mod:`refusal_lab.search.refine`; cached in ``RUN_DIR/refined.safetensors``, its steps in
``RUN_DIR/refine.json``). Every prompt used is recorded in ``RUN_DIR/seen/optimize.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, PositiveInt, field_validator, model_validator
from rich.console import Console
from safetensors.torch import save_file

from refusal_lab.core.config import ConfigModel
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import atomic_path, write_json
from refusal_lab.core.memory import release_freed_memory
from refusal_lab.data import dataset_splits
from refusal_lab.evaluation.perplexity import text_losses
from refusal_lab.evaluation.texts import load_texts
from refusal_lab.interventions.scoring import last_token_logprobs
from refusal_lab.models.activations import collect_activations
from refusal_lab.models.bundled import DEFAULT_MODEL
from refusal_lab.models.contexts import CONTEXTS, SEARCH_CONTEXTS
from refusal_lab.models.placement import DeviceMapSetting
from refusal_lab.pipeline.heldout import record_seen
from refusal_lab.search.edit import Abliteration
from refusal_lab.search.refine import RefineSettings, refine_direction
from refusal_lab.search.space import AbliterationParams, interpolated_direction

log = Console(stderr=True, width=None if sys.stderr.isatty() else 150).log
TrainingSource = Literal["mixed", "unmatched", "matched"]
Source = Literal["mixed", "unmatched", "matched", "refined"]


class CapabilityCheck(ConfigModel):
    """Sizes of the capability check of the exported trial against the base (:mod:`~refusal_lab.pipeline.
    trial_capability`); ``enabled`` False skips it."""

    enabled: bool = True
    mmlu_n: PositiveInt = 100
    arc_n: PositiveInt = 100
    text_docs: PositiveInt = 16
    n_instructions: PositiveInt = 16


class ComplianceCheck(ConfigModel):
    """The llm judge on the front after the search (:mod:`~refusal_lab.pipeline.compliance`): ``judge`` its spec
    (None or "" skips the check), ``ablate`` the judge's own refusal ablation (``auto``, a run directory or
    ``none``), the ``trials`` lowest-refusal Pareto trials within ``max_kl`` judged, at ``max_new_tokens``."""

    judge: str | None = "llm"
    ablate: str = "auto"
    trials: PositiveInt = 2  # each costs a generation and a grading of every validation prompt (~3 s each, 0.5B)
    max_new_tokens: PositiveInt = 128


class OptimizeConfig(ConfigModel):
    """Settings of one search (saved as RUN_DIR/config.json; see the module docstring)."""

    model: str = DEFAULT_MODEL
    dtype: str = "auto"
    device_map: DeviceMapSetting = None  # as RunConfig's (refusal_lab.models.placement); not fingerprinted
    offload_folder: str | None = None
    seed: int = 0
    sources: list[Source] = ["mixed", "unmatched", "matched", "refined"]
    n_train: int = Field(128, ge=2)
    n_val: int = Field(64, ge=2)  # harmful validation prompts the survivors generate for (refusals)
    n_score: int = Field(64, ge=2)  # of those, scored by first token in every trial
    n_kl: int = Field(32, ge=2)  # harmless validation prompts scored in every trial (KL)
    kl_source: TrainingSource = "unmatched"  # whose harmless validation prompts KL is measured on (generic only)
    trials: PositiveInt = 160
    startup_trials: int = Field(32, ge=0)
    trials_per_pass: PositiveInt = 4
    rows_per_pass: PositiveInt = 32  # batch rows per scoring forward (trials × prompts) and per activation batch
    generate_batch: PositiveInt = 32  # prompts per greedy-generation batch
    max_kl: float = Field(0.1, gt=0)
    survivors: PositiveInt = 8
    max_new_tokens: PositiveInt = 24
    judge: str = "markers"
    norm_preserving: list[bool] = Field([False], min_length=1)  # edits searched: plain, norm-preserving or both
    capability_texts: int = Field(0, ge=0)  # > 0: a third objective, NLL on this many texts of capability_corpus
    capability_corpus: str = "lambada"
    capability_window: int = Field(128, ge=2)  # tokens per scored window of a text (disjoint windows)
    time_budget_min: float | None = Field(None, gt=0)
    refine: RefineSettings = RefineSettings()
    # chat contexts the search scores under, the validation prompts dealt round-robin among them (prompt i to
    # context i mod C); objective "worst": each trial's p_R, KL and refusal rate are their largest over the contexts,
    # "mean": their averages. Both are in each trial's record and in pareto.csv, per context
    contexts: list[str] = Field(default_factory=lambda: list(SEARCH_CONTEXTS), min_length=1)
    objective: Literal["worst", "mean"] = "worst"
    capability_check: CapabilityCheck = CapabilityCheck()  # after the search: the export's capability vs the base
    compliance_check: ComplianceCheck = ComplianceCheck()  # after the search: the front's covert non-compliance

    @field_validator("contexts")
    @classmethod
    def _known_contexts(cls, contexts: list[str]) -> list[str]:
        known = CONTEXTS | SEARCH_CONTEXTS
        unknown = [c for c in contexts if c not in known]
        if unknown or len(set(contexts)) < len(contexts):
            raise ValueError(f"contexts must be distinct registered chat contexts ({', '.join(known)}); got "
                             f"{contexts}")
        return contexts

    @model_validator(mode="after")
    def _prompts_for_every_context(self):
        if min(self.n_score, self.n_kl, self.n_val) < len(self.contexts):
            raise ValueError(f"n_val, n_score and n_kl must each be at least the number of contexts "
                             f"({len(self.contexts)}), so that every context scores a prompt; raise them or list "
                             "fewer contexts")
        return self

    @property
    def training_sources(self) -> list[str]:
        """The sources whose class means the search needs (``refined`` starts from ``mixed``'s)."""
        wanted = {s for s in self.sources if s != "refined"} | ({"mixed"} if "refined" in self.sources else set())
        return [s for s in ("mixed", "unmatched", "matched") if s in wanted]


@dataclass
class ContextSlice:
    """The validation prompts one chat context scores in every trial: harmful ones by first-token refusal, harmless
    ones by KL, and the unedited model's next-token log-probs ``[len(scored) + len(harmless), vocab]`` of
    ``scored + harmless`` formatted in that context."""

    context: str
    scored: list[str]
    harmless: list[str]
    base_logprobs: torch.Tensor


def aggregate(per_context: torch.Tensor, objective: str, dim: int = -2) -> torch.Tensor:
    """Over the contexts (``dim``, default −2): the largest (``worst``) or the mean (``mean``)."""
    return per_context.amax(dim) if objective == "worst" else per_context.mean(dim)


def dealt(prompts: list[str], contexts: list[str]) -> dict[str, list[str]]:
    """``prompts`` dealt round-robin among ``contexts``: prompt ``i`` goes to context ``i mod C``."""
    return {context: prompts[i::len(contexts)] for i, context in enumerate(contexts)}


@dataclass
class SearchData:
    """The survivors' harmful validation prompts, the prompts each chat context scores in every trial
    (:class:`ContextSlice`), each training source's class means ``[L, P, d]`` and the refined direction ``[d]``."""

    harmful: list[str]
    slices: list[ContextSlice]
    means: dict[str, tuple[torch.Tensor, torch.Tensor]]
    data_hash: str
    refined: torch.Tensor | None = None
    capability: list[str] | None = None  # texts of the capability objective (None: two objectives)
    base_nll: float | None = None  # the unedited model's NLL on them (nats per token)

    @property
    def objectives(self) -> list[str]:
        return ["p_refusal", "kl"] + (["nll"] if self.capability else [])

    def table(self, source: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``source``'s direction table ``[L, P, d]`` and the harmless means ``[L, P, d]`` its directions are
        orthogonalised against: ``μ⁺ − μ⁻`` and ``μ⁻`` of a training source; the refined direction at every entry
        and ``mixed``'s ``μ⁻``."""
        if source == "refined":
            if self.refined is None:
                raise RefusalLabError("this search has no refined direction (refine.json); rerun optimize with "
                                      "'refined' in sources")
            harmless = self.means["mixed"][1]
            return self.refined.to(harmless.dtype).expand_as(harmless), harmless
        harmful, harmless = self.means[source]
        return harmful - harmless, harmless

    def ablation(self, lm, params: AbliterationParams, **meta) -> Abliteration:
        return Abliteration.from_params(params, *self.table(params.source), lm.n_layers, model=lm.name,
                                        data_hash=self.data_hash, **meta)


def search_prompts(config: OptimizeConfig) -> tuple[list[str], list[str], dict[str, tuple[list[str], list[str]]]]:
    """The ``mixed`` source's harmful validation prompts, the ``kl_source``'s harmless validation prompts, and each
    source's train prompts (harmful, harmless) without any of those validation texts."""
    splits = {source: dataset_splits(source, n_train=config.n_train, n_val=config.n_val, seed=config.seed)
              for source in {*config.training_sources, "mixed", config.kl_source}}
    harmful, harmless = splits["mixed"].val_harmful.texts, splits[config.kl_source].val_harmless.texts
    validation = set(harmful) | set(harmless)
    train = {source: ([t for t in splits[source].train_harmful.texts if t not in validation],
                      [t for t in splits[source].train_harmless.texts if t not in validation])
             for source in config.training_sources}
    return harmful, harmless, train


def load_means(run_dir: Path, sources: list[str]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], str] | None:
    """The class means ``RUN_DIR/means.safetensors`` holds per source and the data hash they were made from (in the
    file's metadata); None when there are none (or none for some source)."""
    from safetensors import safe_open

    path = run_dir / "means.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as stored:
        data_hash, names = (stored.metadata() or {}).get("data_hash"), set(stored.keys())
        if data_hash is None or not {f"{s}.{side}" for s in sources for side in ("harmful", "harmless")} <= names:
            return None
        means = {s: (stored.get_tensor(f"{s}.harmful"), stored.get_tensor(f"{s}.harmless")) for s in sources}
    return means, data_hash


def prepare(lm, config: OptimizeConfig, run_dir: Path) -> SearchData:
    """Splits, class means (cached in ``RUN_DIR/means.safetensors``) and baseline log-probs for the search."""
    import hashlib

    harmful, all_harmless, train = search_prompts(config)
    harmless = all_harmless[: config.n_kl]
    payload = json.dumps({"harmful": harmful, "harmless": harmless, "train": train}, sort_keys=True)
    data_hash = hashlib.sha256(payload.encode()).hexdigest()[:16]
    record_seen(run_dir, "optimize", [*harmful, *all_harmless,
                                      *(t for pair in train.values() for side in pair for t in side)])
    stored = load_means(run_dir, config.training_sources)
    if stored is None or stored[1] != data_hash:
        tensors = {}
        for source, (harm, safe) in train.items():
            log(f"class means of {source} ({len(harm)} + {len(safe)} train prompts)")
            tensors[f"{source}.harmful"] = collect_activations(lm, harm, config.rows_per_pass).mean.float()
            tensors[f"{source}.harmless"] = collect_activations(lm, safe, config.rows_per_pass).mean.float()
            release_freed_memory()
        with atomic_path(run_dir / "means.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"data_hash": data_hash})
        stored = load_means(run_dir, config.training_sources)
    refined = refined_direction(lm, config, run_dir, train.get("mixed"), stored[0].get("mixed"), data_hash)
    scored, safe = dealt(harmful[: config.n_score], config.contexts), dealt(harmless, config.contexts)
    slices = [ContextSlice(c, scored[c], safe[c], last_token_logprobs(lm.in_context(c), scored[c] + safe[c],
                                                                      batch_size=config.rows_per_pass))
              for c in config.contexts]
    data = SearchData(harmful, slices, stored[0], data_hash, refined)
    if config.capability_texts:
        data.capability = load_texts(config.capability_corpus, config.capability_texts, config.seed)[1]
        data.base_nll = capability_nll(lm, data, None, config)
    release_freed_memory()
    return data


def capability_nll(lm, data: SearchData, ablation: Abliteration | None, config: OptimizeConfig) -> float:
    """Token-averaged NLL (nats) of the capability texts under ``ablation`` (None: unedited): raw text in disjoint
    windows of ``capability_window`` tokens (:func:`refusal_lab.evaluation.perplexity.text_losses`)."""
    interventions = ablation.interventions(lm=lm) if ablation is not None else []
    return text_losses(lm, data.capability, interventions=interventions, window=config.capability_window,
                       stride=config.capability_window, batch_size=config.rows_per_pass).mean_nll


def _refine_key(config: OptimizeConfig, data_hash: str) -> str:
    return json.dumps({"data_hash": data_hash, "seed": config.seed, **config.refine.model_dump()}, sort_keys=True)


def load_refined(run_dir: Path, config: OptimizeConfig, data_hash: str) -> torch.Tensor | None:
    """The refined direction ``[d]`` stored in ``RUN_DIR/refined.safetensors`` for these data and settings, or None."""
    from safetensors import safe_open

    path = run_dir / "refined.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as stored:
        if (stored.metadata() or {}).get("key") != _refine_key(config, data_hash):
            return None
        return stored.get_tensor("direction")


def refined_direction(lm, config: OptimizeConfig, run_dir: Path, train: tuple[list[str], list[str]],
                      mixed_means: tuple[torch.Tensor, torch.Tensor], data_hash: str) -> torch.Tensor | None:
    """The ``refined`` source's direction (None when it is not searched): the ``mixed`` DiM direction at the last
    post-instruction position and ``refine.init_depth`` of the depth, refined on the ``mixed`` train prompts
    (:func:`~refusal_lab.search.refine.refine_direction`); stored once per data and settings."""
    if "refined" not in config.sources:
        return None
    stored = load_refined(run_dir, config, data_hash)
    if stored is not None:
        return stored
    harmful_means, harmless_means = mixed_means
    v = (harmful_means[:, -1] - harmless_means[:, -1]).double()
    init = interpolated_direction(v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12),
                                  config.refine.init_depth * (v.shape[0] - 1)).float()
    log(f"refining the mixed DiM direction ({config.refine.steps} gradient steps on {len(train[0])} + "
        f"{len(train[1])} train prompts)")
    direction, history = refine_direction(lm, init, *train, config.refine, seed=config.seed, log=log)
    write_json(run_dir / "refine.json", {"settings": config.refine.model_dump(), "steps": history})
    with atomic_path(run_dir / "refined.safetensors") as tmp:
        save_file({"direction": direction.contiguous(), "init": init.contiguous()}, str(tmp),
                  metadata={"key": _refine_key(config, data_hash)})
    return direction


__all__ = ["CapabilityCheck", "ComplianceCheck", "ContextSlice", "OptimizeConfig", "SearchData", "aggregate", "dealt", "Source", "TrainingSource", "capability_nll", "load_means", "load_refined",
           "prepare", "refined_direction", "search_prompts"]
