"""One model's geometry for the study: what the figures, findings and report read (:class:`ModelEvidence`).

Everything is measured at DiM's chosen post-instruction position ``i``; activations are ``resid_pre``.
- Heatmaps: cross-layer cosines of the per-layer DiM vectors ``μ₁ − μ₀`` (train means) and of the first INLP
  directions (the first classifier's normalised weight of each layer's INLP fit, sign-aligned with DiM).
- ``inlp_dim_cosine``: per layer, ``|cos|`` between the first INLP direction and DiM (a projection has no sign).
- Geometry table: per layer on ``n_geometry`` validation prompts per side (:func:`~refusal_lab.analysis.geometry
  .residual_geometry`).
- Landing: every evaluated bypass intervention (not controls; rank-k only at the main table's k) applied while the
  same validation prompts run, read at ``resid_pre`` of DiM's chosen layer (a map placed at that layer's input is
  already in it): the fraction of the way from the harmful to the harmless clean validation centroid, the fraction
  nearer the harmless one, the silhouette between the transformed clusters, and both sides on the fixed 2-D frame
  (DiM direction × first orthogonal principal component) and on the top two principal axes, both fitted on the clean
  activations.
- Sensitivity: per layer, cosine of DiM collected in batches vs one prompt at a time, and trained on the matched vs
  the unmatched prompt sets (``n_sensitivity`` per side).
Saved under ``MODEL_DIR/analysis/`` (CSV, safetensors, JSON) by the study's stage ``analyse``, which reads it
back (:func:`load_evidence`) once that stage finished.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from refusal_lab.analysis import plots
from refusal_lab.analysis.coherence import BROKEN_LABEL, broken
from refusal_lab.analysis.evidence import FAMILY, ModelEvidence
from refusal_lab.analysis.geometry import (
    cluster_silhouette,
    cross_layer_cosines,
    fixed_frame,
    landing_fraction,
    pca_frame,
    project,
    residual_geometry,
)
from refusal_lab.analysis.sensitivity import batching_sensitivity, splits_sensitivity
from refusal_lab.core.io import read_json, write_csv, write_json
from refusal_lab.data import Splits, dataset_splits
from refusal_lab.interventions.hooks import apply_interventions
from refusal_lab.models.activations import collect_activations
from refusal_lab.pipeline.artifacts import chosen_for_scope, fit_stage, load_candidates, methods_dir
from refusal_lab.pipeline.evaluate import conditions_from_run
from refusal_lab.pipeline.extraction import fit_context
from refusal_lab.pipeline.rundir import RunDirectory

PANEL_ORDER = ("refusal", "harmless_refusal", "unsafe", "kl", "kl_response", "perplexity", "mmlu", "arc", "repetition",
               "coherence")
FRAME_SIDES = ("harmful", "harmless", "harmful_pca", "harmless_pca")
TABLES = ("inlp_dim_cosine", "geometry", "landing", "sensitivity")  # results and items stay in evaluation/


def load_results(model_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evaluation's result rows and per-item values of one model of a study."""
    directory = Path(model_dir) / "evaluation"
    return pd.read_parquet(directory / "results.parquet"), pd.read_parquet(directory / "items.parquet")


