"""How well a judge agrees with human labels: accuracy, Cohen's κ and the confusion matrix.

For binary labels (True = refusal), with ``p_o`` the observed agreement and ``p_e = p_h·p_j + (1 − p_h)(1 − p_j)``
the agreement expected by chance from the two raters' marginal refusal rates, ``κ = (p_o − p_e) / (1 − p_e)``
(scikit-learn's ``cohen_kappa_score``). The human labels that ship offline are pyrit's refusal-scorer evaluation
sets (``datasets/scorer_evals/refusal_scorer/refusal.csv`` and ``refusal_extra.csv``: a request, a model response
and a human 0/1 refusal score), its harm-scored sets (``scorer_evals/harm/*.csv``: a human harm score 0–1 in steps
of ¼, from one to three raters) and its objective-achieved sets (``scorer_evals/objective/*.csv``: a human 0/1), all
read without importing pyrit. :func:`recorded_agreement` reads the figures benchmarks/judge_agreement.py recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data.packaged import package_dir

PYRIT_REFUSAL_LABELS = ("refusal.csv", "refusal_extra.csv")
PYRIT_HARM_DUPLICATES = ("mini_hate_speech.csv",)  # its rows are all in hate_speech_multi_score.csv
#: where benchmarks/ record their figures (a source checkout's docs/results/data; absent from an installed wheel)
RESULTS_DATA = Path(__file__).resolve().parents[3] / "docs" / "results" / "data"
#: the judges' recorded agreement with human labels ("accuracy / κ / confusion"): (timings record, figure, the
#: figure giving its n, which labels, which judge and rule)
AGREEMENT_FIGURES = (
    ("judges", "substring", "responses", "pyrit refusal labels", "substring: a refusal phrase"),
    ("judges", "llm", "responses", "pyrit refusal labels", "llm: Judgement.refused"),
    ("unsafe", "harm", "harm responses", "pyrit harm labels (harm > 0)",
     "llm: compliance ≥ 0.5 (the unsafe rule without a guard)"),
    ("unsafe", "objective", "objective responses", "pyrit objective-achieved labels", "llm: compliance ≥ 0.5"),
)


@dataclass
class Agreement:
    """``confusion[i][j]``: responses humans labelled ``i`` and the judge ``j`` (0 = not a refusal, 1 = refusal)."""

    n: int
    accuracy: float
    kappa: float
    confusion: list[list[int]]


def agreement(human: Sequence[bool], judged: Sequence[bool]) -> Agreement:
    """Agreement of ``judged`` with ``human`` labels (equal, non-empty lists; κ = 1 when both use one class only)."""
    if len(human) != len(judged) or not human:
        raise RefusalLabError(f"agreement needs equal, non-empty label lists (got {len(human)} and {len(judged)})")
    # imported here, not at the top: scikit-learn loads scipy, half a second of every CLI start
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    h, j = [int(bool(x)) for x in human], [int(bool(x)) for x in judged]
    accuracy = sum(a == b for a, b in zip(h, j)) / len(h)
    kappa = float(cohen_kappa_score(h, j)) if len(set(h) | set(j)) > 1 else 1.0
    return Agreement(len(h), accuracy, kappa, confusion_matrix(h, j, labels=[0, 1]).tolist())


def _scorer_evals(folder: str, names: Sequence[str] | None = None) -> list[tuple[str, pd.DataFrame]]:
    """``(file name, table)`` of pyrit's ``scorer_evals/<folder>`` CSVs (``names``, default every one)."""
    root = package_dir("pyrit", "pip install --no-deps pyrit") / "datasets" / "scorer_evals" / folder
    paths = [root / name for name in names] if names else sorted(root.glob("*.csv"))
    missing = [p for p in paths if not p.is_file()] or ([] if paths else [root / "*.csv"])
    if missing:
        raise RefusalLabError(f"the installed pyrit has no {missing[0]}; install a pyrit release that ships its "
                              "scorer evaluation sets (`pip install --no-deps pyrit`)")
    return [(p.name, pd.read_csv(p, comment="#")) for p in paths]


def pyrit_refusal_labels() -> pd.DataFrame:
    """pyrit's human-labelled responses: columns ``objective``, ``response``, ``refusal`` (bool), ``file``."""
    frames = []
    for name, table in _scorer_evals("refusal_scorer", PYRIT_REFUSAL_LABELS):
        frames.append(pd.DataFrame({"objective": table["objective"], "response": table["assistant_response"],
                                    "refusal": table["human_score"].astype(int) == 1, "file": name}))
    return pd.concat(frames, ignore_index=True)


def pyrit_harm_labels() -> pd.DataFrame:
    """pyrit's harm-scored responses (every harm file but :data:`PYRIT_HARM_DUPLICATES`): columns ``objective``,
    ``response``, ``harm`` (the raters' mean score, 0–1), ``harmful`` (``harm > 0``: some rater saw harm), ``file``."""
    frames = []
    for name, table in _scorer_evals("harm"):
        if name in PYRIT_HARM_DUPLICATES:
            continue
        harm = table[[c for c in table.columns if c.startswith("human_score")]].astype(float).mean(axis=1)
        frames.append(pd.DataFrame({"objective": table["objective"], "response": table["assistant_response"],
                                    "harm": harm, "harmful": harm > 0, "file": name}))
    return pd.concat(frames, ignore_index=True)


def pyrit_objective_labels() -> pd.DataFrame:
    """pyrit's objective-achieved labels (rows with a request, response and score): columns ``objective``,
    ``response``, ``achieved`` (bool), ``file``."""
    frames = []
    for name, table in _scorer_evals("objective"):
        table = table.dropna(subset=["objective", "assistant_response", "human_score"])
        frames.append(pd.DataFrame({"objective": table["objective"], "response": table["assistant_response"],
                                    "achieved": table["human_score"].astype(int) == 1, "file": name}))
    return pd.concat(frames, ignore_index=True)


def recorded_agreement(data_dir: Path = RESULTS_DATA) -> list[dict[str, str]]:
    """The judges' agreement with human labels as recorded in ``data_dir/timings.json`` (:data:`AGREEMENT_FIGURES`):
    one ``{"judge", "labels", "n", "figure", "command"}`` per recorded figure; empty without the records file."""
    path = Path(data_dir) / "timings.json"
    if not path.is_file():
        return []
    records = {rec["key"]: rec for table in json.loads(path.read_text())["tables"].values()
               for rec in table["records"]}
    found = []
    for key, name, n, labels, judge in AGREEMENT_FIGURES:
        figures = records.get(key, {}).get("figures", {})
        if name in figures:
            command = records[key].get("measured", {}).get(name, {}).get("command") or records[key].get("command", "")
            found.append({"judge": judge, "labels": labels, "n": figures.get(n, "?"), "figure": figures[name],
                          "command": command})
    return found


__all__ = ["Agreement", "agreement", "pyrit_harm_labels", "pyrit_objective_labels", "pyrit_refusal_labels",
           "recorded_agreement"]
