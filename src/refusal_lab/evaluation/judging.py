"""A judge from a spec string (``substring``, ``markers``, ``llm[:model]``, ``guard:<model>`` …)."""

from __future__ import annotations

from pathlib import Path

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.evaluation.guard import GuardJudge
from refusal_lab.evaluation.judges import DEFAULT_JUDGE_MODEL, Judge, MarkerJudge, SubstringJudge
from refusal_lab.evaluation.llm_judge import Ablation, LlmJudge

GUARD_PREFIXES = ("guard", "llama-guard", "shieldgemma")


def make_judge(spec: str, url: str | None = None, api_key_env: str = "REFUSAL_LAB_JUDGE_KEY",
               dtype: str = "auto", device: str = "cpu", cache: bool | Path = True,
               ablation: Ablation | None = None) -> Judge:
    """A judge from a spec: ``substring``; ``markers`` (heretic's refusal markers); ``llm`` (the bundled
    :data:`~refusal_lab.evaluation.judges.DEFAULT_JUDGE_MODEL`) or ``llm:<model>`` (bundled name, HF id, directory,
    .gguf; with ``url``: the model name at that OpenAI-compatible endpoint); ``guard:<model>``,
    ``llama-guard:<model>`` or ``shieldgemma:<model>`` (the format follows the prefix, or for ``guard`` the model
    name: ShieldGemma if it contains "shieldgemma", else Llama Guard 3). ``cache``: the default judgement cache
    (``True``), a directory, or none (``False``). ``url`` and ``ablation`` concern the local llm judge only; other
    specs ignore them, so one call serves a list of judge specs (an endpoint judge given an ablation is refused).
    ``ablation``: the judge model's own refusal ablation (:data:`~refusal_lab.evaluation.llm_judge.Ablation`);
    the pipeline arranges it from a run directory (:func:`refusal_lab.pipeline.judging.make_judge`)."""
    kind, _, model = spec.partition(":")
    if kind == "substring" and not model:
        return SubstringJudge()
    if kind == "markers" and not model:
        return MarkerJudge()
    if kind == "llm":
        if url:
            return LlmJudge(model=model or None, url=url, api_key_env=api_key_env, cache=cache, ablation=ablation)
        return LlmJudge(model=model or DEFAULT_JUDGE_MODEL, dtype=dtype, device=device, cache=cache,
                        ablation=ablation)
    if kind in GUARD_PREFIXES and model:
        style = kind if kind != "guard" else ("shieldgemma" if "shieldgemma" in model.lower() else "llama-guard")
        return GuardJudge(model, style=style, dtype=dtype, device=device, cache=cache)
    raise RefusalLabError(f"unknown judge {spec!r}; use substring, markers, llm, llm:<model>, guard:<model>, "
                          "llama-guard:<model> or shieldgemma:<model>")
