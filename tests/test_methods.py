"""Methods, the intervention factory, per-method selection, the comparison and their CLI (tiny models, synthetic
activations; one slow test on the bundled 0.5B model)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from conftest import invoke_cli as invoke
from conftest import tiny_model
from refusal_lab.directions.base import Direction, Provenance, load_artifact
from refusal_lab.directions.classifier import classifier_direction
from refusal_lab.directions.dim import cosine_matrix
from refusal_lab.directions.inlp import INLPConfig, fit_inlp
from refusal_lab.directions.leace import fit_leace
from refusal_lab.directions.subspace import stack_subspace
from refusal_lab.errors import RefusalLabError
from refusal_lab.interventions import Addition, Intervention, apply_interventions
from refusal_lab.batched import batched_scores
from refusal_lab.methods import (KINDS, ExtractionContext, MethodActivations, MethodArtifacts, MethodConfig,
                                 bake, build_intervention, fit_inlp_family, load_artifacts, load_selection,
                                 save_selection, select_method)
from refusal_lab.scoring import last_token_logprobs, refusal_scores
from refusal_lab.selection import METHOD_COLUMNS

D = 64
PROMPT_IDS = torch.tensor([[5, 20, 30, 40, 50, 60, 70], [7, 21, 33, 44, 55, 66, 77]])
HARMFUL = ["do a bad thing now", "another bad request", "make trouble please", "cause harm today"]
HARMLESS = ["bake a cake", "write a poem", "plan a picnic", "explain rainbows"]
LOOSE = dict(kl_threshold=1e9, induce_threshold=-1e9, min_inlp_accuracy=0.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is ~30x faster than two on a shared, loaded 2-core machine (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def logits(lm):
    with torch.no_grad():
        return lm.model(input_ids=PROMPT_IDS).logits


def prov(method, layer=1, position=-1, n_layers=3, **extra):
    return Provenance("tiny", method, D, layer, position, "hash",
                      {"n_layers": n_layers, "ranked_layers": [1, 0, 2][:n_layers], **extra})


def planted(n=160, seed=0, strength=3.0):
    """Harmful rows shifted along a planted direction, plus noise (labels 1 = harmful first)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)
    y = torch.cat([torch.ones(n // 2), torch.zeros(n // 2)]).long()
    X = torch.randn(n, D, generator=g) + strength * y[:, None] * direction
    return X, y, direction


@pytest.fixture(scope="module")
def artifacts():
    X, y, _ = planted()
    Xv, yv, _ = planted(seed=1)
    result = fit_inlp(X, y, Xv, yv, INLPConfig(max_iterations=4, stop="fixed"))
    dim = Direction(X[y == 1].mean(0) - X[y == 0].mean(0), prov("dim"))
    return MethodArtifacts(
        dim=dim,
        inlp=result.to_subspace(prov("inlp", center=result.mean.tolist())),
        classifier=classifier_direction(result, dim),
        leace=fit_leace(X, y, prov("leace")),
        subspace=stack_subspace([dim.vector, torch.randn(D), torch.randn(D)], prov("subspace")),
    ), result


# --- the factory ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "none"])
def test_every_kind_builds_and_changes_logits(artifacts, kind):
    arts, _ = artifacts
    lm = tiny_model("qwen2")
    base = logits(lm)
    built = build_intervention(kind, arts, n_layers=lm.n_layers, scale=4.0 if "actadd" in kind else None)
    assert built and all(isinstance(i, Intervention) for i in built)
    with apply_interventions(lm, built):
        changed = logits(lm)
    assert not torch.allclose(changed, base, atol=1e-4)
    torch.testing.assert_close(logits(lm), base)  # hooks removed
    assert build_intervention("none", arts) == []


def test_factory_defaults_match_the_seed_pipeline(artifacts):
    arts, _ = artifacts
    (ablate,) = build_intervention("ablate", arts, n_layers=3)
    assert ablate.layers == (0, 1, 2) and set(ablate.sites) == {"resid_pre", "attn_out", "mlp_out"}
    torch.testing.assert_close(ablate.transform.basis, arts.dim.unit[None, :])
    (actadd,) = build_intervention("actadd", arts, n_layers=3, scale=-2.0)
    assert actadd.layers == (1,) and actadd.sites == ("resid_pre",)
    assert isinstance(actadd.transform, Addition) and actadd.transform.scale == -2.0
    (top,) = build_intervention("nullspace", arts, scope="top50", n_layers=3, sites=["mlp_out"])
    assert top.layers == (0, 1) and top.sites == ("mlp_out",)  # ranked [1, 0, 2] → first half (rounded up)
    (sub,) = build_intervention("subspace", arts, k=2, n_layers=3)
    assert sub.transform.basis.shape == (2, D) and sub.layers == (0, 1, 2)


def test_nullspace_is_P_and_flip_squared_is_identity(artifacts):
    arts, result = artifacts
    h = torch.randn(10, D)
    (null,) = build_intervention("nullspace", arts, n_layers=3)
    (flip,) = build_intervention("flip", arts, n_layers=3)
    (flip1,) = build_intervention("flip", arts, n_layers=3, alpha=1.0)
    P = result.projection()
    torch.testing.assert_close(null.transform(h), h @ P, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flip1.transform(h), null.transform(h))  # P_1 = P
    torch.testing.assert_close(flip.transform(h), h @ (2 * P - torch.eye(D)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flip.transform(flip.transform(h)), h, atol=1e-5, rtol=1e-5)  # P_2² = I
    for k in (1, 3):
        (rank_k,) = build_intervention("rank-k", arts, k=k, n_layers=3)
        torch.testing.assert_close(rank_k.transform(h), h @ result.projection(k), atol=1e-5, rtol=1e-5)


def test_classifier_actadd_norm_equals_dim_norm(artifacts):
    arts, result = artifacts
    (clf,) = build_intervention("classifier-actadd", arts, n_layers=3, scale=1.0)
    assert clf.transform.vector.norm().item() == pytest.approx(arts.dim.norm, rel=1e-5)
    w = result.weights[0]
    assert float(cosine_matrix(clf.transform.vector, w)) == pytest.approx(1.0, abs=1e-5)


def test_factory_errors(artifacts):
    arts, _ = artifacts
    with pytest.raises(RefusalLabError, match="unknown intervention 'explode'"):
        build_intervention("explode", arts, n_layers=3)
    with pytest.raises(RefusalLabError, match="no leace artifact.*extract --method leace"):
        build_intervention("leace", MethodArtifacts(dim=arts.dim), n_layers=3)
    with pytest.raises(RefusalLabError, match="no flip artifact.*extract --method inlp"):
        build_intervention("flip", MethodArtifacts(dim=arts.dim), n_layers=3)
    with pytest.raises(RefusalLabError, match="k must be between"):
        build_intervention("rank-k", arts, k=99, n_layers=3)
    with pytest.raises(RefusalLabError, match="unknown scope"):
        build_intervention("nullspace", arts, scope="everywhere", n_layers=3)
    with pytest.raises(RefusalLabError, match="unknown site"):
        build_intervention("nullspace", arts, sites=["resid_post"], n_layers=3)
    with pytest.raises(RefusalLabError, match="top50"):
        build_intervention("nullspace", arts, scope="top50", n_layers=3, ranked_layers=[])
    with pytest.raises(RefusalLabError, match="out of range"):
        build_intervention("flip", arts, layer=7, n_layers=3)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"])
@pytest.mark.parametrize("kind,k", [("rank-k", 2), ("nullspace", None)])
def test_factory_projections_equal_their_baked_weights(artifacts, model_type, kind, k):
    arts, _ = artifacts
    lm = tiny_model(model_type)
    built = build_intervention(kind, arts, scope="all", k=k, n_layers=lm.n_layers)
    with apply_interventions(lm, built):
        hooked = logits(lm)
    assert not torch.allclose(hooked, logits(lm), atol=1e-4)
    bake(lm, built)
    torch.testing.assert_close(logits(lm), hooked, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
def test_post_norm_families_refuse_baking_through_the_factory(artifacts, model_type):
    arts, _ = artifacts
    lm = tiny_model(model_type)
    with pytest.raises(RefusalLabError, match="normalises block outputs"):
        bake(lm, build_intervention("nullspace", arts, scope="all", n_layers=lm.n_layers))


def test_only_full_scope_projections_can_be_baked(artifacts):
    arts, _ = artifacts
    lm = tiny_model("llama")
    with pytest.raises(RefusalLabError, match="scope 'all'"):
        bake(lm, build_intervention("nullspace", arts, scope="layer", n_layers=lm.n_layers))
    with pytest.raises(RefusalLabError, match="hooks"):
        bake(lm, build_intervention("leace", arts, scope="layer", n_layers=lm.n_layers))
    with pytest.raises(RefusalLabError, match="flip"):
        bake(lm, build_intervention("flip", arts, scope="all", n_layers=lm.n_layers))


def _capture_run(lm, interventions):
    """Raw writes (embedding, attention, MLP outputs as produced) and the input of every layer and of the final
    norm, under ``interventions``."""
    layers = lm.adapter.layers(lm.model)
    raw, resid, handles = {}, {}, []
    handles.append(lm.model.get_input_embeddings().register_forward_hook(lambda m, a, o: raw.__setitem__("e", o)))
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(("a", i), o[0])))
        handles.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(("m", i), o)))
    with apply_interventions(lm, interventions):
        for i, layer in enumerate(layers):  # registered after the intervention's hooks: they see its output
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, k, i=i: resid.__setitem__(i, a[0] if a else k["hidden_states"]), with_kwargs=True))
        handles.append(lm.model.model.norm.register_forward_pre_hook(
            lambda m, a: resid.__setitem__(len(layers), a[0])))
        logits(lm)
    for handle in handles:
        handle.remove()
    return raw, resid


