"""The installed ``refusal-lab`` console script on bad input: the exit status, exactly one line on stderr naming
the problem, never a traceback; checked before a model is loaded. And Ctrl-C: exit 130 with the hint to resume."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import refusal_lab

SCRIPT = Path(sys.executable).parent / "refusal-lab"
HINT = "interrupted; rerun the same command to resume from the run directory"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="the refusal-lab console script is not installed")


def env() -> dict[str, str]:
    """HF offline, and this checkout's source first on the path (the script then imports the code under test)."""
    source = str(Path(refusal_lab.__file__).parents[1])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=300)


def one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first prompt\nsecond prompt\n")
    return path


@pytest.mark.parametrize("args,option", [
    (["run", "--n-eval", "0"], "--n-eval"),
    (["run", "--n-eval", "-3"], "--n-eval"),
    (["generate", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", "--batch-size", "-1"], "--batch-size"),
    (["generate", "--k", "0"], "--k"),
    (["compare", "--control-seeds", "-1"], "--control-seeds"),
    (["compare", "--n-eval", "0"], "--n-eval"),
    (["compare", "--batch-size", "0"], "--batch-size"),
    (["compare", "--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_counts_out_of_range_are_usage_errors(tmp_path, prompts, args, option):
    command = args[0]
    required = {"run": [], "extract": ["--model", "./no-such-model", "--out", tmp_path / "run"],
                "generate": ["--model", "./no-such-model", "--prompts", prompts, "--out", tmp_path / "o.jsonl"],
                "compare": ["--model", "./no-such-model", "--run", tmp_path]}[command]
    result = cli(*args, *required, cwd=tmp_path)
    line = one_line_error(result, 2, f"Invalid value for '{option}'", f"refusal-lab {command} --help")
    assert re.search(r"greater than or equal to [01]", line)


def test_out_must_be_the_kind_of_path_the_command_writes(tmp_path, prompts):
    existing_file = tmp_path / "taken.txt"
    existing_file.write_text("x")
    one_line_error(cli("run", "--out", existing_file, cwd=tmp_path), 2, "--out", "is an existing file",
                   "directory")
    one_line_error(cli("generate", "--model", "./no-such-model", "--prompts", prompts, "--out", tmp_path,
                       cwd=tmp_path), 2, "is an existing directory", "file path")
    one_line_error(cli("abliterate", "--model", "./no-such-model", "--run", tmp_path, "--out", existing_file / "m",
                       cwd=tmp_path), 2, f"{existing_file} is a file, so {existing_file / 'm'} cannot be created")
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys, a folder nobody may create entries in")
def test_out_that_is_not_writable(tmp_path):
    line = one_line_error(cli("run", "--out", "/sys/refusal-lab-test/run", cwd=tmp_path), 2, "--out",
                          "/sys is not writable")
    assert "(Operation not permitted)" in line or "(Permission denied)" in line


@pytest.mark.parametrize("content,needles", [
    (b"first prompt\nsec\x00ond\n", ("line 2 holds a NUL byte", "binary file")),
    (b"a\nb\n" + b"x" * 100_001 + b"\n", ("line 3 is 100,001 bytes", "100,000-byte limit")),
])
def test_bad_prompt_files_fail_before_the_model_loads(tmp_path, content, needles):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    result = cli("generate", "--model", "./no-such-model", "--prompts", path, "--out", tmp_path / "o.jsonl",
                 cwd=tmp_path)
    one_line_error(result, 1, str(path), *needles)  # the model error would come later


@pytest.mark.parametrize("text,needles", [
    ('n_train = 8\n[selection]\nmode = "exhuastive"\n', ("selection.mode = 'exhuastive'", "'fast' or 'exhaustive'")),
    ('n_train = 8\nn_evl = 3\n', ("unknown key n_evl", "n_val")),
    ('n_train = "eight"\n', ("n_train = 'eight' is invalid", "valid integer")),
    ('n_train = 8\n[selection\n', ("invalid TOML", "line 2")),
])
def test_config_errors_name_file_and_key(tmp_path, text, needles):
    config = tmp_path / "c.toml"
    config.write_text(text)
    one_line_error(cli("run", "--config", config, "--out", tmp_path / "run", cwd=tmp_path), 1, str(config),
                   *needles)
    assert not (tmp_path / "run").exists()  # nothing done


def test_n_eval_above_the_held_out_prompts_is_capped_with_one_line(tmp_path):
    out = tmp_path / "run"
    result = cli("run", "--n-eval", 100000, "--model", "./no-such-model", "--out", out, cwd=tmp_path)
    one_line_error(result, 1, "model path ./no-such-model does not exist")  # the cap is not an error
    splits = json.loads((out / "splits.json").read_text())["sets"]
    available = min(len(splits["test_harmful"]), len(splits["test_harmless"]))
    assert 0 < available < 100000
    assert f"n_eval 100000 is more than the {available} held-out prompts per side; capped to {available}" \
        in result.stdout
    assert json.loads((out / "config.json").read_text())["compare"]["n_eval"] == available
    result = cli("compare", "--n-eval", 100000, "--model", "./no-such-model", "--run", out, cwd=tmp_path)
    one_line_error(result, 1, "does not exist")
    assert f"capped to {available}" in result.stdout


def test_ctrl_c_prints_the_resume_hint_and_exits_130(tmp_path, model_dir):
    config = tmp_path / "config.json"  # minutes of work: a direction passes, then 200 tokens for every test prompt
    config.write_text(json.dumps({"model": str(model_dir), "dtype": "float32",
                                  "compare": {"measure": "generation", "max_new_tokens": 200, "kinds": ["ablate"]},
                                  "batch_size": 8, "selection": {"kl_threshold": 1e9, "induce_threshold": -1e9}}))
    out = tmp_path / "run"
    # a shell without job control starts background jobs with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give the child the default disposition, as an interactive shell would
    process = subprocess.Popen([str(SCRIPT), "run", "--config", str(config), "--out", str(out)], cwd=tmp_path,
                               env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").exists():  # written once the command is under way
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert "Traceback" not in stderr + stdout, stderr
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == HINT
    assert not (out / "results.csv").exists()


@pytest.mark.parametrize("args,needles", [
    (["--metrics", "refusal,perplexty"], ("--metrics", "perplexty")),
    (["--run", "nowhere"], ("nowhere is not a run directory",)),
    (["--eval-set", "train"], ("--eval-set",)),
])
def test_evaluate_rejects_bad_input_before_loading_a_model(tmp_path, args, needles):
    result = cli("evaluate", "--out", tmp_path / "results", "--model", "./no-such-model", *args, cwd=tmp_path)
    assert result.returncode in (1, 2)
    one_line_error(result, result.returncode, *needles)


def test_study_has_its_own_help_and_the_top_level_lists_it(tmp_path):
    result = cli("study", "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "--config" in result.stdout and "--out" in result.stdout and "report.html" in result.stdout
    assert "--run" not in result.stdout  # one command, one job: the one-run matrix is compare --run
    top = cli("--help", cwd=tmp_path)
    assert top.returncode == 0 and re.search(r"^[│| ]+study\s", top.stdout, re.MULTILINE), top.stdout


@pytest.fixture
def bad_study_config(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text('models = ["qwen2.5-coder-0.5b-instruct"]\nn_evl = 3\n')  # fails on reading, before any work
    return path


def test_study_errors_are_one_line(tmp_path, bad_study_config):
    out = tmp_path / "study"
    one_line_error(cli("study", "--config", bad_study_config, "--out", out, cwd=tmp_path), 1, str(bad_study_config),
                   "unknown key n_evl")
    one_line_error(cli("study", "--config", bad_study_config, "--out", out, "--run", tmp_path, cwd=tmp_path), 2,
                   "No such option: --run", "refusal-lab study --help")
    one_line_error(cli("study", "--out", out, cwd=tmp_path), 2, "Missing option '--config'")
    assert not out.exists()


def test_compare_config_is_deprecated_for_study_and_does_the_same(tmp_path, bad_study_config):
    out = tmp_path / "study"
    result = cli("compare", "--config", bad_study_config, "--out", out, cwd=tmp_path)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 1, result.stderr
    note, error = result.stderr.strip().splitlines()  # the note, then study's own error
    assert note.startswith("note: `refusal-lab compare --config FILE --out DIR` is deprecated")
    assert "use `refusal-lab study --config FILE --out DIR`" in note
    assert error == cli("study", "--config", bad_study_config, "--out", out, cwd=tmp_path).stderr.strip()
    assert not out.exists()
    result = cli("compare", "--out", out, cwd=tmp_path)  # the old form's own check, after the note
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 2, result.stderr
    assert "pass --config FILE" in result.stderr.splitlines()[1]


def test_compare_without_run_points_to_study(tmp_path, bad_study_config):
    line = one_line_error(cli("compare", "--config", bad_study_config, cwd=tmp_path), 1, "compare needs --run RUN_DIR",
                          "refusal-lab study --config FILE --out DIR")
    assert "deprecated" not in line


def test_findings_outside_a_finished_study_is_one_line(tmp_path):
    one_line_error(cli("findings", "--run", tmp_path, cwd=tmp_path), 1,
                   f"{tmp_path} is not a study directory (no study.json)")
    (tmp_path / "study.json").write_text(json.dumps({"models": ["qwen2.5-coder-0.5b-instruct"]}))
    one_line_error(cli("findings", "--run", tmp_path, cwd=tmp_path), 1,
                   f"{tmp_path} is not a finished study (no {tmp_path / 'findings.json'})",
                   f"refusal-lab study --config {tmp_path / 'study.json'} --out {tmp_path}")
    one_line_error(cli("findings", cwd=tmp_path), 2, "Missing option '--run'")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_backend_vllm_without_vllm_is_one_line_naming_the_install(tmp_path):
    (tmp_path / "p.txt").write_text("hi\n")
    one_line_error(cli("generate", "-m", "x", "--prompts", "p.txt", "--out", "o.jsonl", "--backend", "vllm",
                       cwd=tmp_path), 1, "needs vLLM", "refusal-lab[vllm]", "make test-vllm")
