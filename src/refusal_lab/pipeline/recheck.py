"""A finished study's verdicts recomputed from its stored tables alone (``refusal-lab findings --run DIR``): no model
is loaded. Per model the evidence is read back (:func:`~refusal_lab.pipeline.study_analysis.load_evidence`) and
re-assessed (:func:`~refusal_lab.analysis.findings.assess`) with the judge the study used (its first
``evaluate.judges``) at the longest stored length, then compared with ``DIR/findings.json`` field by field — every
field of :class:`~refusal_lab.analysis.findings.Finding`, numbers within :data:`RTOL` / :data:`ATOL`. Another stored
judge or length gives its verdicts without comparing them (``findings.json`` holds the study's)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from refusal_lab.analysis.evidence import ModelEvidence
from refusal_lab.analysis.findings import Finding, assess
from refusal_lab.analysis.reader import REFUSAL_METRICS
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import json_safe, read_json
from refusal_lab.pipeline.study import StudyConfig, load_study_config, model_slug, study_judge
from refusal_lab.pipeline.study_analysis import TABLES, load_evidence

RTOL, ATOL = 1e-6, 1e-9  # two numbers agree within these (a float read back from CSV may differ in its last digit)
MODEL_FILES = ("evaluation/results.parquet", "evaluation/items.parquet", "analysis/evidence.json",
               "analysis/arrays.safetensors", *(f"analysis/{name}.csv" for name in TABLES))


@dataclass(frozen=True)
class FindingCheck:
    """One finding of one model: the verdict ``findings.json`` stores (None: not there), the recomputed one (None:
    not recomputed), and, when compared, the fields that differ."""

    model: str
    id: int
    stored: str | None
    recomputed: str | None
    compared: bool
    differences: tuple[str, ...] = ()

    @property
    def agrees(self) -> bool | None:
        """True or False when compared, else None."""
        return not self.differences if self.compared else None


@dataclass(frozen=True)
class Recheck:
    """Every finding of a study recomputed: under ``judge`` at ``tokens`` new tokens (None: the longest stored);
    ``compared`` is False when that is not the study's setting (the verdicts are then only reported)."""

    run_dir: Path
    judge: str
    tokens: int | None
    compared: bool
    checks: list[FindingCheck]

    @property
    def disagreeing(self) -> list[FindingCheck]:
        return [c for c in self.checks if c.agrees is False]

    def summary(self) -> str:
        """One line: whether every finding agrees with ``findings.json``, else which do not and in what."""
        if not self.compared:
            length = f"{self.tokens} new tokens" if self.tokens is not None else "the longest stored length"
            return (f"recomputed with judge {self.judge} at {length}, not the study's setting: verdicts reported, "
                    "not compared with findings.json")
        bad = self.disagreeing
        if not bad:
            return f"all {len(self.checks)} findings agree with {self.run_dir / 'findings.json'}"
        listed = ", ".join(f"{c.model} finding {c.id} ({', '.join(c.differences)})" for c in bad)
        return f"{len(bad)} of {len(self.checks)} findings disagree with {self.run_dir / 'findings.json'}: {listed}"


def load_finished_study(run_dir: str | Path) -> tuple[StudyConfig, dict]:
    """The config and ``findings.json`` of a finished study in ``run_dir``, once every file the findings are
    recomputed from is there (else one line naming the first missing file and the fix)."""
    run_dir = Path(run_dir)
    if not (run_dir / "study.json").is_file():
        raise RefusalLabError(f"{run_dir} is not a study directory (no study.json); refusal-lab study --config FILE "
                              f"--out {run_dir} makes one")
    config = load_study_config(run_dir / "study.json")
    needed = [run_dir / "findings.json",
              *(run_dir / model_slug(model) / name for model in config.models for name in MODEL_FILES)]
    if (missing := next((path for path in needed if not path.is_file()), None)) is not None:
        raise RefusalLabError(f"{run_dir} is not a finished study (no {missing}); finish it with refusal-lab study "
                              f"--config {run_dir / 'study.json'} --out {run_dir}")
    return config, read_json(run_dir / "findings.json")


