"""Loaders for prompt files a user has: AdvBench, HarmBench, JailbreakBench, Alpaca, XSTest and
plain .txt/.jsonl/.json/.csv.

Bad input raises :class:`~refusal_lab.core.errors.RefusalLabError` with a one-line message naming
the file, the problem and the fix.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data.prompts import HARMFUL, HARMLESS, Prompt, PromptSet, check_label

#: Fields, in order of preference, that hold the prompt in a generic .jsonl file / .csv file.
JSONL_FIELDS = ("prompt", "instruction", "goal", "text")
CSV_COLUMNS = ("prompt", "goal")
#: The longest line (one prompt, or one JSON record) a prompt file may hold.
MAX_LINE_BYTES = 100_000
#: File types :func:`load_prompt_file` understands.
EXTENSIONS = (".txt", ".jsonl", ".json", ".csv")

_LABEL_WORDS = {
    "harmful": HARMFUL, "unsafe": HARMFUL, "1": HARMFUL, "true": HARMFUL,
    "harmless": HARMLESS, "safe": HARMLESS, "benign": HARMLESS, "0": HARMLESS, "false": HARMLESS,
}

_JSONL_FIX = 'fix that line, each line must be one JSON object such as {"prompt": "..."}'


class _Row(NamedTuple):
    """A prompt as read from a file; ``label`` is the raw value written there, or None."""

    text: str
    label: Any = None
    category: str = ""
    where: str = ""


# --- reading -----------------------------------------------------------------------------------


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise RefusalLabError(f"{p}: file not found; check the path (relative paths are from "
                              f"the current directory {Path.cwd()})")
    if p.is_dir():
        raise RefusalLabError(f"{p}: is a directory, not a prompt file; pass the path of a "
                              f"file such as prompts.txt")
    return p


def _check_lines(p: Path, raw: bytes, line_limit: bool) -> None:
    """Reject binary files (a NUL byte) and, if ``line_limit``, lines over :data:`MAX_LINE_BYTES`, naming the
    line (a .json document may be one long line)."""
    nul = raw.find(b"\0")
    if nul >= 0:
        at = raw.count(b"\n", 0, nul) + 1
        raise RefusalLabError(f"{p}: line {at} holds a NUL byte, so this is a binary file, not prompts; pass "
                              f"a UTF-8 text file")
    for n, line in enumerate(raw.split(b"\n") if line_limit else (), 1):
        if len(line) > MAX_LINE_BYTES:
            raise RefusalLabError(f"{p}: line {n} is {len(line):,} bytes, over the {MAX_LINE_BYTES:,}-byte limit "
                                  f"for one prompt; split or shorten it")


def _read_text(path: str | Path, line_limit: bool = True) -> tuple[Path, str]:
    p = _check_file(path)
    raw = p.read_bytes()
    _check_lines(p, raw, line_limit)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RefusalLabError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save the "
                              f"file as UTF-8") from e
    if not text.strip():
        raise RefusalLabError(f"{p}: file is empty (no prompts); add prompts to it or pass "
                              f"a different file")
    return p, text


def read_json_document(path: str | Path) -> tuple[Path, Any]:
    """The parsed contents of a JSON file."""
    p, text = _read_text(path, line_limit=False)
    try:
        return p, json.loads(text)
    except json.JSONDecodeError as e:
        raise RefusalLabError(
            f"{p}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix the file "
            f"or, for one object per line, name it .jsonl") from e


def jsonl_records(source: str | Path, text: str, fix: str = _JSONL_FIX) -> list[tuple[str, Any]]:
    """``("line N", value)`` for each non-blank line of JSON-lines ``text``; ``fix`` ends the
    message for a line that is not JSON."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise RefusalLabError(f"{source}: line {n} is not valid JSON ({e.msg} at column "
                                  f"{e.colno}); {fix}") from e
    return out