@pytest.mark.parametrize("scope,ranked", [("top50", [2, 0, 3, 1]), ("all", [])])
def test_flip_at_several_layers_reflects_each_state_once(artifacts, scope, ranked):
    """Once-semantics: with scoped layers S, r_l = F(e + Σ_{j<l, j∈S} w_j) + Σ_{j<l, j∉S} w_j for the raw writes
    w_j = a_j + m_j of the flipped run (each contribution reflected exactly once, never twice)."""
    arts, _ = artifacts
    lm = tiny_model("llama", n_layers=4)
    built = build_intervention("flip", arts, scope=scope, ranked_layers=ranked, n_layers=4, layer=0,
                               flip_variant="writes")
    (flip,) = built
    scoped = set(flip.layers)
    assert scoped == ({0, 2} if scope == "top50" else {0, 1, 2, 3})
    assert [p for p in flip.hook_points() if p[1] == "resid_pre"] == [(0, "resid_pre")]
    raw, resid = _capture_run(lm, built)
    F = flip.transform
    inside, outside = raw["e"], torch.zeros_like(raw["e"])
    for i in range(5):
        torch.testing.assert_close(resid[i], F(inside) + outside, atol=1e-5, rtol=1e-4)
        if i < 4:
            write = raw[("a", i)] + raw[("m", i)]
            inside, outside = (inside + write, outside) if i in scoped else (inside, outside + write)


