"""Config files: unknown keys, wrong types, disallowed values and syntax errors are one line naming file and key."""

import json
from pathlib import Path

import pytest

from refusal_lab.core.config import ConfigModel, canonical_json, load_config_file
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.pipeline.experiment import RunConfig, load_config
from refusal_lab.selection.select import SelectionConfig

CONFIGS = Path(__file__).parents[1] / "configs"


def error_of(tmp_path, name: str, text: str, model_cls=RunConfig, **kwargs) -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RefusalLabError) as caught:
        load_config_file(path, model_cls, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_selection_mode_typo_fails_at_load_naming_the_dotted_key_and_allowed_values(tmp_path):
    message = error_of(tmp_path, "c.toml", 'n_train = 8\n[selection]\nmode = "exhuastive"\n')
    assert "selection.mode = 'exhuastive' is invalid" in message
    assert "'fast' or 'exhaustive'" in message


def test_unknown_keys_are_rejected_with_the_known_keys_of_their_table(tmp_path):
    message = error_of(tmp_path, "c.toml", "n_evl = 3\n")
    assert "unknown key n_evl" in message and "n_val" in message and "selection" in message
    message = error_of(tmp_path, "c.json", json.dumps({"selection": {"mdoe": "fast"}}))
    assert "unknown key selection.mdoe" in message
    assert "mode, candidates, scopes, max_layer_fraction" in message and "n_train" not in message  # the [selection] table's keys


def test_type_errors_and_counts_name_key_value_and_expected_type(tmp_path):
    message = error_of(tmp_path, "c.json", json.dumps({"n_val": "ten"}))
    assert "n_val = 'ten' is invalid: input should be a valid integer" in message
    message = error_of(tmp_path, "c.toml", "[selection]\nfinalists = 0\n")
    assert "selection.finalists = 0 is invalid: input should be greater than 0" in message
    message = error_of(tmp_path, "c.toml", "batch_size = -4\nn_val = 0\n")
    assert "(and 1 more problem(s))" in message


def test_syntax_errors_name_file_and_line(tmp_path):
    message = error_of(tmp_path, "c.toml", 'model = "x"\nn_train 8\n')
    assert "invalid TOML" in message and "line 2" in message
    message = error_of(tmp_path, "c.json", '{"n_train": 8,\n "n_val": }')
    assert "invalid JSON" in message and "line 2" in message
    message = error_of(tmp_path, "c.json", "[1, 2]")
    assert "not a JSON list" in message
    message = error_of(tmp_path, "c.yaml", "n_train: 8\n")
    assert "use .toml or .json" in message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(RefusalLabError, match="does not exist"):
        load_config_file(tmp_path / "nope.toml", RunConfig)
    with pytest.raises(RefusalLabError, match="is a directory"):
        load_config_file(tmp_path, RunConfig)


def test_precedence_defaults_then_file_then_non_none_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('model = "from-file"\nn_val = 5\nseed = 3\n[selection]\nmode = "exhaustive"\n')
    config = load_config_file(path, RunConfig, defaults={"seed": 1, "n_train": 7}, model="from-cli", n_val=None)
    assert (config.model, config.n_val, config.seed, config.n_train) == ("from-cli", 5, 3, 7)
    assert config.selection == SelectionConfig(mode="exhaustive")
    with pytest.raises(RefusalLabError) as caught:  # a bad override is blamed on the option, not the file
        load_config_file(path, RunConfig, n_val=0)
    assert str(caught.value).startswith("--n-val: n_val = 0 is invalid")
    with pytest.raises(RefusalLabError) as caught:  # a dotted override (a command-line option inside a table)
        load_config_file(path, RunConfig, **{"compare.n_eval": 0})
    assert str(caught.value).startswith("--n-eval: compare.n_eval = 0 is invalid")


class Methods(ConfigModel):
    flip_alpha: float = 2.0
    mode: str = "fast"


def test_section_is_read_alone_and_ignored_tables_do_not_fail_the_main_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("n_train = 8\n[methods]\nflip_alpha = 3.0\n")
    assert load_config(path).methods.flip_alpha == 3.0  # RunConfig reads its [methods] table
    assert load_config_file(path, RunConfig, ignore=("methods",)).methods.flip_alpha == 2.0  # an ignored table
    methods = load_config_file(path, Methods, section="methods", defaults={"mode": "exhaustive"})
    assert methods == Methods(flip_alpha=3.0, mode="exhaustive")
    message = error_of(tmp_path, "m.toml", "[methods]\nflip_alpa = 1\n", Methods, section="methods")
    assert "unknown key methods.flip_alpa" in message and "flip_alpha" in message
    assert load_config_file(None, Methods, section="methods") == Methods()


def test_canonical_json_is_key_order_independent_and_sorted():
    a = RunConfig(n_train=8, selection=SelectionConfig(finalists=3, mode="exhaustive"))
    b = RunConfig.model_validate({"selection": {"mode": "exhaustive", "finalists": 3}, "n_train": 8})
    assert canonical_json(a) == canonical_json(b)
    text = canonical_json(a)
    assert ", " not in text and ": " not in text
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert canonical_json(a) != canonical_json(RunConfig(n_train=9))


@pytest.mark.parametrize("name", ["full.toml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert config.selection.mode == "fast" and config.batch_size == 64


def test_shipped_optimize_configs_load():
    from refusal_lab.core.config import load_config_file
    from refusal_lab.pipeline.search_data import OptimizeConfig

    one = load_config_file(CONFIGS / "optimize-one-context.toml", OptimizeConfig, section="optimize")
    assert one.contexts == ["default"] and one.compliance_check.judge == "llm"
    capability = load_config_file(CONFIGS / "optimize-capability.toml", OptimizeConfig, section="optimize")
    assert capability.capability_texts == 16 and not capability.compliance_check.judge
    assert len(capability.contexts) == 5