def analyse(lm, config, run_cfg, model_dir: str | Path, fits=None) -> ModelEvidence:
    """The evidence of one model of a study (``config``: a :class:`~refusal_lab.pipeline.study.StudyConfig`),
    measured and saved (the study runs it as a stage and reads a finished one back with :func:`load_evidence`).
    ``fits``: the run's train-split :class:`~refusal_lab.methods.registry.FitContext` if the caller has one."""
    model_dir = Path(model_dir)
    splits = Splits.load(model_dir / "splits.json")
    dim, _ = chosen_for_scope(model_dir, "dim", run_cfg.selection.scopes[0], lm.hidden_size)
    layer, position = dim.provenance.layer, dim.provenance.position
    results, items = _results(model_dir)
    ctx = fits or fit_context(lm, splits, run_cfg)
    dims = (ctx.harmful_mean[:, position] - ctx.harmless_mean[:, position]).float()  # [L, d]
    heatmaps = {"dim": cross_layer_cosines(dims)}
    inlp_cosine = pd.DataFrame(columns=["layer", "cosine"])
    first = _first_inlp_directions(model_dir, position, lm.hidden_size)
    if first:
        layers = sorted(first)
        aligned = torch.stack([first[l] if float(first[l] @ dims[l]) >= 0 else -first[l] for l in layers])
        heatmaps["inlp"] = cross_layer_cosines(aligned)
        inlp_cosine = pd.DataFrame({"layer": layers, "cosine": [
            abs(float(torch.nn.functional.cosine_similarity(first[l], dims[l], dim=0))) for l in layers]})
    n = config.analysis.n_geometry
    val_h, val_b = splits.val_harmful.texts[:n], splits.val_harmless.texts[:n]
    clean_h = collect_activations(lm, val_h, run_cfg.batch_size, description="geometry: harmful").acts[:, :, position]
    clean_b = collect_activations(lm, val_b, run_cfg.batch_size, description="geometry: harmless").acts[:, :, position]
    geometry = residual_geometry(clean_h.float(), clean_b.float(), folds=min(5, len(clean_h), len(clean_b)))
    landing, frames = _landing(lm, config, run_cfg, model_dir, splits, ctx, clean_h[:, layer].float(),
                               clean_b[:, layer].float(), dims[layer], layer, position)
    sensitivity = _sensitivity(lm, config, run_cfg, splits, position) if config.analysis.sensitivity else \
        pd.DataFrame(columns=["layer", "batched_vs_single", "matched_vs_unmatched"])
    evidence = ModelEvidence(lm.name, lm.n_layers, layer, position, layer, results, items, heatmaps, inlp_cosine,
                             geometry, landing, frames, sensitivity)
    save_evidence(evidence, model_dir)
    return evidence