def _read_csv(path: str | Path) -> tuple[Path, list[str], list[dict[str, str]]]:
    p, text = _read_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in (reader.fieldnames or []) if c is not None]
        rows = [{(k or "").strip(): (v if isinstance(v, str) else "") for k, v in r.items()}
                for r in reader]
    except csv.Error as e:
        raise RefusalLabError(f"{p}: malformed CSV ({e}); check quoting on the reported "
                              f"line") from e
    return p, columns, rows


def _pick_column(path: Path, columns: list[str], accepted: Sequence[str]) -> str:
    for c in accepted:
        if c in columns:
            return c
    found = ", ".join(columns) if columns else "none"
    raise RefusalLabError(
        f"{path}: missing prompt column (columns found: {found}; accepted: "
        f"{', '.join(accepted)}); rename the prompt column to one of the accepted names")


def _require_columns(path: Path, columns: list[str], required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        found = ", ".join(columns) if columns else "none"
        raise RefusalLabError(
            f"{path}: missing column {', '.join(missing)} for a {what} file (columns found: "
            f"{found}; accepted: {', '.join(required)}); pass the original {what} CSV")


# --- rows --------------------------------------------------------------------------------------


def _csv_rows(rows: list[dict[str, str]], column: str, *, category_columns: Sequence[str] = (),
              label_column: str | None = None) -> list[_Row]:
    """Rows with non-empty ``column``; category from the first non-empty ``category_columns``."""
    out = []
    for line_no, r in enumerate(rows, 2):
        text = (r.get(column) or "").strip()
        if not text:
            continue
        cat = next((r[c].strip() for c in category_columns if (r.get(c) or "").strip()), "")
        lab = (r.get(label_column) or "").strip() if label_column else ""
        out.append(_Row(text, lab or None, cat, f"row {line_no}"))
    return out


def _record_text(path: Path, where: str, rec: Any) -> str:
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        raise RefusalLabError(
            f"{path}: {where} is a JSON {type(rec).__name__}, not an object; write each line "
            f"as {{\"prompt\": \"...\"}}")
    for f in JSONL_FIELDS:
        if f in rec and isinstance(rec[f], str):
            return rec[f]
    raise RefusalLabError(
        f"{path}: {where} has no prompt field (fields found: {', '.join(rec) or 'none'}; "
        f"accepted: {', '.join(JSONL_FIELDS)}); rename the field to one of the accepted names")


def _record_rows(path: Path, records: Iterable[tuple[str, Any]]) -> list[_Row]:
    """Rows from JSON strings or objects with a prompt field and optional label/category."""
    out = []
    for where, rec in records:
        text = _record_text(path, where, rec)
        if text.strip():
            fields = rec if isinstance(rec, dict) else {}
            lab = fields.get("label")
            out.append(_Row(text, None if lab in (None, "") else lab,
                            str(fields.get("category") or ""), where))
    return out


def _txt_rows(path: str | Path) -> list[_Row]:
    _, text = _read_text(path)
    return [_Row(line.strip()) for line in text.splitlines() if line.strip()]


def _jsonl_rows(path: str | Path) -> list[_Row]:
    p, text = _read_text(path)
    return _record_rows(p, jsonl_records(p, text))


def _generic_csv_rows(path: str | Path) -> list[_Row]:
    p, columns, rows = _read_csv(path)
    return _csv_rows(rows, _pick_column(p, columns, CSV_COLUMNS), category_columns=("category",),
                     label_column="label")


def _alpaca_rows(path: Path, doc: Any) -> list[_Row]:
    if not isinstance(doc, list):
        raise RefusalLabError(f"{path}: expected a JSON list of {{instruction, input, output}} "
                              f"objects, found a {type(doc).__name__}; pass the Alpaca data file")
    out = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict) or "instruction" not in item:
            found = ", ".join(item) if isinstance(item, dict) else type(item).__name__
            raise RefusalLabError(
                f"{path}: item {i} has no 'instruction' field (found: {found}; accepted: "
                f"instruction, input, output); pass an Alpaca-format file")
        instr = str(item["instruction"]).strip()
        if instr and not str(item.get("input") or "").strip():
            out.append(_Row(instr))
    return out


# --- rows to prompts ---------------------------------------------------------------------------


