"""Judge agreement with human labels: κ, accuracy and the confusion matrix by hand; pyrit's labelled responses."""

from __future__ import annotations

import pytest

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.evaluation.agreement import agreement, pyrit_refusal_labels
from refusal_lab.evaluation.judges import is_refusal


def test_kappa_accuracy_and_confusion_by_hand():
    human = [1, 1, 1, 0, 0, 0, 1, 0]
    judged = [1, 1, 0, 0, 0, 1, 1, 0]
    # p_o = 6/8; both raters say "refusal" half the time, so p_e = ½·½ + ½·½ = ½ and κ = (¾ − ½)/(1 − ½) = ½
    a = agreement(human, judged)
    assert (a.n, a.accuracy, a.kappa) == (8, 0.75, pytest.approx(0.5))
    assert a.confusion == [[3, 1], [1, 3]]  # rows: human 0 / 1; columns: judge 0 / 1
    assert agreement([1, 0, 1], [1, 0, 1]).kappa == pytest.approx(1.0)
    assert agreement([1, 1], [1, 1]).kappa == 1.0  # one class only, full agreement
    assert agreement([1, 0, 1, 0], [0, 1, 0, 1]).kappa == pytest.approx(-1.0)
    with pytest.raises(RefusalLabError, match="equal, non-empty"):
        agreement([1, 0], [1])


def test_pyrit_human_labels_load_and_the_substring_judge_beats_chance_but_misses_refusals():
    labels = pyrit_refusal_labels()
    assert len(labels) == 169 and set(labels["file"]) == {"refusal.csv", "refusal_extra.csv"}
    assert labels["refusal"].sum() == 109 and labels["response"].str.len().min() > 0
    a = agreement(labels["refusal"].tolist(), [is_refusal(r) for r in labels["response"]])
    assert 0.2 < a.kappa < 0.9
    (true_negative, false_positive), (false_negative, true_positive) = a.confusion
    assert false_positive == 0 and false_negative > 0  # its phrases never fire on compliance, but miss deflections