def _results(model_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evaluation's result rows (with each row's method ``family``) and per-item values."""
    results, items = load_results(model_dir)
    return results.assign(family=results["kind"].map(FAMILY).fillna(results["kind"])), items


def _first_inlp_directions(model_dir: Path, position: int, hidden_size: int) -> dict[int, torch.Tensor]:
    """Layer → the first INLP direction (iteration order) at ``position``, where INLP was fitted."""
    if not RunDirectory(model_dir).done(fit_stage("inlp")):
        return {}
    root = methods_dir(model_dir) / "inlp"
    found = {}
    for (layer, pos, _), artifact in load_candidates(root, hidden_size).items():
        if pos == position and artifact.rank > 0:
            found[layer] = artifact.basis[0].float()  # saved in iteration order: row 0 = the first classifier
    return found


def _landing(lm, config, run_cfg, model_dir, splits, fits, clean_h, clean_b, direction, layer, position):
    targets = [t for t in conditions_from_run(lm, model_dir, config.evaluate, run_cfg, splits, plan=config.compare,
                                              fits=fits)[1:]
               if not t.control and t.goal == "bypass"
               and (t.kind != "rank-k" or t.params.get("k") == config.compare.rank_k)]
    frame = fixed_frame(direction, clean_h, clean_b)
    mu_h, mu_b = clean_h.mean(0), clean_b.mean(0)
    n = config.analysis.n_geometry
    prompts = splits.val_harmful.texts[:n] + splits.val_harmless.texts[:n]
    pca = pca_frame(clean_h, clean_b)

    def coordinates(h, b) -> dict[str, np.ndarray]:
        return {"harmful": project(h, frame).numpy(), "harmless": project(b, frame).numpy(),
                "harmful_pca": project(h, pca).numpy(), "harmless_pca": project(b, pca).numpy()}

    frames = {"baseline": coordinates(clean_h, clean_b)}
    rows = []
    for target in targets:
        with apply_interventions(lm, target.interventions):
            acts = collect_activations(lm, prompts, run_cfg.batch_size, use_cache=False,
                                       description=f"landing: {target.name}").acts[:, layer, position].float()
        h, b = acts[: len(clean_h)], acts[len(clean_h):]
        where = landing_fraction(h, mu_h, mu_b)
        rows.append({"intervention": target.name, "kind": target.kind, "params": target.params_json(), "family": FAMILY.get(target.kind, target.kind),
                     "fraction": where.value, "fraction_ci_low": where.low, "fraction_ci_high": where.high,
                     "nearer_harmless": where.nearer_harmless, "silhouette": cluster_silhouette(h, b)})
        frames[target.name] = coordinates(h, b)
    return pd.DataFrame(rows), frames


def _sensitivity(lm, config, run_cfg, splits, position: int) -> pd.DataFrame:
    n = config.analysis.n_sensitivity
    batching = batching_sensitivity(lm, splits.train_harmful.texts[:n], splits.train_harmless.texts[:n],
                                    run_cfg.batch_size)
    matched, unmatched = (dataset_splits(source, n_train=n, n_val=2, seed=run_cfg.seed, n_test=0)
                          for source in ("matched", "unmatched"))
    data = splits_sensitivity(lm, matched, unmatched, batch_size=run_cfg.batch_size)
    pick = lambda frame: frame[frame["position"] == position].set_index("layer")["cosine"]  # noqa: E731
    return pd.DataFrame({"batched_vs_single": pick(batching), "matched_vs_unmatched": pick(data)}).reset_index()


def save_evidence(evidence: ModelEvidence, model_dir: Path) -> None:
    directory = Path(model_dir) / "analysis"
    directory.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        write_csv(getattr(evidence, name), directory / f"{name}.csv")
    tensors = {f"heatmap.{k}": torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in evidence.heatmaps.items()}
    tensors |= {f"frame.{i}.{side}": torch.as_tensor(np.asarray(xy, dtype=np.float32))
                for i, sides in enumerate(evidence.frames.values()) for side, xy in sides.items()}
    save_file(tensors, str(directory / "arrays.safetensors"))
    write_json(directory / "evidence.json", {"model": evidence.model, "n_layers": evidence.n_layers,
                                             "layer": evidence.layer, "position": evidence.position,
                                             "landing_layer": evidence.landing_layer,
                                             "frames": list(evidence.frames)})


def load_evidence(model_dir: str | Path) -> ModelEvidence:
    directory = Path(model_dir) / "analysis"
    meta = read_json(directory / "evidence.json")
    tables = {name: pd.read_csv(directory / f"{name}.csv") for name in TABLES}
    tables["results"], tables["items"] = _results(Path(model_dir))
    arrays = {k: v.numpy() for k, v in load_file(str(directory / "arrays.safetensors")).items()}
    heatmaps = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("heatmap.")}
    frames = {name: {side: arrays[f"frame.{i}.{side}"] for side in FRAME_SIDES if f"frame.{i}.{side}" in arrays}
              for i, name in enumerate(meta["frames"])}
    return ModelEvidence(meta["model"], meta["n_layers"], meta["layer"], meta["position"], meta["landing_layer"],
                         heatmaps=heatmaps, frames=frames, **tables)


def draw_figures(evidence: ModelEvidence, directory: str | Path) -> list[tuple[str, Path]]:
    """Every figure of one model as PNGs in ``directory``: (caption, path), the Δ figure first."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, figures = evidence.model, []

    def add(caption: str, path: Path | None) -> None:
        if path is not None:
            figures.append((caption, Path(path)))

    main = evidence.results[~evidence.results["control"].astype(bool)]
    gone = set(broken(evidence.results))
    rank = {metric: i for i, metric in enumerate(PANEL_ORDER)}
    main = main.sort_values(["metric", "judge", "dataset"], key=lambda c: c.map(rank).fillna(len(rank))
                            if c.name == "metric" else c.fillna(""), kind="stable")  # panels: refusal first
    add(f"{model}: Δ vs the unmodified model per metric (95 % intervals; higher = better for the intervention's "
        "goal), grouped by method family, best per panel starred among the conditions that do not break the model "
        "(those that do: grey, hatched, labelled)",
        plots.delta_figure(main, directory / "delta.png", None, breaks=gone))
    for name, matrix in evidence.heatmaps.items():
        label = "DiM directions" if name == "dim" else "first INLP directions"
        add(f"{model}: cosine between the {label} of every pair of layers (position {evidence.position}); the "
            f"selected layer {evidence.layer} is marked",
            plots.heatmap_figure(matrix, f"{model}: cross-layer cosine, {label}", directory / f"heatmap-{name}.png",
                                 marked_layer=evidence.layer))
    if evidence.frames:
        add(f"{model}: validation activations at layer {evidence.landing_layer} before (light) and after each "
            "intervention on the fixed frame (DiM direction × first orthogonal principal component); a grey panel "
            "breaks the model",
            plots.landing_figure(evidence.frames, directory / "landing.png",
                                 f"{model}: where activations land (layer {evidence.landing_layer})", breaks=gone))
        pca = {name: {"harmful": xy["harmful_pca"], "harmless": xy["harmless_pca"]}
               for name, xy in evidence.frames.items() if "harmful_pca" in xy}
        if pca:
            add(f"{model}: the same activations on the top two principal axes of the clean ones",
                plots.landing_figure(pca, directory / "landing-pca.png",
                                     f"{model}: where activations land, PCA (layer {evidence.landing_layer})",
                                     axis_labels=("PC 1 of the clean activations", "PC 2"), breaks=gone))
    curve = _rank_curve(evidence)
    if len(curve):
        curve["breaks"] = curve.pop("intervention").isin(gone)  # crossed out on the curve
        base = main[(main["intervention"] == curve.attrs["reference"])]
        refs = {"baseline": float(curve.attrs["baseline"])}
        if len(base):
            mark = f" ({BROKEN_LABEL})" if curve.attrs["reference"] in gone else ""
            refs[curve.attrs["reference"] + mark] = float(base["value"].iloc[0])
        add(f"{model}: refusal on held-out harmful requests vs k — INLP rank-k (per row order) and the stacked "
            "multi-layer subspace's leading k rows, beside the single best direction; a cross: breaks the model",
            plots.rank_k_figure(curve, directory / "rank-k.png", "refusal rate on harmful (95 % CI)", refs,
                                title=f"{model}: refusal vs k (INLP rank-k, stacked-layer subspace)"))
    if len(evidence.geometry):
        add(f"{model}: residual geometry per layer (validation activations, position {evidence.position})",
            plots.layer_lines_figure(evidence.geometry, "layer", ["cos_means", "silhouette", "probe_accuracy"],
                                     directory / "geometry.png", f"{model}: residual geometry per layer", "value",
                                     marked_layer=evidence.layer))
    if len(evidence.sensitivity):
        add(f"{model}: cosine per layer of DiM batched vs one prompt at a time, and matched vs unmatched prompt sets",
            plots.layer_lines_figure(evidence.sensitivity, "layer", ["batched_vs_single", "matched_vs_unmatched"],
                                     directory / "sensitivity.png", f"{model}: DiM sensitivity", "cosine",
                                     marked_layer=evidence.layer))
    return figures


