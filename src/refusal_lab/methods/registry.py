"""The ``Method`` interface and its implementations: DiM, INLP (nullspace), flip, classifier, LEACE, subspace.

A method *fits* candidate artifacts from the train activations (keyed ``(layer, position, k)``) and says, through
:meth:`Method.plan`, what selection applies to one candidate at one scope (:class:`~refusal_lab.selection.select.Plan`).
Everything else — selection, storage, the comparison, baking — is shared.

========== ======================== ================================ =============================== ============
method     artifact                 bypass (val harmful)             induce (val harmless)           KL
========== ======================== ================================ =============================== ============
dim        Direction v = μ_h − μ_b  ablate r̂ (all sites, scope)      ActAdd +s·v at the layer        bypass
inlp       Subspace V (INLP)        nullspace P at the scope         — (an erasure)                  bypass
flip       the INLP Subspace        P_α (α = 2) at the scope         the same flip on harmless       nullspace P
classifier Direction w/‖w‖·‖v‖      ActAdd −s·w at the scope         ActAdd +s·w at the scope        bypass
leace      AffineEraser             the eraser (per-layer fits)      —                               bypass
subspace   QR of top-K DiM vectors  projection of leading k rows     —                               bypass
========== ======================== ================================ =============================== ============

Additive induce plans are tried at each of ``selection.induce_scales``; the flip's KL is the nullspace's (the flip is
*meant* to move harmless prompts, so its own KL measures induction, not damage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from refusal_lab.core.artifacts import Direction, MethodArtifacts, Provenance
from refusal_lab.core.config import ConfigModel
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.vocabulary import ARTIFACT_OF, FlipVariant
from refusal_lab.fitting.classifier import classifier_direction
from refusal_lab.fitting.dim import dim_candidates
from refusal_lab.fitting.inlp import INLPConfig, inlp_per_layer
from refusal_lab.fitting.leace import fit_leace, fit_leace_per_layer
from refusal_lab.fitting.subspace import stack_subspace
from refusal_lab.interventions.factory import build_intervention
from refusal_lab.selection.select import Plan


class MethodsConfig(ConfigModel):
    """The methods' own settings (``[methods]`` in a run config)."""

    flip_alpha: float = 2.0
    flip_variant: FlipVariant = "input"
    center: bool = False  # nullspace / flip through the training mean (per-layer fits at multi-layer scopes)
    subspace_k: int = 4
    inlp_max_iterations: int = 20
    inlp_classifier: Literal["logistic", "svm"] = "logistic"
    inlp_C: float | None = None  # None: chosen by cross-validation on the train split

    def inlp_config(self) -> INLPConfig:
        return INLPConfig(classifier=self.inlp_classifier, C=self.inlp_C, max_iterations=self.inlp_max_iterations)