def _parse_label(value: Any, path: Path, where: str) -> str:
    key = str(value).strip().casefold()
    if key in _LABEL_WORDS:
        return _LABEL_WORDS[key]
    raise RefusalLabError(
        f"{path}: {where} has label {value!r}, which is not one of "
        f"harmful/harmless/unsafe/safe; fix the label or remove the label field")


def _need_label(path: Path, label: str | None) -> str:
    if label is None:
        raise RefusalLabError(f"{path}: the file has no label column, so its prompts' label is "
                              f"unknown; pass label='harmful' or label='harmless'")
    return label


def _finish(path: str | Path, rows: list[_Row], label: str | None, source: str) -> PromptSet:
    """A PromptSet named after the file. Rows with their own label are filtered to ``label``
    (all kept when it is None); rows without one take ``label``, which must then be given."""
    p = Path(path)
    if label is not None:
        check_label(label, f" for {p}")
    out = []
    for r in rows:
        lab = _need_label(p, label) if r.label is None else _parse_label(r.label, p, r.where)
        if label is None or lab == label:
            out.append(Prompt(r.text.strip(), lab, category=r.category, source=source))
    if not out:
        want = f" labelled {label!r}" if label else ""
        raise RefusalLabError(f"{p}: no prompts{want} found; check the file's contents "
                              f"and the label you asked for")
    return PromptSet(out, name=p.stem)


# --- loaders -----------------------------------------------------------------------------------


def load_advbench_csv(path: str | Path, label: str = HARMFUL) -> PromptSet:
    """AdvBench ``harmful_behaviors.csv`` (column ``goal``)."""
    p, columns, rows = _read_csv(path)
    _require_columns(p, columns, ["goal"], "AdvBench")
    return _finish(p, _csv_rows(rows, "goal"), label, "advbench")


def load_harmbench_csv(path: str | Path, label: str = HARMFUL, *,
                       include_contextual: bool = False) -> PromptSet:
    """HarmBench behaviours CSV (``Behavior``; category from ``SemanticCategory``).

    Rows with a non-empty ``ContextString`` are skipped unless ``include_contextual``; then the
    context is prepended to the behaviour, as HarmBench does.
    """
    p, columns, rows = _read_csv(path)
    _require_columns(p, columns, ["Behavior"], "HarmBench")
    kept = []
    for r in rows:
        context, behavior = ((r.get(c) or "").strip() for c in ("ContextString", "Behavior"))
        if context and behavior:
            if not include_contextual:
                continue
            r = {**r, "Behavior": f"{context}\n\n---\n\n{behavior}"}
        kept.append(r)
    return _finish(p, _csv_rows(kept, "Behavior",
                                category_columns=("SemanticCategory", "FunctionalCategory")),
                   label, "harmbench")


def load_jailbreakbench_csv(path: str | Path, label: str = HARMFUL) -> PromptSet:
    """JailbreakBench behaviours CSV (``Goal``, ``Category``); its benign CSV has the same shape."""
    p, columns, rows = _read_csv(path)
    _require_columns(p, columns, ["Goal"], "JailbreakBench")
    return _finish(p, _csv_rows(rows, "Goal", category_columns=("Category",)), label,
                   "jailbreakbench")


def load_xstest_csv(path: str | Path, label: str | None = None) -> PromptSet:
    """XSTest ``xstest_prompts.csv``: labels from ``label`` (safe/unsafe) or ``type`` (contrast_*).

    ``label=None`` returns both halves; a label returns only that half.
    """
    p, columns, rows = _read_csv(path)
    _require_columns(p, columns, ["prompt", "type"], "XSTest")
    out = [r if r.label is not None else
           r._replace(label=HARMFUL if r.category.startswith("contrast_") else HARMLESS)
           for r in _csv_rows(rows, "prompt", category_columns=("type",), label_column="label")]
    return _finish(p, out, label, "xstest")


def load_generic_csv(path: str | Path, label: str | None = None) -> PromptSet:
    """A CSV with a ``prompt`` or ``goal`` column (optional ``category`` and ``label`` columns)."""
    return _finish(path, _generic_csv_rows(path), label, Path(path).name)


