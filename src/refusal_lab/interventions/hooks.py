"""Apply interventions to a model with forward hooks, inside a context manager that always removes them.

Sites (where in layer ``l`` a map acts):
  * ``resid_pre`` — the residual stream entering layer ``l`` (a forward pre-hook on the decoder layer);
  * ``attn_out``  — what the attention block adds to the residual stream;
  * ``mlp_out``   — what the MLP block adds to the residual stream.

Scopes (which layers): ``layer`` (the extraction layer only), ``top50`` (the best-ranked half of the layers from
selection) and ``all``.

Placement (where in the scoped layers the map is applied; :attr:`Intervention.placement`):
  * ``each``   — at every (layer, site) requested. Right for additions and idempotent projections: applying
    ``P`` at ``resid_pre`` of every layer and to every block write keeps span(V) out of the stream everywhere,
    exactly like weight orthogonalization.
  * ``input``  — once, at ``resid_pre`` of the first scoped layer, and nowhere else (sites must be
    ``("resid_pre",)``). The flip variant ``input``: reflect the residual stream once; every later block then
    responds to the counterfactual state as the model would.
  * ``writes`` — at ``resid_pre`` of the first scoped layer (when requested) and then at every later block write
    (``attn_out`` / ``mlp_out``) of the scoped layers. The flip variant ``writes``: each contribution to the stream
    is reflected exactly once, so the model's own response to the reflected state (computed from it) is reflected
    too, i.e. negated along span(V).
A non-idempotent map (``stacking == "once"``, a flip) may not be placed ``each`` (it would re-reflect states it
already reflected); its default placement is ``input``. Flip names record the variant, ``flip(alpha=2,variant=input)``.

Affine maps (LEACE, centred projections) record the layer they were fitted at (``fitted_layer``); an
:class:`Intervention` that would place one at any other layer is refused here, in one place (fit one map per
layer and build one intervention per layer instead). Every hook acts on *all* token positions of the sequence —
every prompt position and every generated token — whatever positions a map was fitted on (``valid_positions``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.vocabulary import PLACEMENTS, SCOPES, SITES, Placement, Site
from refusal_lab.interventions.base import Transform

PER_LAYER_FIX = ("fit one per layer: directions.leace.fit_leace_per_layer for LEACE (build_intervention(..., "
                 "erasers=...)), each layer's own training mean for a centred map (build_intervention(..., "
                 "centers=...))")


@dataclass
class Intervention:
    """A transform placed at sites of some layers (see the module docstring for ``placement``).

    ``sites`` default: ``("resid_pre",)`` for placement ``input``, all three sites otherwise. ``placement``
    default: ``each`` for a map with ``stacking == "each"``, ``input`` for one with ``stacking == "once"``.
    """

    transform: Transform
    layers: tuple[int, ...]
    sites: tuple[Site, ...] | None = None
    name: str = ""
    placement: Placement | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise RefusalLabError(f"intervention {self.name or type(self.transform).__name__} has no layers")
        self.layers = tuple(sorted(set(self.layers)))
        self.placement = self.placement or ("each" if self.transform.stacking == "each" else "input")
        if self.placement not in PLACEMENTS:
            raise RefusalLabError(f"unknown placement {self.placement!r}; placements are {', '.join(PLACEMENTS)}")
        self.sites = tuple(dict.fromkeys(self.sites or (("resid_pre",) if self.placement == "input" else SITES)))
        unknown = set(self.sites) - set(SITES)
        if unknown:
            raise RefusalLabError(f"unknown site(s) {sorted(unknown)}; sites are {', '.join(SITES)}")
        if self.placement == "each" and self.transform.stacking == "once":
            raise RefusalLabError(f"{self._label()} is not idempotent (a flip) and must not be re-applied to states "
                                  "it already changed; use placement (flip_variant) 'input' or 'writes'")
        if self.placement == "input" and self.sites != ("resid_pre",):
            raise RefusalLabError(f"{self._label()} acts once, at resid_pre of the first scoped layer, so sites "
                                  f"{list(self.sites)} do not apply; use sites ('resid_pre',) or the 'writes' "
                                  "variant (flip_variant='writes')")
        self._check_fitted_layer()

    def _label(self) -> str:
        return self.name or type(self.transform).__name__

    def _check_fitted_layer(self) -> None:
        """An affine map (one with a ``fitted_layer`` attribute) may only be placed at the layer it was fit at."""
        if not hasattr(self.transform, "fitted_layer"):
            return
        fitted = self.transform.fitted_layer
        placed = sorted({layer for layer, _ in self.hook_points()})
        if fitted is None:
            raise RefusalLabError(f"the affine map {self._label()} records no layer it was fitted at, so it cannot "
                                  "be placed; refit it with its layer in the provenance")
        if placed != [fitted]:
            raise RefusalLabError(f"the affine map {self._label()} was fitted at layer {fitted} and is valid only "
                                  f"there, not at layers {placed}; {PER_LAYER_FIX}")

    def hook_points(self) -> list[tuple[int, Site]]:
        """The (layer, site) pairs the transform is applied at (see the module docstring)."""
        if self.placement == "each":
            return [(layer, site) for layer in self.layers for site in self.sites]
        first = [(self.layers[0], "resid_pre")] if "resid_pre" in self.sites else []
        if self.placement == "input":
            return first
        return first + [(layer, site) for layer in self.layers for site in self.sites if site != "resid_pre"]


def scope_layers(scope: str, layer: int, n_layers: int, ranked_layers: Sequence[int] = ()) -> tuple[int, ...]:
    """Layers for a scope: ``layer`` → (layer,), ``all`` → every layer, ``top50`` → the first half of
    ``ranked_layers`` (best first, distinct layers from selection), which must be given."""
    if scope == "layer":
        return (layer,)
    if scope == "all":
        return tuple(range(n_layers))
    if scope == "top50":
        if not ranked_layers:
            raise RefusalLabError("scope top50 needs the ranked layers from selection; run `refusal-lab extract` first")
        distinct = list(dict.fromkeys(ranked_layers))
        return tuple(distinct[: max(1, (len(distinct) + 1) // 2)])
    raise RefusalLabError(f"unknown scope {scope!r}; scopes are {', '.join(SCOPES)}")


def _replace_first(output, transform: Transform):
    if isinstance(output, tuple):
        return (transform(output[0]), *output[1:])
    return transform(output)


def _register(lm, layer_index: int, site: Site, transform: Transform) -> torch.utils.hooks.RemovableHandle:
    if not 0 <= layer_index < lm.n_layers:
        raise RefusalLabError(f"layer {layer_index} is out of range; {lm.name} has layers 0..{lm.n_layers - 1}")
    layer = lm.adapter.layers(lm.model)[layer_index]
    if site == "resid_pre":
        def pre_hook(module, args, kwargs):
            if args:
                return (transform(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": transform(kwargs["hidden_states"])}

        return layer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    module = lm.adapter.attn_writer(layer) if site == "attn_out" else lm.adapter.mlp_writer(layer)
    return module.register_forward_hook(lambda module, args, output: _replace_first(output, transform))


@contextmanager
def apply_interventions(lm, interventions: Iterable[Intervention]) -> Iterator[None]:
    """Hook every intervention into ``lm`` (a :class:`~refusal_lab.models.LoadedModel`) for the ``with`` body."""
    handles = []
    try:
        for intervention in interventions:
            for layer, site in intervention.hook_points():
                handles.append(_register(lm, layer, site, intervention.transform))
        yield
    finally:
        for handle in handles:
            handle.remove()
