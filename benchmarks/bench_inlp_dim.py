"""INLP against DiM on a model's real activations: the first classifier's regularisation, and where the class means
sit inside the INLP span.

    python benchmarks/bench_inlp_dim.py --model qwen2.5-coder-1.5b-instruct [--position -2] [--from-layer N]
                                        [--layers 16 20] [--quick] [--record]

Activations: ``resid_pre`` at post-instruction position ``--position`` of the default splits (train 128 + 128 to fit,
val 32 + 32 held out), from :func:`refusal_lab.models.activations.collect_activations` (cached on disk). ``v`` is the DiM
vector ``μ_harmful − μ_harmless`` of the train activations.

* regularisation: at every layer < 0.8·L with a non-zero DiM vector, the first INLP classifier (logistic regression
  on the centred, globally scaled activations; :func:`refusal_lab.fitting.inlp.fit_inlp`, one iteration) at
  C = 1 and C = 0.001:
  ``cos(w₁, v)`` and its held-out accuracy. The summary gives their ranges from ``--from-layer`` (default 0.4·L,
  layer 11 of 28, where the 1.5B's first classifiers reach 0.91–0.97) up to 0.8·L. As C → 0 the logistic weight
  tends to the (scaled) mean difference, so the cosine should rise at little cost in accuracy.
* class means: full INLP (C = 1, up to 20 iterations, stop at chance: the ``extract --method inlp`` defaults) at
  each of ``--layers``, ``V [k, d]`` its orthonormal rows, and ``cos(μ_harmful Vᵀ, μ_harmless Vᵀ)`` with ``μ`` the
  raw (uncentred) train class means. A large cosine means the two means share a component inside the span, so the
  flip ``h ↦ h (2P − I)`` through the origin sends both the same way rather than one onto the other.

``--record`` writes the C = 1 / C = 0.001 cosine ranges and the class-mean cosines into the timings page's rows
``inlp-dim.cosine`` and ``inlp-dim.means`` (the 1.5B's; a layer the page has no place for refuses).
"""

from __future__ import annotations

import argparse

import torch
from _common import (
    Report,
    add_model_args,
    add_record_arg,
    load,
    readme_figures,
    record,
    setup,
)

from refusal_lab.data import default_splits
from refusal_lab.fitting.dim import cosine_matrix, dim_candidates
from refusal_lab.fitting.inlp import INLPConfig, fit_inlp
from refusal_lab.models.activations import collect_activations

CS = (1.0, 0.001)
README_C = {"qwen2.5-coder-1.5b-instruct": {"cos 1.0": "0.3–0.6", "cos 0.001": "0.83–0.92", "acc 1.0": "0.91–0.97",
                                            "acc 0.001": "equal to C = 1"}}
README_MEANS = {"qwen2.5-coder-1.5b-instruct": {16: "0.56", 20: "0.79"}}


def xy(harmful: torch.Tensor, harmless: torch.Tensor, layer: int, position: int) -> tuple[torch.Tensor, ...]:
    """Rows of ``[n, L, P, d]`` activations at one layer and position: ``X`` harmful first, ``y`` = 1 for harmful."""
    X = torch.cat([harmful[:, layer, position], harmless[:, layer, position]]).float()
    y = torch.cat([torch.ones(len(harmful), dtype=torch.long), torch.zeros(len(harmless), dtype=torch.long)])
    return X, y


def span(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}" if values else "no layer"


