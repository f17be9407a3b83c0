"""The two flips, each against its definition computed by hand on tiny random models.

Flip ``F(h) = h − α ((h − c) Vᵀ) V = c + (h − c) P_α`` (``c = 0`` for the linear form), ``P_α = αP + (1−α)I``.
``input``: F once at the input of the first scoped layer. ``writes``: that, plus ``w ↦ w − α (w Vᵀ) V`` on every
attention / MLP write of the scoped layers. References use plain torch hooks (tests/hand_hooks.py).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from hand_hooks import hand_hooks, logits, stream

from refusal_lab.core.artifacts import MethodArtifacts, Provenance, Subspace
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.interventions import Intervention, Projection, apply_interventions
from refusal_lab.interventions.factory import build_intervention

D, N_LAYERS, FITTED = 64, 4, 2
RANKED = [2, 1, 3, 0]  # top50 → layers (1, 2)
SCOPED = {"layer": (2,), "top50": (1, 2), "all": (0, 1, 2, 3)}
ARCHS = ["llama", "qwen2", "gemma2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _generator(seed):
    return torch.Generator().manual_seed(seed)


V = torch.linalg.qr(torch.randn(D, 3, generator=_generator(1)))[0].T  # orthonormal rows [3, d]
CENTERS = {j: torch.randn(D, generator=_generator(10 + j)) for j in range(N_LAYERS)}  # a different centre per layer


def artifacts():
    extra = {"center": CENTERS[FITTED].tolist(), "n_layers": N_LAYERS, "ranked_layers": RANKED}
    return MethodArtifacts(inlp=Subspace(V, Provenance("tiny", "inlp", D, FITTED, -1, "h", extra)))


def build(scope, variant=None, centred=False, alpha=2.0, **kw):
    return build_intervention("flip", artifacts(), layer=FITTED, scope=scope, n_layers=N_LAYERS, alpha=alpha,
                              ranked_layers=RANKED, center=centred, flip_variant=variant,
                              centers=CENTERS if centred else None, **kw)


def reflect(alpha, c=None):
    """The flip by hand: ``h ↦ h − α ((h − c) Vᵀ) V``."""
    return lambda h: h - alpha * ((h - (0 if c is None else c)) @ V.T) @ V


def hand_flip(variant, scope, centred, alpha=2.0):
    """Hooks of the definition: F at the first scoped layer's input; for ``writes`` the linear map on its writes."""
    layers = SCOPED[scope]
    inputs = {layers[0]: reflect(alpha, CENTERS[layers[0]] if centred else None)}
    writes = {j: reflect(alpha) for j in layers} if variant == "writes" else {}
    return inputs, writes


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("scope", list(SCOPED))
@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("variant", ["input", "writes"])
def test_flip_variants_equal_their_hand_computed_definition(arch, scope, centred, variant):
    lm = tiny_model(arch, n_layers=N_LAYERS)
    base = logits(lm)
    inputs, writes = hand_flip(variant, scope, centred)
    with hand_hooks(lm, inputs, writes):
        expected = logits(lm)
    with apply_interventions(lm, build(scope, variant, centred)):
        got = logits(lm)
    assert (expected - base).abs().max() > 1e-2  # the reference does something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scope", list(SCOPED))
@pytest.mark.parametrize("centred", [False, True])
def test_input_flip_reflects_the_first_scoped_input_once_and_alpha_2_is_an_involution(scope, centred):
    """Stream under the input flip: unchanged before the first scoped layer f; r_f = F(r_f^base); F(r_f) = r_f^base
    (α = 2 undoes itself on the state it reflected); later layers see the model's own writes on r_f, unreflected."""
    lm = tiny_model("llama", n_layers=N_LAYERS)
    f = SCOPED[scope][0]
    F = reflect(2.0, CENTERS[f] if centred else None)
    base = stream(lm)
    with apply_interventions(lm, build(scope, "input", centred)):
        flipped = stream(lm)
    for i in range(f):
        torch.testing.assert_close(flipped[i], base[i])
    torch.testing.assert_close(flipped[f], F(base[f]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(F(flipped[f]), base[f], atol=1e-4, rtol=1e-5)
    assert (flipped[f] - base[f]).abs().max() > 1e-2
    with hand_hooks(lm, {f: lambda h: F(base[f])}):  # replace the input of layer f, run the remaining layers
        replaced = stream(lm)
    for i in range(f + 1, N_LAYERS + 1):
        torch.testing.assert_close(flipped[i], replaced[i], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("centred", [False, True])
def test_writes_flip_reflects_each_contribution_exactly_once(centred):
    """Stream under the writes flip at scope all: r_l = F(e + Σ_{j<l} w_j) for the raw writes w_j of that run."""
    lm = tiny_model("llama", n_layers=N_LAYERS)
    F = reflect(2.0, CENTERS[0] if centred else None)
    raw, handles = {}, []
    for i, layer in enumerate(lm.model.model.layers):  # registered first: they see the writes before the flip
        handles.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(("a", i), o[0])))
        handles.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(("m", i), o)))
    base = stream(lm)  # base[0] = the embedding, which no layer changes
    with apply_interventions(lm, build("all", "writes", centred)):
        flipped = stream(lm)
    for handle in handles:
        handle.remove()
    unreflected = base[0]
    for i in range(N_LAYERS + 1):
        torch.testing.assert_close(flipped[i], F(unreflected), atol=1e-5, rtol=1e-4)
        if i < N_LAYERS:
            unreflected = unreflected + raw[("a", i)] + raw[("m", i)]


