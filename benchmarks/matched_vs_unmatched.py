"""Per-layer sensitivity of DiM candidates: matched vs unmatched training data, batched vs one-by-one.

    python benchmarks/matched_vs_unmatched.py [--model qwen2.5-coder-0.5b-instruct] [--n 32] [--batch-size 16]
                                              [--seed 0] [--dtype auto] [--record]

DiM candidates are trained on the train split of ``dataset_splits("matched", n)`` (built-in pairs) and of
``dataset_splits("unmatched", n)`` (AdvBench vs the generic harmless set). Printed per layer (rows) and
post-instruction position (columns, −1 = last prompt token): cos(matched, unmatched), ‖unmatched‖ / ‖matched‖, and
cos(batched, one-by-one) of the matched train prompts collected ``--batch-size`` at a time against one at a time.
Activations are never read from or written to the cache.

``--record`` writes the timings page's ``matched-vs-unmatched`` row (the 0.5B's; the page's figures are from
``--n 128``): the median cosine over the late layers (the last third) and the sign of the early layers' (the
first third), the range of ‖unmatched‖ / ‖matched‖ over the late layers, and the smallest batched vs one-by-one
cosine in this dtype (bf16 or fp32; run once in each).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
from _common import add_record_arg, record, setup

from refusal_lab.analysis import batching_sensitivity, splits_sensitivity
from refusal_lab.data import dataset_splits
from refusal_lab.models import load_model
from refusal_lab.models.bundled import SMALLEST_MODEL


def show(title: str, table: pd.DataFrame, column: str, digits: int) -> None:
    print(f"\n{title}")
    grid = table.pivot(index="layer", columns="position", values=column)
    print(grid.to_string(float_format=lambda x: f"{x:.{digits}f}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=SMALLEST_MODEL)
    ap.add_argument("--n", type=int, default=32, help="train prompts per side for each source")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto")
    add_record_arg(ap)
    args = ap.parse_args()
    setup(args)

    lm = load_model(args.model, dtype=args.dtype)
    matched = dataset_splits("matched", n_train=args.n, n_val=0, seed=args.seed)
    unmatched = dataset_splits("unmatched", n_train=args.n, n_val=0, seed=args.seed)
    print(f"{lm.name} ({lm.dtype}): n={args.n} per side, batch_size={args.batch_size}, seed={args.seed}; "
          f"matched {matched.data_hash()}, unmatched {unmatched.data_hash()}")

    t0 = time.perf_counter()
    data = splits_sensitivity(lm, matched, unmatched, batch_size=args.batch_size, use_cache=False)
    t1 = time.perf_counter()
    batching = batching_sensitivity(lm, matched.train_harmful.texts, matched.train_harmless.texts, args.batch_size)
    t2 = time.perf_counter()
    data["norm_ratio"] = data["norm_unmatched"] / data["norm_matched"]

    show("cos(DiM matched, DiM unmatched)", data, "cosine", 3)
    show("||DiM unmatched|| / ||DiM matched||", data, "norm_ratio", 2)
    show(f"cos(DiM batched {args.batch_size}, DiM one-by-one), matched train prompts", batching, "cosine", 6)
    live = batching[batching["norm_single"] > 0]
    print(f"\nbatched vs one-by-one over non-zero candidates: min cosine {live['cosine'].min():.6f}, "
          f"max relative difference {live['rel_diff'].max():.2e}")
    print(f"seconds: matched+unmatched extraction {t1 - t0:.1f}, batched+single extraction {t2 - t1:.1f}")
    if args.record:
        record("timings", "matched-vs-unmatched", summary(data, live, lm.n_layers, str(lm.dtype)), model=args.model)


def summary(data: pd.DataFrame, batching: pd.DataFrame, n_layers: int, dtype: str) -> dict[str, str]:
    """The timings row's figures (see the module docstring) from the per-candidate tables."""
    late, early = data[data["layer"] >= 2 * n_layers / 3], data[data["layer"] < n_layers / 3]
    ratios = late.groupby("layer")["norm_ratio"].median()
    sign = "negative" if early["cosine"].median() < 0 else "positive"
    lowest = batching["cosine"].min()
    name = "batched bfloat16" if "bfloat16" in dtype else "batched float32"
    return {"cosine": f"≈ {late['cosine'].median():.1f} at late layers ({sign} early)",
            "norm ratio": f"{ratios.min():.0f}–{ratios.max():.0f}×",
            name: f"{lowest:.3f}" if lowest >= 0.9995 else f"≥ {lowest:.3f}"}


if __name__ == "__main__":
    main()
