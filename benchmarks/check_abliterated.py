"""Does a run's exported abliterated model, loaded with plain transformers, reproduce the hooked ablation?

    python benchmarks/check_abliterated.py --run runs/full

Runs ``refusal-lab abliterate`` on the run's direction, then generates greedily on the run's held-out harmful
prompts with nothing but transformers (AutoModelForCausalLM, the tokenizer's own chat template; no refusal-lab code
on the forward path) in the run's dtype, and prints the refusal rate beside the hooked ablation's, plus how many
completions agree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import Report
from transformers import AutoModelForCausalLM, AutoTokenizer

from refusal_lab.core.io import write_jsonl
from refusal_lab.evaluation.judges import is_refusal
from refusal_lab.evaluation.metrics import Rate

README = {"full": {"hooked": "0.06", "plain": "0.07 [0.04, 0.12]", "same": "151 / 176"}}  # runs/full, the 1.5B


@torch.no_grad()
def plain_generate(model_dir: Path, prompts: list[str], max_new_tokens: int, batch_size: int,
                   dtype: torch.dtype) -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    completions = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        completions += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return completions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/full"))
    parser.add_argument("--out", type=Path, help="model directory to write (default RUN/abliterated-model)")
    args = parser.parse_args()
    config = json.loads((args.run / "config.json").read_text())
    dtype = getattr(torch, json.loads((args.run / "manifest.json").read_text())["dtype"].removeprefix("torch."))
    out = args.out or args.run / "abliterated-model"
    generations = args.run / "comparison" / "generation" / "generations"
    hooked = [json.loads(line) for line in (generations / "ablate_all_-harmful.jsonl").read_text().splitlines()]
    if not (out / "config.json").exists():
        cli = shutil.which("refusal-lab", path=str(Path(sys.executable).parent)) or "refusal-lab"  # the venv's
        subprocess.run([cli, "abliterate", "--model", config["model"],
                        "--run", str(args.run), "--out", str(out)], check=True)
    start = time.perf_counter()
    plain = plain_generate(out, [r["prompt"] for r in hooked], config["compare"]["max_new_tokens"],
                           config["compare"]["batch_size"], dtype)
    seconds = time.perf_counter() - start
    write_jsonl(generations / "abliterated-plain-harmful.jsonl",
                ({"prompt": row["prompt"], "response": response} for row, response in zip(hooked, plain)))
    rate_hooked = Rate(sum(is_refusal(r["response"]) for r in hooked), len(hooked))
    rate_plain = Rate(sum(map(is_refusal, plain)), len(plain))
    same = sum(r["response"] == p for r, p in zip(hooked, plain))
    figures = README.get(args.run.name, {})
    report = Report(f"abliterated model vs hooked ablation, {args.run} ({config['model']}), {len(hooked)} held-out "
                    "harmful")
    report.add("refusal rate, hooked ablation", str(rate_hooked), readme=figures.get("hooked"))
    report.add("refusal rate, abliterated model (plain transformers)", str(rate_plain), readme=figures.get("plain"))
    report.add("identical completions", f"{same} / {len(hooked)}", readme=figures.get("same"))
    report.add("plain generation time (s)", f"{seconds:.0f}")
    report.print()


if __name__ == "__main__":
    main()
