"""The rule that scores come only from rows no extraction, selection or search has seen, enforced in one place:
:func:`eval_prompts`, which ``compare``, ``evaluate`` and optimize's held-out assessment take their prompts from
(the run's test split, or a fixed held-out set by name: ``generic`` / ``advbench``, ``harmbench``).

What counts as seen: every train and validation prompt of the run's splits (``RUN_DIR/splits.json``), plus every
prompt a search listed in ``RUN_DIR/seen/*.json`` (a JSON list of prompt texts, written by any step that chooses
something from prompts). Texts are compared case- and whitespace-insensitively.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import write_json
from refusal_lab.data import Splits, heldout_advbench, heldout_generic, heldout_harmbench
from refusal_lab.data.prompts import text_key


#: The fixed held-out harmful request sets by name (each against the generic held-out harmless requests);
#: ``generic`` is the historical name of ``advbench``.
HELDOUT_SETS = {"generic": heldout_advbench, "advbench": heldout_advbench, "harmbench": heldout_harmbench}
EVAL_SETS = ("test", *HELDOUT_SETS)


def seen_prompts(splits: Splits | None, run_dir: str | Path | None = None) -> set[str]:
    """Normalised texts of every prompt that extraction, selection or a search used (``splits`` None: a run with no
    splits, such as an ``optimize`` run, whose searches list everything they saw in ``RUN_DIR/seen``)."""
    seen = set() if splits is None else {text_key(p.text) for name in ("train_harmful", "train_harmless",
                                                                        "val_harmful", "val_harmless")
                                         for p in getattr(splits, name)}
    if run_dir is not None:
        for path in sorted((Path(run_dir) / "seen").glob("*.json")):
            seen |= {text_key(text) for text in json.loads(path.read_text())}
    return seen


def record_seen(run_dir: str | Path, step: str, prompts: Iterable[str]) -> Path:
    """Record that ``step`` (a search, a selection) chose something using ``prompts``."""
    path = Path(run_dir) / "seen" / f"{step}.json"
    write_json(path, sorted(set(prompts)))
    return path


def require_unseen(prompts: Sequence[str], seen: set[str], what: str) -> None:
    """Raise :class:`RefusalLabError` if any of ``prompts`` was seen by extraction, selection or a search."""
    overlap = [p for p in prompts if text_key(p) in seen]
    if overlap:
        example = overlap[0] if len(overlap[0]) <= 60 else overlap[0][:57] + "..."
        raise RefusalLabError(f"{len(overlap)} of the {len(prompts)} {what} were used to extract, select or search "
                              f"(e.g. {example!r}); scores must come from held-out rows: evaluate on the run's test "
                              "split (--eval-set test) or the generic held-out set")


def eval_prompts(splits: Splits | None, eval_set: str, n: int | None = None,
                 run_dir: str | Path | None = None) -> tuple[list[str], list[str]]:
    """Held-out (harmful, harmless) prompts, the first ``n`` per side: the run's test split (``test``), or a fixed
    held-out harmful set of :data:`HELDOUT_SETS` (``generic`` / ``advbench``: AdvBench; ``harmbench``: HarmBench)
    against the generic everyday requests (:mod:`refusal_lab.data.sources`), never in any train / val split.
    Checked against every prompt extraction, selection or a search saw (:func:`seen_prompts`)."""
    if eval_set in HELDOUT_SETS:
        harmful, harmless = HELDOUT_SETS[eval_set](splits).texts, heldout_generic(splits).texts
    elif eval_set == "test" and splits is not None:
        harmful, harmless = splits.test_harmful.texts, splits.test_harmless.texts
    else:
        raise RefusalLabError(f"unknown evaluation set {eval_set!r}; use one of {', '.join(EVAL_SETS)}"
                              + (" (test needs a run with splits)" if eval_set == "test" else ""))
    harmful, harmless = harmful[:n], harmless[:n]
    seen = seen_prompts(splits, run_dir)
    require_unseen(harmful, seen, "harmful evaluation prompts")
    require_unseen(harmless, seen, "harmless evaluation prompts")
    return harmful, harmless
