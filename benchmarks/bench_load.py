"""A bundled model's one-time GGUF → safetensors conversion, and its cached load.

    python benchmarks/bench_load.py [--model qwen2.5-coder-0.5b-instruct] [--repeats 3] [--no-convert] [--quick]
                                    [--record]

* cached load: wall time of :func:`refusal_lab.models.load.load_model` from the cache (tokenizer + bf16 weights),
  after one untimed load that imports transformers and warms the page cache; best of ``--repeats``.
* conversion: what the first use of a bundled model costs — assemble the GGUF from its part packages (sha256 of
  every part), dequantize it with transformers, save safetensors. It runs into a temporary ``REFUSAL_LAB_CACHE``
  (under ``--tmp-dir``), so the real cache is left alone; it needs about 3× the model's bf16 size of free disk.

``--record`` writes both into the timings page's records (rows ``load.cached``, ``load.conversion``: this model's
figure).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from _common import (
    Report,
    add_model_args,
    add_record_arg,
    best_seconds,
    load,
    model_name,
    readme_figures,
    record,
    setup,
    timed,
)

from refusal_lab.models.bundled import BUNDLED, ensure_cached

README = {"qwen2.5-coder-0.5b-instruct": {"conversion": "65 s", "load": "~2 s"},
          "qwen2.5-coder-1.5b-instruct": {"conversion": "~135 s", "load": "6 s"}}


@contextmanager
def temporary_cache(parent: str | None):
    """Point ``REFUSAL_LAB_CACHE`` (read by :func:`refusal_lab.models.bundled.cache_dir`) at a fresh directory."""
    previous = os.environ.get("REFUSAL_LAB_CACHE")
    with tempfile.TemporaryDirectory(dir=parent, prefix="refusal-lab-bench-cache-") as tmp:
        os.environ["REFUSAL_LAB_CACHE"] = tmp
        try:
            yield Path(tmp)
        finally:
            if previous is None:
                del os.environ["REFUSAL_LAB_CACHE"]
            else:
                os.environ["REFUSAL_LAB_CACHE"] = previous


def main() -> None:
    parser = add_model_args(argparse.ArgumentParser(description=__doc__,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-convert", action="store_true", help="time only the cached load")
    parser.add_argument("--tmp-dir", help="where the temporary cache goes (default: the system's temp dir)")
    add_record_arg(parser)
    args = parser.parse_args()
    setup(args)
    figures = readme_figures(README, args.model)
    report = Report(f"{args.model}: conversion and cached load")

    load(args)  # imports, converts into the real cache if it is not there yet, warms the page cache
    repeats = 1 if args.quick else args.repeats
    seconds = best_seconds(lambda: load(args), repeats)
    report.add(f"cached load (s, best of {repeats})", f"{seconds:.1f}", readme=figures.get("load"))
    recorded = {"load.cached": f"{seconds:.1f} s"}

    if not args.no_convert and args.model in BUNDLED:
        with temporary_cache(args.tmp_dir):
            seconds = timed(ensure_cached, BUNDLED[args.model])[1]
        report.add("one-time GGUF → safetensors conversion (s)", f"{seconds:.0f}", readme=figures.get("conversion"))
        recorded["load.conversion"] = f"{seconds:.0f} s"
    elif not args.no_convert:
        report.add("one-time conversion", "not a bundled model", readme=figures.get("conversion"))
    report.print()
    if args.record:
        for key, figure in recorded.items():
            record("timings", key, {model_name(args.model): figure})


if __name__ == "__main__":
    main()