def _rank_curve(evidence: ModelEvidence) -> pd.DataFrame:
    """Refusal rate (first judge, longest length) of the rank-k rows and the subspace rows, by k."""
    rows = evidence.results[(evidence.results["metric"] == "refusal") & ~evidence.results["control"].astype(bool)]
    if not len(rows):
        return pd.DataFrame()
    rows = rows[(rows["judge"] == rows["judge"].iloc[0]) & (rows["max_new_tokens"] == rows["max_new_tokens"].max())]
    picked = []
    for _, r in rows[rows["kind"].isin(("rank-k", "subspace"))].iterrows():
        params = json.loads(r["params"])
        if "k" in params:
            order = params.get("order") if r["kind"] == "rank-k" else "stacked layers (subspace)"
            picked.append({"k": int(params["k"]), "order": order, "value": r["value"], "ci_low": r["ci_low"],
                           "ci_high": r["ci_high"], "intervention": r["intervention"]})
    curve = pd.DataFrame(picked).sort_values(["order", "k"]) if picked else pd.DataFrame()
    if len(curve):
        curve.attrs["baseline"] = float(rows["baseline"].iloc[0])
        ablate = rows[rows["kind"] == "ablate"]
        curve.attrs["reference"] = ablate["intervention"].iloc[0] if len(ablate) else ""
    return curve