def load_txt(path: str | Path, label: str = HARMFUL) -> PromptSet:
    """Plain text, one prompt per line; blank lines are skipped."""
    return _finish(path, _txt_rows(path), label, Path(path).name)


def load_jsonl(path: str | Path, label: str | None = None) -> PromptSet:
    """JSON lines with a ``prompt`` (or ``instruction``/``goal``/``text``) field per line.

    Optional ``category`` and ``label`` fields are used when present.
    """
    return _finish(path, _jsonl_rows(path), label, Path(path).name)


def load_alpaca_json(path: str | Path, label: str = HARMLESS) -> PromptSet:
    """Alpaca-style JSON list of {instruction, input, output}; keeps items with empty ``input``."""
    p, doc = read_json_document(path)
    return _finish(p, _alpaca_rows(p, doc), label, "alpaca")


def _load_json_any(path: Path, label: str | None) -> PromptSet:
    """A .json file: Alpaca list, list of strings, or list of prompt objects."""
    p, doc = read_json_document(path)
    if isinstance(doc, list) and doc and all(isinstance(d, dict) and "instruction" in d
                                             for d in doc):
        return _finish(p, _alpaca_rows(p, doc), label or HARMLESS, "alpaca")
    if not isinstance(doc, list):
        raise RefusalLabError(f"{p}: expected a JSON list of prompts, found a "
                              f"{type(doc).__name__}; write a list of strings or of "
                              f"{{\"prompt\": ...}} objects")
    return _finish(p, _record_rows(p, ((f"item {i}", rec) for i, rec in enumerate(doc))),
                   label, p.name)


def load_prompt_file(path: str | Path, label: str | None = None) -> PromptSet:
    """Load any supported prompt file, choosing the reader by extension and CSV columns.

    ``.txt`` one per line; ``.jsonl`` objects with ``prompt``/``instruction``/``goal``; ``.json``
    Alpaca list or list of prompts; ``.csv`` recognised as HarmBench (``Behavior``),
    JailbreakBench (``Goal``), XSTest (``prompt`` + ``type``), AdvBench/generic (``goal`` or
    ``prompt``). Files with per-row labels (XSTest, a ``label`` column) are filtered to ``label``
    when it is given; other files need ``label``.
    """
    p = _check_file(path)
    ext = p.suffix.lower()
    if ext == ".txt":
        return load_txt(p, label=_need_label(p, label))
    if ext == ".jsonl":
        return load_jsonl(p, label=label)
    if ext == ".json":
        return _load_json_any(p, label=label)
    if ext == ".csv":
        _, columns, _ = _read_csv(p)
        if "Behavior" in columns:
            return load_harmbench_csv(p, label=_need_label(p, label))
        if "Goal" in columns:
            return load_jailbreakbench_csv(p, label=_need_label(p, label))
        if "prompt" in columns and "type" in columns:
            return load_xstest_csv(p, label=label)
        return load_generic_csv(p, label=label)
    raise RefusalLabError(
        f"{p}: unknown file type {ext or '(no extension)'!r}; use one of "
        f"{', '.join(EXTENSIONS)} (.txt holds one prompt per line)")


_GENERATION_READERS: dict[str, Callable[[Path], list[_Row]]] = {
    ".txt": _txt_rows, ".jsonl": _jsonl_rows, ".csv": _generic_csv_rows}


def load_prompts_for_generation(path: str | Path) -> list[str]:
    """Bare prompt texts for generation: ``.txt``, ``.jsonl`` (``prompt``) or ``.csv``
    (``prompt``/``goal``); labels are ignored."""
    p = _check_file(path)
    ext = p.suffix.lower()
    if ext not in _GENERATION_READERS:
        raise RefusalLabError(f"{p}: unknown file type {ext or '(no extension)'!r} for "
                              f"generation; use .txt (one prompt per line), .jsonl or .csv")
    out = [r.text.strip() for r in _GENERATION_READERS[ext](p)]
    if not out:
        raise RefusalLabError(f"{p}: no prompts found; add at least one prompt")
    return out
