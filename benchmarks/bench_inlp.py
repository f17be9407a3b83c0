"""Time INLP on every layer of synthetic activations shaped like qwen2.5-coder-1.5b (28 layers, d = 1536).

    python benchmarks/bench_inlp.py [--n-train 256] [--n-val 128] [--layers 28] [--d 1536] [--classifier logistic]
                                    [--quick]

Activations: a large common offset plus heavy-tailed outlier features (like a residual stream), and a planted
concept whose strength grows with depth, carried by 3 orthonormal directions per layer with unequal noise scales.
"""

from __future__ import annotations

import argparse

import torch
from _common import Report, add_run_args, setup, timed

from refusal_lab.directions.inlp import INLPConfig, fit_inlp

README_TOTAL = "4.8 s"  # the README's figure, for the default settings


def synthetic_layers(n: int, n_layers: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    X = torch.empty(n, n_layers, d)
    sig = torch.tensor([0.5, 1.0, 3.0])
    for layer in range(n_layers):
        lg = torch.Generator().manual_seed(1000 + layer)  # same concept directions for train and val
        U = torch.linalg.qr(torch.randn(d, 3, generator=lg))[0].T
        offset = torch.randn(d, generator=lg) * 2.0
        outliers = torch.zeros(d)
        outliers[torch.randperm(d, generator=lg)[:4]] = 50.0
        strength = 0.2 + 1.5 * layer / max(n_layers - 1, 1)
        c = (2 * y - 1).float()[:, None] * sig * strength + torch.randn(n, 3, generator=g) * sig
        noise = torch.randn(n, d, generator=g) * (1.0 + outliers / 10)
        X[:, layer] = (offset + outliers + noise + c @ U) * (1.0 + layer / 4)
    return X, y


def main() -> None:
    ap = add_run_args(argparse.ArgumentParser(description=__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-val", type=int, default=128)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--d", type=int, default=1536)
    ap.add_argument("--classifier", choices=["logistic", "svm"], default="logistic")
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--max-iterations", type=int, default=20)
    ap.add_argument("--stop", choices=["chance", "fixed"], default="chance")
    args = ap.parse_args()
    setup(args)
    if args.quick:
        args.layers, args.d = 4, 256

    X, y = synthetic_layers(args.n_train, args.layers, args.d, seed=0)
    Xv, yv = synthetic_layers(args.n_val, args.layers, args.d, seed=1)
    config = INLPConfig(classifier=args.classifier, C=args.C, max_iterations=args.max_iterations, stop=args.stop)
    fit_inlp(X[:, 0], y, Xv[:, 0], yv, INLPConfig(stop="fixed", max_iterations=1))  # warm up imports

    setting = (f"INLP {args.classifier} C={args.C} stop={args.stop} max_iterations={args.max_iterations}: "
               f"n_train={args.n_train} n_val={args.n_val} d={args.d} layers={args.layers}")
    per_layer = Report(setting, ("k", "acc_1", "acc_res", "stopped", "seconds"))
    total, fits = 0.0, 0
    for layer in range(args.layers):
        r, seconds = timed(fit_inlp, X[:, layer], y, Xv[:, layer], yv, config)
        total += seconds
        fits += r.rank + 1
        acc1 = r.val_accuracies[0] if r.val_accuracies else r.residual_val_accuracy
        per_layer.add(f"layer {layer}", str(r.rank), f"{acc1:.3f}", f"{r.residual_val_accuracy:.3f}", r.stopped,
                      f"{seconds:.3f}")
    per_layer.print()
    summary = Report(setting)
    default = vars(args) | {"threads": None, "quick": False} == vars(ap.parse_args([]))  # the README's setting
    summary.add(f"all {args.layers} layers (s)", f"{total:.2f}", readme=README_TOTAL if default else None)
    summary.add("per layer (s)", f"{total / args.layers:.3f}")
    summary.add(f"per classifier fit (ms, {fits} fits)", f"{total / fits * 1000:.1f}")
    summary.print()


if __name__ == "__main__":
    main()
