"""Time INLP on every layer of synthetic activations shaped like qwen2.5-coder-1.5b (28 layers, d = 1536).

    python benchmarks/bench_inlp.py [--n-train 256] [--layers 28] [--d 1536] [--classifier logistic] [--C C]
                                     [--record]

INLP reads the training split only: C by 4-fold CV (unless --C), out-of-fold accuracies for the stop rule.
``--record`` writes the total into the timings page's ``inlp`` row (its defaults are that row's settings).

Activations: a large common offset plus heavy-tailed outlier features (like a residual stream), and a planted
concept whose strength grows with depth, carried by 3 orthonormal directions per layer with unequal noise scales.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import add_record_arg, add_run_args, record, setup

from refusal_lab.fitting.inlp import INLPConfig, fit_inlp


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
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--d", type=int, default=1536)
    ap.add_argument("--classifier", choices=["logistic", "svm"], default="logistic")
    ap.add_argument("--C", type=float, default=None, help="fixed C (default: chosen by cross-validation)")
    ap.add_argument("--max-iterations", type=int, default=20)
    ap.add_argument("--stop", choices=["chance", "fixed"], default="chance")
    add_record_arg(ap)
    args = ap.parse_args()
    setup(args)
    if args.quick:
        args.layers, args.d = 4, 256

    X, y = synthetic_layers(args.n_train, args.layers, args.d, seed=0)
    config = INLPConfig(classifier=args.classifier, C=args.C, max_iterations=args.max_iterations, stop=args.stop)
    fit_inlp(X[:, 0], y, INLPConfig(C=1.0, stop="fixed", max_iterations=1))  # warm up imports

    print(f"INLP {args.classifier} C={args.C} stop={args.stop} max_iterations={args.max_iterations}: "
          f"n_train={args.n_train} d={args.d} layers={args.layers} "
          f"threads={torch.get_num_threads()} cpus={os.cpu_count()}")
    print(f"{'layer':>5} {'C':>6} {'k':>3} {'acc_1':>6} {'acc_res':>7} {'stopped':>14} {'fits':>5} {'seconds':>8}")
    total, fits = 0.0, 0
    for layer in range(args.layers):
        t0 = time.perf_counter()
        r = fit_inlp(X[:, layer], y, config)
        dt = time.perf_counter() - t0
        total += dt
        fits += r.n_fits
        print(f"{layer:>5} {r.C:>6g} {r.rank:>3} {r.first_accuracy:>6.3f} {r.residual_accuracy:>7.3f} {r.stopped:>14} "
              f"{r.n_fits:>5} {dt:>8.3f}")
    print(f"total {total:.2f} s, {total / args.layers:.3f} s/layer, {fits} classifier fits, "
          f"{total / fits * 1000:.1f} ms/fit")
    if args.record:
        record("timings", "inlp", {"seconds": f"{total:.1f} s"})


if __name__ == "__main__":
    main()