def _check_setting(evidence: ModelEvidence, judge: str | None, tokens: int | None, model_dir: Path) -> None:
    """``judge`` and ``tokens``, where given, name a judge and a generation length of the model's refusal rows."""
    judged = evidence.results[evidence.results["metric"].isin(REFUSAL_METRICS)]
    judges, lengths = sorted(set(judged["judge"])), sorted({int(n) for n in judged["max_new_tokens"].dropna()})
    if judge is not None and judge not in judges:
        raise RefusalLabError(f"judge {judge!r} is not stored in {model_dir / 'evaluation'} (stored: "
                              f"{', '.join(judges) or 'none'}); pass one of them as --judge")
    if tokens is not None and tokens not in lengths:
        raise RefusalLabError(f"length {tokens} is not stored in {model_dir / 'evaluation'} (stored: "
                              f"{', '.join(map(str, lengths)) or 'none'}); pass one of them as --tokens")


def _same(stored, recomputed) -> bool:
    """Equal JSON values, numbers within RTOL / ATOL."""
    if isinstance(stored, dict) and isinstance(recomputed, dict):
        return stored.keys() == recomputed.keys() and all(_same(stored[k], recomputed[k]) for k in stored)
    if isinstance(stored, list) and isinstance(recomputed, list):
        return len(stored) == len(recomputed) and all(map(_same, stored, recomputed))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (stored, recomputed)):
        return math.isclose(stored, recomputed, rel_tol=RTOL, abs_tol=ATOL)
    return stored == recomputed


def differences(stored: dict | None, recomputed: dict | None) -> tuple[str, ...]:
    """The fields in which two findings (as ``findings.json`` holds them) differ; ``("missing",)`` when one of them
    is absent."""
    if stored is None or recomputed is None:
        return () if stored is recomputed else ("missing",)
    return tuple(k for k in dict.fromkeys([*stored, *recomputed]) if not _same(stored.get(k), recomputed.get(k)))


def _checks(model: str, stored: list[dict], recomputed: list[Finding], compared: bool) -> list[FindingCheck]:
    """One check per finding id of either list."""
    old = {f["id"]: f for f in stored}
    new = {f.id: json_safe(asdict(f)) for f in recomputed}
    return [FindingCheck(model, i, (old.get(i) or {}).get("verdict"), (new.get(i) or {}).get("verdict"), compared,
                         differences(old.get(i), new.get(i)) if compared else ())
            for i in sorted(old.keys() | new.keys())]


def recheck(run_dir: str | Path, judge: str | None = None, tokens: int | None = None) -> Recheck:
    """Every finding of the finished study in ``run_dir`` recomputed from its stored tables, under ``judge`` (default:
    the study's) at ``tokens`` (default: the longest stored), and compared with ``findings.json`` when that is the
    study's setting."""
    run_dir = Path(run_dir)
    config, stored = load_finished_study(run_dir)
    judged_by = study_judge(config)  # as the study assessed (run_study)
    compared = judge in (None, judged_by) and tokens is None
    checks, seen = [], set()
    for model in config.models:
        model_dir = run_dir / model_slug(model)
        evidence = load_evidence(model_dir)
        _check_setting(evidence, judge, tokens, model_dir)
        seen.add(evidence.model)
        old = stored.get("models", {}).get(evidence.model, {}).get("findings", [])
        checks += _checks(evidence.model, old, assess(evidence, judge=judge or judged_by, tokens=tokens), compared)
    for name, entry in stored.get("models", {}).items():  # stored for a model the study does not name
        if name not in seen:
            checks += _checks(name, entry.get("findings", []), [], compared)
    return Recheck(run_dir, judge or judged_by, tokens, compared, checks)


__all__ = ["ATOL", "RTOL", "FindingCheck", "Recheck", "differences", "load_finished_study", "recheck"]