@pytest.mark.parametrize("scope", list(SCOPED))
@pytest.mark.parametrize("centred", [False, True])
def test_input_and_writes_differ_at_every_scope(scope, centred):
    lm = tiny_model("qwen2", n_layers=N_LAYERS)
    results = {}
    for variant in ("input", "writes"):
        with apply_interventions(lm, build(scope, variant, centred)):
            results[variant] = logits(lm)
    assert (results["input"] - results["writes"]).abs().max() > 1e-3  # float noise here is ~1e-6


@pytest.mark.parametrize("centred", [False, True])
def test_alpha_1_reproduces_the_projection_exactly(centred):
    h = torch.randn(6, D, generator=_generator(3)) + 4.0
    c = CENTERS[FITTED] if centred else torch.zeros(D)
    P = torch.eye(D) - V.T @ V
    for alpha in (0.5, 1.0, 2.0, 3.0):  # P_α = αP + (1−α)I
        (flip, *_) = build("layer", "input", centred, alpha=alpha)
        expected = c + (h - c) @ (alpha * P + (1 - alpha) * torch.eye(D))
        torch.testing.assert_close(flip.transform(h), expected, atol=1e-4, rtol=1e-5)
    (flip1, *_) = build("layer", "input", centred, alpha=1.0)
    (null, *_) = build_intervention("nullspace", artifacts(), layer=FITTED, n_layers=N_LAYERS, center=centred,
                                    centers=CENTERS if centred else None, sites=["resid_pre"])
    assert torch.equal(flip1.transform(h), null.transform(h))  # P_1 = P, bit for bit
    (flip2, *_) = build("layer", "input", centred)
    torch.testing.assert_close(flip2.transform(flip2.transform(h)), h, atol=1e-4, rtol=1e-5)  # P_2² = I


def test_alpha_1_writes_flip_at_every_layer_is_the_nullspace_projection():
    """With α = 1 the writes flip keeps the stream in range(P) like projecting every site (and the weights)."""
    lm = tiny_model("llama", n_layers=N_LAYERS)
    with apply_interventions(lm, build("all", "writes", alpha=1.0)):
        flip = logits(lm)
    P = reflect(1.0)
    inputs = {j: P for j in range(N_LAYERS)}
    with hand_hooks(lm, inputs, {j: P for j in range(N_LAYERS)}):
        projected = logits(lm)
    torch.testing.assert_close(flip, projected, atol=1e-5, rtol=1e-4)
    with apply_interventions(lm, build("all", "input", alpha=1.0)):
        once = logits(lm)
    assert (once - projected).abs().max() > 1e-2  # input: projected once, the later writes re-enter span(V)


def test_variant_is_named_and_defaults_to_input():
    (linear,) = build("top50")
    assert linear.name == "flip(alpha=2,variant=input)" and linear.placement == "input"
    assert linear.sites == ("resid_pre",) and linear.hook_points() == [(1, "resid_pre")]
    writes = build("top50", "writes")
    assert [i.name for i in writes] == ["flip(alpha=2,variant=writes)"]
    assert writes[0].hook_points() == [(1, "resid_pre"), (1, "attn_out"), (1, "mlp_out"), (2, "attn_out"),
                                       (2, "mlp_out")]
    centred = build("all", "writes", centred=True)
    assert [i.name for i in centred] == ["centered-flip(alpha=2,variant=writes)",
                                         "centered-flip(alpha=2,variant=writes)-writes"]
    assert [p for i in centred for p in i.hook_points()][:2] == [(0, "resid_pre"), (0, "attn_out")]


def test_flip_variant_errors():
    with pytest.raises(RefusalLabError, match="unknown flip variant 'both'"):
        build("layer", "both")
    with pytest.raises(RefusalLabError, match="flip_variant applies to flip only"):
        build_intervention("nullspace", artifacts(), n_layers=N_LAYERS, flip_variant="writes")
    with pytest.raises(RefusalLabError, match="flip_variant='writes'"):
        build("layer", "input", sites=["resid_pre", "mlp_out"])
    with pytest.raises(RefusalLabError, match="not idempotent"):
        Intervention(Projection(V, 2.0), layers=(0, 1), placement="each")
    with pytest.raises(RefusalLabError, match="unknown placement"):
        Intervention(Projection(V, 2.0), layers=(0, 1), placement="twice")
