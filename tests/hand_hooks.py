"""Reference hooks for tests, written with plain torch and independent of refusal_lab.interventions: replace the
input of chosen decoder layers and the outputs of chosen blocks' writers with explicit maps, and capture the
residual stream entering every layer (and the final norm)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

POST_NORM_TYPES = ("gemma2", "gemma3_text")  # their writes leave the block through post-sublayer norms

PROMPT_IDS = torch.tensor([[5, 20, 30, 40, 50, 60, 70], [7, 21, 33, 44, 55, 66, 77]])


def writers(lm, index: int):
    """The modules whose outputs are added to the residual stream by layer ``index``'s attention and MLP."""
    layer = lm.model.model.layers[index]
    if lm.model.config.model_type in POST_NORM_TYPES:
        return layer.post_attention_layernorm, layer.post_feedforward_layernorm
    return layer.self_attn, layer.mlp


@contextmanager
def hand_hooks(lm, inputs=None, writes=None):
    """``inputs {layer: f}``: the layer's input ``h ↦ f(h)``; ``writes {layer: g}``: both of its writes ``w ↦ g(w)``."""
    layers, handles = lm.model.model.layers, []

    def pre(f):
        def hook(module, args, kwargs):
            if args:
                return (f(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": f(kwargs["hidden_states"])}
        return hook

    def post(g):
        return lambda module, args, out: (g(out[0]), *out[1:]) if isinstance(out, tuple) else g(out)

    try:
        for index, f in (inputs or {}).items():
            handles.append(layers[index].register_forward_pre_hook(pre(f), with_kwargs=True))
        for index, g in (writes or {}).items():
            handles += [module.register_forward_hook(post(g)) for module in writers(lm, index)]
        yield
    finally:
        for handle in handles:
            handle.remove()


def logits(lm) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids=PROMPT_IDS).logits


@contextmanager
def capture_inputs(lm):
    """Yields a dict filled, on each forward, with the residual stream entering every layer ``i`` and (key ``L``)
    the final norm. Hooks run in registration order: these see what hooks registered earlier produced, and hooks
    registered later (inside the ``with``) act after them."""
    layers, seen, handles = lm.model.model.layers, {}, []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, k, i=i: seen.__setitem__(i, (a[0] if a else k["hidden_states"]).clone()), with_kwargs=True))
    handles.append(lm.model.model.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__(len(layers),
                                                                                                a[0].clone())))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def stream(lm) -> dict[int, torch.Tensor]:
    """One forward pass; the stream entering every layer (after any hooks already registered) and the final norm."""
    with capture_inputs(lm) as seen:
        logits(lm)
    return seen