def test_centered_flip_is_an_affine_reflection_through_the_training_mean(artifacts):
    arts, result = artifacts
    c, P = result.mean, result.projection()
    h = torch.randn(10, D) + 5.0
    (null,) = build_intervention("nullspace", arts, n_layers=3, center=True, sites=["resid_pre"])
    (flip,) = build_intervention("flip", arts, n_layers=3, center=True, sites=["resid_pre"])
    torch.testing.assert_close(null.transform(h), c + (h - c) @ P, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(flip.transform(h), c + (h - c) @ (2 * P - torch.eye(D)), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(flip.transform(flip.transform(h)), h, atol=1e-4, rtol=1e-5)  # an involution
    torch.testing.assert_close(flip.transform(c[None, :]), c[None, :], atol=1e-5, rtol=1e-5)  # fixes the centre
    assert flip.transform.stacking == "once" and null.transform.stacking == "each"
    built = build_intervention("flip", arts, n_layers=3, center=True, flip_variant="writes")  # linear part on writes
    assert [(type(i.transform).__name__, i.sites) for i in built] == [
        ("CenteredProjection", ("resid_pre",)), ("Projection", ("attn_out", "mlp_out"))]
    with pytest.raises(RefusalLabError, match="records no centre"):
        build_intervention("flip", MethodArtifacts(inlp=arts.subspace), n_layers=3, center=True)
    with pytest.raises(RefusalLabError, match="center applies"):
        build_intervention("leace", arts, n_layers=3, center=True)


def test_centered_flip_at_all_layers_reflects_each_state_once(artifacts):
    """r_l = c + (e + Σ_{j<l} w_j − c) P_α for the raw writes w_j of the flipped run."""
    arts, result = artifacts
    lm = tiny_model("llama", n_layers=4)
    built = build_intervention("flip", arts, scope="all", n_layers=4, center=True, flip_variant="writes",
                               centers={0: result.mean})
    raw, resid = _capture_run(lm, built)
    F = built[0].transform
    inside = raw["e"]
    for i in range(5):
        torch.testing.assert_close(resid[i], F(inside), atol=1e-5, rtol=1e-4)
        if i < 4:
            inside = inside + raw[("a", i)] + raw[("m", i)]


def test_leace_keeps_the_stream_on_the_erased_subspace(artifacts):
    """Eraser at resid_pre + its linear part on the writes: R (h − b) = 0 for the residual after the layer."""
    arts, _ = artifacts
    lm = tiny_model("llama", n_layers=3)
    eraser = arts.leace
    built = build_intervention("leace", arts, layer=1, n_layers=3)
    assert [i.sites for i in built] == [("resid_pre",), ("attn_out", "mlp_out")]
    _, resid = _capture_run(lm, built)
    _, base = _capture_run(lm, [])
    for i in (1, 2):
        erased = (resid[i] - eraser.bias) @ eraser.proj_right.T
        assert erased.abs().max() < 1e-4
        assert ((base[i] - eraser.bias) @ eraser.proj_right.T).abs().max() > 1e-2  # not trivially true
    torch.testing.assert_close(resid[0], base[0])


# --- batched scoring and per-method selection -----------------------------------------------------------------


def test_batched_scores_equal_one_at_a_time(artifacts):
    arts, _ = artifacts
    lm = tiny_model("qwen2")
    base = last_token_logprobs(lm, HARMLESS)
    candidates = [build_intervention("flip", arts, layer=1, n_layers=3),
                  build_intervention("leace", arts, layer=1, n_layers=3),
                  build_intervention("classifier-actadd", arts, layer=2, n_layers=3, scale=3.0),
                  build_intervention("nullspace", arts, scope="all", n_layers=3), []]
    scores, kl = batched_scores(lm, HARMLESS, candidates, base, rows_per_pass=8)  # 2 candidates per pass
    for i, ivs in enumerate(candidates):
        lp = last_token_logprobs(lm, HARMLESS, ivs)
        torch.testing.assert_close(scores[i], refusal_scores(lp, lm.refusal_token_ids), atol=1e-4, rtol=1e-4)
        expected_kl = (base.exp() * (base - lp)).sum(-1)
        torch.testing.assert_close(kl[i], expected_kl, atol=1e-4, rtol=1e-3)
    assert kl[-1].abs().max() < 1e-5


def _inlp_store(accuracies: dict[tuple[int, int], float]):
    stores = {}
    for i, ((layer, position), acc) in enumerate(accuracies.items()):
        X, y, _ = planted(seed=10 + i, strength=2.0)
        Xv, yv, _ = planted(seed=20 + i, strength=2.0)
        result = fit_inlp(X, y, Xv, yv, INLPConfig(max_iterations=2, stop="fixed"))
        result.val_accuracies[0] = acc  # pretend: the filter reads the recorded held-out accuracy
        stores[(layer, position, None)] = result.to_subspace(prov("inlp", layer, position))
    return stores


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
def test_select_method_ranks_and_respects_inlp_accuracy(mode):
    lm = tiny_model("llama", n_layers=5)
    store = _inlp_store({(0, -1): 0.95, (1, -1): 0.5, (1, -2): 0.92, (2, -1): 0.99, (4, -1): 1.0})
    config = MethodConfig(mode=mode, finalists=10, **{**LOOSE, "min_inlp_accuracy": 0.9})
    selection = select_method(lm, "inlp", store, HARMFUL, HARMLESS, config)
    table = selection.table()
    assert len(table) == 5 and table.iloc[0]["status"] == "selected"
    status = {(r.layer, r.position): r.status for r in table.itertuples()}
    assert status[(1, -1)] == "filtered: INLP accuracy < 0.9"
    assert status[(4, -1)] == "filtered: layer >= 0.8L"  # 4 >= 0.8 * 5
    chosen = selection.chosen
    assert (chosen.layer, chosen.position) in {(0, -1), (1, -2), (2, -1)} and chosen.inlp_accuracy >= 0.9
    assert math.isnan(chosen.induce) and chosen.kl >= 0  # a projection has no induce score
    scored = table[table["status"].isin(["selected", "passed"])]
    if mode == "exhaustive":
        assert list(scored["bypass"]) == sorted(scored["bypass"])
    # the chosen candidate is the lowest bypass among those passing
    evaluated = table[~table["bypass"].isna()]
    assert chosen.bypass == evaluated["bypass"].min()
    assert tuple(table.columns) == METHOD_COLUMNS


def test_method_selection_round_trips_through_the_run_directory(tmp_path):
    lm = tiny_model("llama", n_layers=5)
    store = _inlp_store({(0, -1): 0.95, (1, -1): 0.5, (2, -1): 0.99})
    selection = select_method(lm, "inlp", store, HARMFUL, HARMLESS, MethodConfig(mode="exhaustive", **LOOSE))
    save_selection(selection, tmp_path, {"note": 1})
    summary = json.loads((tmp_path / "inlp" / "summary.json").read_text())
    assert list(summary["chosen"]) == list(METHOD_COLUMNS) and summary["note"] == 1
    loaded = load_selection(tmp_path, "inlp")
    assert [c.key for c in loaded.candidates] == [c.key for c in selection.candidates]
    assert [c.status for c in loaded.candidates] == [c.status for c in selection.candidates]
    assert loaded.chosen.key == selection.chosen.key and loaded.chosen.method == "inlp"
    torch.testing.assert_close(loaded.artifact.basis, selection.artifact.basis)
    assert loaded.artifact.provenance.extra["selection"]["bypass"] == selection.chosen.bypass


def test_flip_selection_uses_induce_and_shares_the_projection_kl():
    lm = tiny_model("llama", n_layers=4)
    store = _inlp_store({(0, -1): 1.0, (1, -1): 1.0, (2, -1): 1.0})
    cache: dict = {}
    config = MethodConfig(mode="exhaustive", **LOOSE)
    null = select_method(lm, "inlp", store, HARMFUL, HARMLESS, config, kl_cache=cache)
    flip = select_method(lm, "flip", store, HARMFUL, HARMLESS, config, kl_cache=cache)
    kl_null = {(r.layer, r.position): r.kl for r in null.table().itertuples()}
    for r in flip.table().itertuples():
        assert not math.isnan(r.induce)
        assert r.kl == kl_null[(r.layer, r.position)]  # flip's KL filter uses P (alpha = 1), see methods
    strict = select_method(lm, "flip", store, HARMFUL, HARMLESS, config.model_copy(update={"induce_threshold": 1e9}))
    assert strict.chosen is None and all(s.startswith("filtered: induce") for s in strict.table()["status"])
    capped = select_method(lm, "flip", store, HARMFUL, HARMLESS,
                           config.model_copy(update={"induce_threshold": 1e9, "mode": "fast", "finalists": 1,
                                                     "max_checked": 2}))
    assert capped.chosen is None and (~capped.table()["induce"].isna()).sum() == 2  # gave up after two checks


# --- extraction on a tiny model -------------------------------------------------------------------------------


def test_inlp_family_extraction_writes_cosines_and_norms(tmp_path):
    n_layers, n_pos, n = 5, 2, 40
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)

    def side(shift, m):
        return torch.randn(m, n_layers, n_pos, D, generator=g) + shift * direction

    acts = MethodActivations(side(3.0, n), side(0.0, n), side(3.0, n // 2), side(0.0, n // 2))
    dim = acts.train_harmful.double().mean(0) - acts.train_harmless.double().mean(0)
    ctx = ExtractionContext("tiny", n_layers, n_pos, D, dim.float(), [(1, -1), (0, -1)], "hash")
    subspaces, directions = fit_inlp_family(acts, ctx, MethodConfig(inlp_max_iterations=3), tmp_path)
    table = pd.read_csv(tmp_path / "inlp" / "cosine_dim.csv")
    assert len(table) == 4 * 2  # layers 0..3 < 0.8 * 5 (layer 4 excluded), both positions
    assert (table["cosine_first_inlp_dim"] > 0.7).all() and (table["first_val_accuracy"] > 0.7).all()
    for (layer, position, _), d in directions.items():
        assert d.norm == pytest.approx(float(dim[layer, position + n_pos].norm()), rel=1e-4)
        assert d.provenance.extra["inlp"]["first_val_accuracy"] > 0.7
    again = fit_inlp_family(acts, ctx, MethodConfig(), tmp_path)  # resumes from disk
    assert set(again[0]) == set(subspaces)
    key = next(iter(subspaces))
    torch.testing.assert_close(again[0][key].basis, subspaces[key].basis)


def _write_config(path, **selection):
    config = {"n_train": 16, "n_val": 8, "n_eval": 4, "batch_size": 16, "control_seeds": 1,
              "selection": {"kl_threshold": 1e9, "induce_threshold": -1e9, **selection},
              "methods": {"min_inlp_accuracy": 0.0, "inlp_max_iterations": 3}}
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def extracted_run(model_dir, tmp_path_factory):
    """extract --method inlp / leace / subspace through the CLI on the tiny model, with loose filters."""
    root = tmp_path_factory.mktemp("methods-run")
    mp = pytest.MonkeyPatch()
    mp.setenv("REFUSAL_LAB_CACHE", str(root / "cache"))
    config = _write_config(root / "config.json")
    run = root / "run"
    try:
        for method, extra in (("inlp", []), ("leace", []), ("subspace", ["--k", 2])):
            result, text = invoke("extract", "--model", model_dir, "--out", run, "--config", config,
                                  "--method", method, *extra)
            assert result.exit_code == 0, text
        yield run
    finally:
        mp.undo()


def test_cli_extract_writes_every_method(extracted_run):
    methods = extracted_run / "methods"
    for method in ("inlp", "flip", "leace", "subspace"):
        table = pd.read_csv(methods / method / "selection.csv")
        assert table.iloc[0]["status"] == "selected"
        assert (methods / method / "chosen.json").exists()
    assert (methods / "inlp" / "cosine_dim.csv").exists()
    assert len(pd.read_csv(methods / "subspace" / "selection.csv")) == 2  # k = 1, 2
    stack = load_artifact(methods / "subspace" / "stack")
    assert stack.rank == 2 and len(stack.provenance.extra["layers"]) == 2
    arts = load_artifacts(extracted_run, hidden_size=D)
    assert arts.dim is not None and arts.inlp is not None and arts.flip is not None and arts.classifier is None
    assert arts.inlp.provenance.extra["selection"]["method"] == "inlp"


def test_cli_extract_resumes_without_refitting(extracted_run, model_dir, tmp_path):
    before = (extracted_run / "methods" / "inlp" / "selection.csv").stat().st_mtime_ns
    config = _write_config(tmp_path / "config.json")
    result, text = invoke("extract", "--model", model_dir, "--out", extracted_run, "--config", config,
                          "--method", "inlp")
    assert result.exit_code == 0, text
    assert (extracted_run / "methods" / "inlp" / "selection.csv").stat().st_mtime_ns == before


@pytest.mark.parametrize("args", [
    ["--intervention", "nullspace"],
    ["--intervention", "flip", "--alpha", 3, "--scope", "all"],
    ["--intervention", "rank-k", "--k", 1, "--site", "resid_pre", "--site", "mlp_out"],
    ["--intervention", "leace", "--scope", "layer"],  # an eraser is valid only at its fitted layer
    ["--intervention", "subspace", "--k", 1],
    ["--intervention", "actadd", "--scale", -2, "--scope", "all"],
])
def test_cli_generate_with_new_interventions(extracted_run, model_dir, tmp_path, args):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\n")
    out = tmp_path / "o.jsonl"
    result, text = invoke("generate", "--model", model_dir, "--prompts", prompts, "--out", out, "--run",
                          extracted_run, "--max-new-tokens", 2, *args)
    assert result.exit_code == 0, text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["intervention"] == args[1]


def test_cli_generate_errors(extracted_run, model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\n")
    common = ["generate", "--model", model_dir, "--prompts", prompts, "--out", tmp_path / "o.jsonl",
              "--run", extracted_run]
    result, text = invoke(*common, "--intervention", "teleport")
    assert result.exit_code == 2 and "teleport" in text
    result, text = invoke(*common, "--intervention", "classifier-actadd")  # never extracted
    assert result.exit_code != 0 and isinstance(result.exception, RefusalLabError)
    assert "extract --method classifier" in text
    result, text = invoke(*common, "--intervention", "flip", "--scope", "sideways")
    assert result.exit_code == 2 and "sideways" in text
    result, text = invoke(*common, "--intervention", "rank-k", "--k", 50)
    assert result.exit_code != 0 and "k must be between" in text


def test_cli_extract_option_errors(model_dir, tmp_path):
    result, text = invoke("extract", "--model", model_dir, "--out", tmp_path / "r", "--method", "pca")
    assert result.exit_code == 2 and "pca" in text
    result, text = invoke("extract", "--model", model_dir, "--out", tmp_path / "r", "--k", 3)
    assert result.exit_code != 0 and "--k applies" in text


def test_cli_compare_writes_resumable_tables(extracted_run, model_dir):
    args = ["compare", "--model", model_dir, "--run", extracted_run, "--n-eval", 3, "--scope", "layer",
            "--kind", "ablate", "--kind", "flip", "--kind", "leace", "--kind", "classifier-actadd",
            "--kind", "rank-k"]
    result, text = invoke(*args)
    assert result.exit_code == 0, text
    out = extracted_run / "comparison" / "first-token"
    table = pd.read_csv(out / "comparison.csv")
    assert table.iloc[0]["name"] == "baseline" and table.iloc[0]["delta_harmful"] == 0
    names = set(table["name"])
    assert {"ablate[layer]", "ablate[layer]~random0", "flip[layer,alpha=2]", "leace[layer]",
            "flip[layer,alpha=2,centered]", "flip[layer,alpha=2,centered]~random0"} <= names
    assert not any(n.startswith("leace") and "random" in n for n in names)  # LEACE has no random analogue
    assert not any(n.startswith("classifier") for n in names)  # no artifact: skipped, reported
    assert "skipped classifier-actadd" in text
    row = table.set_index("name").loc["ablate[layer]"]
    assert row["n_harmful"] == 3 and 0 <= row["refusal_harmful"] <= 1 and row["kl_harmless"] >= 0
    assert row["delta_harmful"] == pytest.approx(row["refusal_harmful"] - table.iloc[0]["refusal_harmful"])
    assert "control_refusal_harmful" in table and not math.isnan(row["control_refusal_harmful"])
    sweep = pd.read_csv(out / "rank_k_sweep.csv")
    rank = load_artifacts(extracted_run, hidden_size=D).inlp.rank
    assert list(sweep["name"]) == ["baseline"] + [f"rank-k[layer,k={k}]{c}" for k in range(1, rank + 1)
                                                  for c in ("", "~random0")]
    assert "rank-k[layer,k=1]" in names  # also in the main table (evaluated once)
    n_rows = len((out / "rows.jsonl").read_text().splitlines())
    result, text = invoke(*args)  # resumes: nothing recomputed
    assert result.exit_code == 0, text
    assert len((out / "rows.jsonl").read_text().splitlines()) == n_rows
    result, text = invoke(*args[:5], "--n-eval", 2, "--scope", "layer", "--kind", "ablate")
    assert result.exit_code != 0 and "different settings" in text


def test_actadd_rows_only_at_actadd_scopes(extracted_run):
    from refusal_lab.comparison import CompareConfig, plan_conditions

    artifacts = load_artifacts(extracted_run, hidden_size=D)
    ranked = artifacts.ranked_layers()

    def actadd_scopes(**options):
        config = CompareConfig(kinds=["actadd", "ablate"], scopes=["layer", "all"], **options)
        conditions, _ = plan_conditions(artifacts, config, 3, ranked)
        assert {c.scope for c in conditions if c.kind == "ablate"} == {"layer", "all"}
        return {c.scope for c in conditions if c.kind == "actadd"}, len([c for c in conditions if c.kind == "actadd"])

    assert actadd_scopes() == ({"layer"}, 12)  # ±0.5, ±1, ±2, each with a random control
    assert actadd_scopes(actadd_scopes=["layer", "all"]) == ({"layer", "all"}, 24)
    with pytest.raises(RefusalLabError, match="unknown scope"):
        CompareConfig(actadd_scopes=["everywhere"])


def test_compare_evaluates_the_closest_candidate_of_a_selection_that_chose_nothing(extracted_run, tmp_path):
    import shutil

    from refusal_lab.methods.artifacts import CLOSEST

    run = tmp_path / "run"
    shutil.copytree(extracted_run, run)
    for method in ("leace", "subspace"):
        for chosen in (run / "methods" / method).glob("chosen.*"):
            chosen.unlink()
    assert load_artifacts(run, D, ["leace", "subspace"]).leace is None
    artifacts = load_artifacts(run, D, ["leace", "subspace"], closest=True)
    table = pd.read_csv(run / "methods" / "leace" / "selection.csv")
    best = table[table["bypass"].notna()].iloc[0]
    leace = artifacts.leace
    assert (leace.provenance.layer, leace.provenance.position) == (best["layer"], best["position"])
    assert leace.provenance.extra["selection"]["status"] == CLOSEST
    best_k = int(pd.read_csv(run / "methods" / "subspace" / "selection.csv").dropna(subset=["bypass"]).iloc[0]["k"])
    assert artifacts.subspace.rank == best_k and artifacts.subspace.provenance.extra["selection"]["status"] == CLOSEST
    from refusal_lab.comparison import CompareConfig, plan_conditions

    dim = load_artifacts(run, D, ["dim"])
    artifacts.dim = dim.dim
    conditions, _ = plan_conditions(artifacts, CompareConfig(kinds=["leace", "subspace"], scopes=["layer"]), 3,
                                    artifacts.ranked_layers())
    assert {c.meta()["selection"] for c in conditions if not c.control and c.kind != "none"} == {CLOSEST}
