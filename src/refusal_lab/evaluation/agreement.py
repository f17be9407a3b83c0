"""How well a judge agrees with human labels: accuracy, Cohen's κ and the confusion matrix.

For binary labels (True = refusal), with ``p_o`` the observed agreement and ``p_e = p_h·p_j + (1 − p_h)(1 − p_j)``
the agreement expected by chance from the two raters' marginal refusal rates, ``κ = (p_o − p_e) / (1 − p_e)``
(scikit-learn's ``cohen_kappa_score``). The human labels that ship offline are pyrit's refusal-scorer evaluation
sets (``datasets/scorer_evals/refusal_scorer/refusal.csv`` and ``refusal_extra.csv``: a request, a model response
and a human 0/1 refusal score), read without importing pyrit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data.packaged import package_dir

PYRIT_REFUSAL_LABELS = ("refusal.csv", "refusal_extra.csv")


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


def pyrit_refusal_labels() -> pd.DataFrame:
    """pyrit's human-labelled responses: columns ``objective``, ``response``, ``refusal`` (bool), ``file``."""
    root = package_dir("pyrit", "pip install --no-deps pyrit") / "datasets" / "scorer_evals" / "refusal_scorer"
    frames = []
    for name in PYRIT_REFUSAL_LABELS:
        path = root / name
        if not path.is_file():
            raise RefusalLabError(f"the installed pyrit has no {path}; install a pyrit release that ships its scorer "
                                  "evaluation sets (`pip install --no-deps pyrit`)")
        table = pd.read_csv(path, comment="#")
        frames.append(pd.DataFrame({"objective": table["objective"], "response": table["assistant_response"],
                                    "refusal": table["human_score"].astype(int) == 1, "file": name}))
    return pd.concat(frames, ignore_index=True)


__all__ = ["Agreement", "agreement", "pyrit_refusal_labels"]
