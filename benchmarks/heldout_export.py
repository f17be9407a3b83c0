"""The trial an ``optimize`` run exports, held out: every chat context × request set, by the run's phrase judge and by
the llm judge, beside the unedited model.

    python benchmarks/heldout_export.py --run runs/opt-0.5b [--n 50] [--judged 10] [--trial N]

Phrase judge: :func:`refusal_lab.pipeline.assess.assess_front` on the first ``--n`` held-out requests per side
(refusals at the search's length, first-token KL per context; ``RUN_DIR/heldout/``). llm judge:
:func:`refusal_lab.pipeline.assess.judge_heldout` on the first ``--judged`` of them at the run's
``compliance_check.max_new_tokens`` (non-compliant, covert, incoherent; the phrase judge's refusals at that length as
``judged_refusals``). The trial is ``--trial`` or the one
``abliterate`` exports by default (:func:`refusal_lab.pipeline.export.choose_trial`); the run's seen prompts are
checked first. Writes ``RUN_DIR/heldout-export.csv`` (one row per context and set).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import Report, add_run_args, setup

from refusal_lab.core.io import write_csv
from refusal_lab.models.load import load_model
from refusal_lab.pipeline.assess import assess_front, judge_heldout
from refusal_lab.pipeline.export import choose_trial
from refusal_lab.pipeline.search_data import OptimizeConfig


def main() -> None:
    parser = add_run_args(argparse.ArgumentParser(description=__doc__,
                                                  formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--run", type=Path, required=True, help="an optimize run directory")
    parser.add_argument("--n", type=int, default=50, help="held-out requests per context and set (phrase judge)")
    parser.add_argument("--judged", type=int, default=10, help="of those, judged by the llm judge (0: none)")
    parser.add_argument("--trial", type=int, help="default: the trial abliterate exports")
    args = parser.parse_args()
    setup(args)
    config = OptimizeConfig.model_validate(json.loads((args.run / "config.json").read_text()))
    trial, criterion = choose_trial(args.run, args.trial, config.max_kl)
    n, judged = (4, min(args.judged, 2)) if args.quick else (args.n, args.judged)
    lm = load_model(config.model, dtype=config.dtype)
    cells = assess_front(lm, args.run, n, trials=[trial]).contexts.astype({"trial": str})
    keys = ["trial", "context", "set"]
    if judged:
        llm = judge_heldout(lm, args.run, [trial], judged).astype({"trial": str})
        cells = cells.merge(llm.rename(columns={"n": "judged_n", "refusals": "judged_refusals"}), on=keys,
                             how="left")
    write_csv(cells, args.run / "heldout-export.csv")
    base, edited = (cells[cells["trial"] == t].set_index(["context", "set"]) for t in ("baseline", str(trial)))
    columns = [f"{config.judge} refusals of {n}: base → trial", "KL"]
    columns += [f"llm non-compliant of {judged}: base → trial", "covert", "incoherent"] if judged else []
    report = Report(f"trial {trial} of {args.run} held out (chosen by {criterion})", tuple(columns))
    for (context, request_set), row in edited.iterrows():
        was = base.loc[(context, request_set)]
        values = [f"{was['refusals']} → {row['refusals']}", f"{row['kl']:.3f}"]
        if judged:
            values += [f"{was['noncompliant']:.0f} → {row['noncompliant']:.0f}", f"{row['covert']:.0f}",
                       f"{row['incoherent']:.0f}"]
        report.add(f"{context} / {request_set}", *values)
    report.print()


if __name__ == "__main__":
    main()
