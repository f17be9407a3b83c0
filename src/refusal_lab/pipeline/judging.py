"""The llm judge's own refusal ablation, arranged from a run directory: a safety-tuned judge model grades harmful
compliance as refusal unless its own DiM direction is ablated while it grades (docs/evaluation.md,
"Judges against human labels")."""

from __future__ import annotations

import hashlib
from pathlib import Path

from refusal_lab.core.artifacts import MethodArtifacts
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.evaluation.judges import Judge
from refusal_lab.evaluation.judging import make_judge as judge_from_spec
from refusal_lab.interventions.factory import build_intervention
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.models.bundled import cache_dir
from refusal_lab.models.identity import weights_hash
from refusal_lab.pipeline.artifacts import chosen_for_scope, selected_scopes
from refusal_lab.pipeline.experiment import RunConfig, run_extract
from refusal_lab.pipeline.extraction import extraction_stages
from refusal_lab.pipeline.rundir import RunDirectory


def judge_run(lm, config: RunConfig | None = None) -> Path:
    """The run directory ``cache_dir()/judge-runs/<model name>-<weights hash>`` holding the default extraction of
    the judge model (``config``: default :class:`RunConfig`, DiM only), made on first use and reused after (its
    fingerprint checks the weights, data and settings)."""
    config = config or RunConfig(model=lm.name, extract_methods=["dim"])
    run_dir = cache_dir() / "judge-runs" / f"{lm.name.rstrip('/').rsplit('/', 1)[-1]}-{weights_hash(lm.model)}"
    directory = RunDirectory(run_dir)
    if not all(directory.done(stage) for stage in extraction_stages(config, config.extract_methods)):
        run_extract(lm, config, run_dir)  # also finishes an extraction that was interrupted
    return run_dir


class RunAblation:
    """An :data:`~refusal_lab.evaluation.llm_judge.Ablation`: ablate, at every layer, the DiM direction that
    ``run`` selected at scope ``all`` (``"auto"``: :func:`judge_run` of the judge model, extracted on first use).
    A run given by hand is checked at once; ``run_dir`` is where the direction came from once resolved."""

    def __init__(self, run: str | Path = "auto", config: RunConfig | None = None) -> None:
        self.run_dir = None if run == "auto" else self._checked(Path(run))
        self.config = config

    def _checked(self, run: Path) -> Path:
        if "all" not in selected_scopes(run, "dim"):
            raise RefusalLabError(f"{run} has no DiM direction selected at scope all; extract one for the judge "
                                  "model with `refusal-lab extract --model JUDGE_MODEL --out RUN_DIR` and pass "
                                  "--judge-ablate RUN_DIR, or grade without it (--judge-ablate none)")
        return run

    def __call__(self, lm) -> tuple[list[Intervention], str]:
        if self.run_dir is None:
            self.run_dir = self._checked(judge_run(lm, self.config))
        files = sorted((self.run_dir / "methods" / "dim").rglob("*.safetensors"))
        digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
        direction, _ = chosen_for_scope(self.run_dir, "dim", "all", lm.hidden_size)
        hooks = build_intervention("ablate", MethodArtifacts(dim=direction), layer=direction.provenance.layer,
                                   scope="all", n_layers=lm.n_layers)
        return hooks, digest


def make_judge(spec: str, url: str | None = None, api_key_env: str = "REFUSAL_LAB_JUDGE_KEY",
               dtype: str = "auto", device: str = "cpu", cache: bool | Path = True,
               ablate_run: str | Path | None = "auto") -> Judge:
    """:func:`refusal_lab.evaluation.judging.make_judge` with the local llm judge's ablation taken from
    ``ablate_run``: a run directory of the judge's own model, ``"auto"`` (default: :func:`judge_run`), or
    ``"none"`` / None (no ablation). An endpoint judge is graded as it is under ``"auto"``; given a run it is
    refused (the ablation needs the judge's weights)."""
    wanted = spec.partition(":")[0] == "llm" and ablate_run not in (None, "none") and not (url and ablate_run == "auto")
    return judge_from_spec(spec, url=url, api_key_env=api_key_env, dtype=dtype, device=device, cache=cache,
                           ablation=RunAblation(ablate_run) if wanted else None)