def main() -> None:
    parser = add_model_args(argparse.ArgumentParser(description=__doc__,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--position", type=int, default=-2, help="post-instruction position (negative index)")
    parser.add_argument("--from-layer", type=int, help="first layer of the summary ranges (default 0.4·L)")
    parser.add_argument("--layers", type=int, nargs="+", default=[16, 20], help="layers for the class-mean cosines")
    parser.add_argument("--batch-size", type=int, default=32)
    add_record_arg(parser)
    args = parser.parse_args()
    setup(args)

    lm = load(args)
    splits = default_splits()
    n_train, n_val = (16, 8) if args.quick else (None, None)
    acts = {name: collect_activations(lm, getattr(splits, name).texts[:n], args.batch_size, description=name)
            for name, n in (("train_harmful", n_train), ("train_harmless", n_train),
                            ("val_harmful", n_val), ("val_harmless", n_val))}
    dim = dim_candidates(acts["train_harmful"].mean, acts["train_harmless"].mean)[:, args.position]  # [L, d]
    harmful, harmless = acts["train_harmful"].acts, acts["train_harmless"].acts
    sizes = f"train {len(harmful)} + {len(harmless)}, val {len(acts['val_harmful'].acts)} + " \
            f"{len(acts['val_harmless'].acts)}"

    from_layer = round(0.4 * lm.n_layers) if args.from_layer is None else args.from_layer
    columns = tuple(f"{what} C={C:g}" for C in CS for what in ("cos(w₁, v)", "acc"))
    per_layer = Report(f"{lm.name}, position {args.position}: first INLP classifier vs DiM ({sizes})", columns)
    found = {(what, C): [] for what in ("cos", "acc") for C in CS}
    for layer in (l for l in range(lm.n_layers) if l < 0.8 * lm.n_layers and dim[l].norm() > 1e-6):
        X, y = xy(harmful, harmless, layer, args.position)
        Xv, yv = xy(acts["val_harmful"].acts, acts["val_harmless"].acts, layer, args.position)
        fits = {C: fit_inlp(X, y, Xv, yv, INLPConfig(C=C, stop="fixed", max_iterations=1)) for C in CS}
        cos = {C: float(cosine_matrix(fits[C].basis[0], dim[layer])[0, 0]) for C in CS}
        acc = {C: fits[C].val_accuracies[0] for C in CS}
        per_layer.add(f"layer {layer}", *(f"{value[C]:.2f}" for C in CS for value in (cos, acc)))
        if layer >= from_layer:
            for C in CS:
                found[("cos", C)].append(cos[C])
                found[("acc", C)].append(acc[C])
    per_layer.print()

    figures = readme_figures(README_C, lm.name)
    summary = Report(f"{lm.name}, position {args.position}: ranges over layers {from_layer} to < 0.8·L "
                     f"({len(found[('cos', 1.0)])} layers)")
    for (what, C), values in found.items():
        label = "cos(first INLP direction, DiM)" if what == "cos" else "first classifier's held-out accuracy"
        summary.add(f"{label}, C = {C:g}", span(values), readme=figures.get(f"{what} {C}"))
    summary.print()

    figures = readme_figures(README_MEANS, lm.name)
    cosines = {}
    means = Report(f"{lm.name}, position {args.position}: class means inside the INLP span V (C = 1, ≤ 20 "
                   f"directions, stop at chance)", ("rank k", "cos(μ_harmful Vᵀ, μ_harmless Vᵀ)"))
    for layer in args.layers:
        X, y = xy(harmful, harmless, layer, args.position)
        Xv, yv = xy(acts["val_harmful"].acts, acts["val_harmless"].acts, layer, args.position)
        V = fit_inlp(X, y, Xv, yv, INLPConfig()).basis.double()
        mu_harmful = acts["train_harmful"].mean[layer, args.position] @ V.T
        mu_harmless = acts["train_harmless"].mean[layer, args.position] @ V.T
        cosine = float(cosine_matrix(mu_harmful, mu_harmless)[0, 0]) if len(V) else float("nan")
        means.add(f"layer {layer}", str(len(V)), f"{cosine:.2f}", readme=figures.get(layer))
        cosines[f"layer {layer}"] = f"{cosine:.2f}"
    means.print()
    if args.record:
        record("timings", "inlp-dim.cosine", {f"C={C:g}": span(found[("cos", C)]) for C in CS}, model=args.model)
        record("timings", "inlp-dim.means", cosines, model=args.model)


if __name__ == "__main__":
    main()