@dataclass
class FitContext:
    """What every fit needs: train activations ``[n, L, P, d]`` and means, shape, provenance defaults, and (after
    DiM's selection) the DiM ranking of ``(layer, position)``, best first, one per layer."""

    model: str
    train_harmful: torch.Tensor
    train_harmless: torch.Tensor
    harmful_mean: torch.Tensor  # [L, P, d] float64
    harmless_mean: torch.Tensor
    data_hash: str = ""
    max_layer_fraction: float = 0.8
    ranked: list[tuple[int, int]] | None = None
    inlp_results: dict | None = None  # INLP fits, shared by the inlp, flip and classifier methods
    leace_fits: dict = field(default_factory=dict)  # position → {layer: eraser}
    # selection.candidates = "dim": the cells selection may choose (DiM's); LEACE fits only these (an
    # eigendecomposition per cell is its cost), the other fits still cover every cell for the analyses
    selectable: set[tuple[int, int]] | None = None

    def inlp(self, config: MethodsConfig) -> dict:
        """``{(layer, position): INLPResult}`` on the train split for every eligible cell (computed once)."""
        if self.inlp_results is None:
            self.inlp_results = {}
            for p in range(self.n_positions):
                position = p - self.n_positions
                layers = [layer for layer, pos in self.cells() if pos == position]
                if layers:
                    X, y = self.xy(slice(None), position)
                    for layer, result in inlp_per_layer(X, y, config.inlp_config(), layers=layers,
                                                        progress=False).items():
                        self.inlp_results[(layer, position)] = result
        return self.inlp_results

    @property
    def n_layers(self) -> int:
        return self.harmful_mean.shape[0]

    @property
    def n_positions(self) -> int:
        return self.harmful_mean.shape[1]

    @property
    def hidden_size(self) -> int:
        return self.harmful_mean.shape[2]

    def dim_vectors(self) -> torch.Tensor:
        return dim_candidates(self.harmful_mean, self.harmless_mean)

    def cells(self) -> list[tuple[int, int]]:
        """``(layer, position)`` with layer < max_layer_fraction·L and a non-zero DiM vector; position negative."""
        vectors = self.dim_vectors()
        return [(layer, p - self.n_positions) for layer in range(self.n_layers) for p in range(self.n_positions)
                if layer < self.max_layer_fraction * self.n_layers and vectors[layer, p].norm() > 1e-6]

    def provenance(self, method: str, layer: int | None, position: int | None, **extra) -> Provenance:
        return Provenance(self.model, method, self.hidden_size, layer, position, self.data_hash,
                          {"n_layers": self.n_layers, **extra})

    def xy(self, layer: int | slice, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train ``X`` (harmful rows first) and ``y`` (1 = harmful) at a layer (or slice) and negative position."""
        h, b = self.train_harmful[:, layer, position], self.train_harmless[:, layer, position]
        y = torch.cat([torch.ones(len(h), dtype=torch.long), torch.zeros(len(b), dtype=torch.long)])
        return torch.cat([h, b]).float(), y

    def center(self, layer: int, position: int) -> torch.Tensor:
        """The training mean at ``(layer, position)`` (balanced classes: the midpoint of the class means)."""
        return ((self.harmful_mean[layer, position] + self.harmless_mean[layer, position]) / 2).float()

    def centers(self, position: int) -> dict[int, torch.Tensor]:
        """Every layer's training mean at ``position``: the per-layer centres of a centred map."""
        return {layer: self.center(layer, position) for layer in range(self.n_layers)}

    def erasers(self, position: int) -> dict:
        """One LEACE eraser per layer at ``position`` (for multi-layer scopes; computed once per position)."""
        if position not in self.leace_fits:
            y = torch.cat([torch.ones(len(self.train_harmful)), torch.zeros(len(self.train_harmless))]).long()
            acts = torch.cat([self.train_harmful, self.train_harmless]).float()
            self.leace_fits[position] = fit_leace_per_layer(acts, y, self.provenance("leace", None, position),
                                                            position=position, skip_degenerate=True)
        return self.leace_fits[position]


@dataclass
class PlanEnv:
    """What a plan needs besides the artifact: the model's depth, the layer ranking, the settings."""

    n_layers: int
    ranked_layers: list[int]
    methods: MethodsConfig
    induce_scales: list[float]
    fits: FitContext | None = None  # per-layer centres and erasers for affine maps at multi-layer scopes


class Method:
    """One linear method: fit candidates, and plan what selection applies (see the module table)."""

    name: str = ""
    fitted_by: str = ""  # the method whose fit provides the candidates (flip reuses INLP's)
    inlp_derived: bool = False
    kind: str = ""  # the intervention kind (refusal_lab.interventions.factory) that applies the artifact

    def fit(self, ctx: FitContext, config: MethodsConfig) -> dict[tuple, object]:
        raise NotImplementedError

    def build(self, kind: str, artifact, layer: int | None, scope: str, env: PlanEnv, **params):
        return build_intervention(kind, MethodArtifacts(**{ARTIFACT_OF[kind]: artifact}), layer=layer, scope=scope,
                                  n_layers=env.n_layers, ranked_layers=env.ranked_layers, **params)

    def plan(self, artifact, layer: int | None, scope: str, env: PlanEnv) -> Plan:
        ivs = self.build(self.kind, artifact, layer, scope, env)
        return Plan(bypass=ivs, kl=ivs)


class DiM(Method):
    name, fitted_by, kind = "dim", "dim", "ablate"

    def fit(self, ctx, config):
        """Every layer and position with a non-zero vector (layers ≥ 0.8·L stay in the table, filtered)."""
        vectors = ctx.dim_vectors()
        return {(layer, p - ctx.n_positions, None): Direction(vectors[layer, p],
                                                              ctx.provenance("dim", layer, p - ctx.n_positions))
                for layer in range(ctx.n_layers) for p in range(ctx.n_positions) if vectors[layer, p].norm() > 1e-6}

    def plan(self, artifact, layer, scope, env):
        ablate = self.build("ablate", artifact, layer, scope, env)
        induce = {s: self.build("actadd", artifact, layer, "layer", env, scale=s) for s in env.induce_scales}
        return Plan(bypass=ablate, kl=ablate, induce=induce, kl_key=("dim", layer, artifact.provenance.position, scope))


class INLP(Method):
    name, fitted_by, kind, inlp_derived = "inlp", "inlp", "nullspace", True

    def fit(self, ctx, config):
        return {(layer, position, None): result.to_subspace(ctx.provenance(
                    "inlp", layer, position, center=ctx.center(layer, position).tolist()))
                for (layer, position), result in ctx.inlp(config).items() if result.rank}

    def _centered(self, artifact, env: PlanEnv) -> dict:
        if not env.methods.center:
            return {}
        return {"center": True, "centers": env.fits.centers(artifact.provenance.position) if env.fits else None}

    def plan(self, artifact, layer, scope, env):
        ivs = self.build("nullspace", artifact, layer, scope, env, **self._centered(artifact, env))
        return Plan(bypass=ivs, kl=ivs, kl_key=("P", layer, artifact.provenance.position, scope, env.methods.center))


class Flip(INLP):
    name, fitted_by, kind = "flip", "inlp", "flip"

    def plan(self, artifact, layer, scope, env):
        flip = self.build("flip", artifact, layer, scope, env, alpha=env.methods.flip_alpha,
                          flip_variant=env.methods.flip_variant, **self._centered(artifact, env))
        nullspace = super().plan(artifact, layer, scope, env)
        return Plan(bypass=flip, kl=nullspace.kl, induce={float("nan"): flip}, kl_key=nullspace.kl_key)


class Classifier(Method):
    name, fitted_by, kind, inlp_derived = "classifier", "classifier", "classifier-actadd", True

    def fit(self, ctx, config):
        vectors = ctx.dim_vectors()
        return {(layer, position, None): classifier_direction(
                    result, Direction(vectors[layer, position], ctx.provenance("classifier", layer, position)))
                for (layer, position), result in ctx.inlp(config).items() if result.rank}

    def plan(self, artifact, layer, scope, env):
        bypass = self.build(self.kind, artifact, layer, scope, env, scale=-env.induce_scales[0])
        induce = {s: self.build(self.kind, artifact, layer, scope, env, scale=s) for s in env.induce_scales}
        return Plan(bypass=bypass, kl=bypass, induce=induce)


class LEACE(Method):
    name, fitted_by, kind = "leace", "leace", "leace"

    def fit(self, ctx, config):
        erasers = {}
        for layer, position in ctx.cells():
            if ctx.selectable is not None and (layer, position) not in ctx.selectable:
                continue
            X, y = ctx.xy(layer, position)
            try:
                erasers[(layer, position, None)] = fit_leace(X, y, ctx.provenance("leace", layer, position))
            except RefusalLabError:  # degenerate cell (e.g. identical activations): not a candidate
                continue
        return erasers

    def plan(self, artifact, layer, scope, env):
        per_layer = {"erasers": env.fits.erasers(artifact.provenance.position)} if scope != "layer" and env.fits else {}
        ivs = self.build("leace", artifact, layer, scope, env, **per_layer)
        return Plan(bypass=ivs, kl=ivs)


class Stack(Method):
    name, fitted_by, kind = "subspace", "subspace", "subspace"

    def fit(self, ctx, config):
        if not ctx.ranked:
            raise RefusalLabError("the subspace method stacks DiM-ranked layers; select DiM first")
        top = ctx.ranked[: config.subspace_k]
        vectors = ctx.dim_vectors()
        stack = stack_subspace([vectors[layer, position] for layer, position in top],
                               ctx.provenance("subspace", top[0][0], top[0][1], layers=[lay for lay, _ in top],
                                              positions=[pos for _, pos in top]))
        return {(None, None, k): stack.truncate(k) for k in range(1, stack.rank + 1)}

    def plan(self, artifact, layer, scope, env):
        ivs = self.build("subspace", artifact, layer, scope, env)
        return Plan(bypass=ivs, kl=ivs)


METHODS: dict[str, Method] = {m.name: m for m in (DiM(), INLP(), Flip(), Classifier(), LEACE(), Stack())}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise RefusalLabError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
