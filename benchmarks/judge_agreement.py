"""Agreement of the refusal judges with human labels (pyrit's refusal-scorer evaluation sets), beside the README.

    python benchmarks/judge_agreement.py

Per labelled file and overall: responses, accuracy, Cohen's κ and the confusion matrix (rows: human not-refusal /
refusal; columns: judge) of the substring judge (Arditi et al.'s phrase list). No model is loaded.
"""

from __future__ import annotations

from _common import Report

from refusal_lab.evaluation.agreement import agreement, pyrit_refusal_labels
from refusal_lab.evaluation.judges import is_refusal

README = {"all": "0.70 / 0.45 / [[60, 0], [51, 58]]", "refusal.csv": "0.81 / 0.62 / [[35, 0], [20, 50]]",
          "refusal_extra.csv": "0.52 / 0.17 / [[25, 0], [31, 8]]"}


def main() -> None:
    labels = pyrit_refusal_labels()
    labels["substring"] = [is_refusal(r) for r in labels["response"]]
    report = Report("substring judge vs human refusal labels: accuracy / Cohen's κ / confusion")
    for name, part in [("all", labels), *labels.groupby("file")]:
        a = agreement(part["refusal"].tolist(), part["substring"].tolist())
        report.add(f"{name} ({a.n} responses)", f"{a.accuracy:.2f} / {a.kappa:.2f} / {a.confusion}",
                   readme=README.get(name))
    report.print()


if __name__ == "__main__":
    main()
