# Two commands on a fresh machine: `make demo` (the lecture's run) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The book's package, for side-by-side tests and benchmarks. Its metadata pulls TensorFlow and
# JupyterLab, which its ch02-ch05 code never imports, so it is installed without dependencies.
BOOK_PACKAGE := llms-from-scratch==1.0.19

# The demo and the benchmarks read the lecture's corpus from ../shared/data when it is there (the
# tests use their own copy, tests/data/the-verdict.txt).
ifneq ($(wildcard ../shared/data/the-verdict.txt),)
export GPTRAIN_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: demo test install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements-dev.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e . $(BOOK_PACKAGE)
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/gptrain train --out runs/verdict --overwrite
	$(BIN)/gptrain generate --checkpoint runs/verdict --prompt "Every effort moves you" \
		--max-new-tokens 25 --temperature 1.4 --top-k 25 --seed 123

test: install-dev
	$(BIN)/python -m pytest -q

# Every benchmark script, each writing its results file under BENCH_RESULTS (date, commit and command
# first), so the figures in the docs come from the code that is there. Where a full run is long, quick
# settings (noted; docs/benchmarks.md gives each figure's own command): about an hour on 2 cores.
# BENCH_RESULTS=/tmp/x writes a trial run elsewhere; BENCH_PLOTS keeps the lecture's plot out of the
# results (the README's is the full 10-epoch run's).
BENCH_RESULTS ?= benchmarks/results
BENCH_PLOTS ?= /tmp
# pipefail: a benchmark that fails fails make, not only tee.
bench: SHELL := bash
bench: .SHELLFLAGS := -o pipefail -c
# Through tee Python's output would come in blocks: line by line shows an hour's progress as it goes.
bench: export PYTHONUNBUFFERED := 1
bench: install-dev
	mkdir -p $(BENCH_RESULTS)
	$(BIN)/python benchmarks/bench_train.py | tee $(BENCH_RESULTS)/train.txt
	$(BIN)/python benchmarks/bench_train.py --precision bf16 | tee $(BENCH_RESULTS)/train_bf16.txt
	$(BIN)/python benchmarks/bench_generate.py | tee $(BENCH_RESULTS)/generate.txt
	$(BIN)/python benchmarks/bench_int8.py | tee $(BENCH_RESULTS)/int8.txt
	$(BIN)/python benchmarks/bench_eval.py | tee $(BENCH_RESULTS)/eval.txt
	$(BIN)/python benchmarks/bench_tasks.py | tee $(BENCH_RESULTS)/tasks.txt
	$(BIN)/python benchmarks/bench_prepare.py --sizes-mb 100 | tee $(BENCH_RESULTS)/prepare.txt  # quick: 100 MB only
	$(BIN)/python benchmarks/bench_tokenizer.py | tee $(BENCH_RESULTS)/tokenizer.txt
	$(BIN)/python benchmarks/bench_load_memory.py | tee $(BENCH_RESULTS)/load_memory.txt
	$(BIN)/python benchmarks/bench_integrity.py --rounds 1 | tee $(BENCH_RESULTS)/integrity.txt  # quick: one round
	$(BIN)/python benchmarks/bench_lecture.py --epochs 3 --skip-fp32 --plot $(BENCH_PLOTS)/lecture_losses.png \
		| tee $(BENCH_RESULTS)/lecture_e2e_3way.txt  # quick: 3 epochs
	$(BIN)/python benchmarks/bench_estimate.py --rounds 1 | tee $(BENCH_RESULTS)/estimate.txt  # quick: one round
	$(BIN)/python benchmarks/bench_transfer.py --skip-124m | tee $(BENCH_RESULTS)/transfer.txt  # quick: no 124M rows
	$(BIN)/python benchmarks/bench_quality.py --tokens 50000 --eval-every 10000 \
		| tee $(BENCH_RESULTS)/quality.txt  # quick: a quarter of the tokens
	$(BIN)/python benchmarks/bench_serve.py --clients 1 8 | tee $(BENCH_RESULTS)/serve.txt  # quick: two loads
	$(BIN)/python benchmarks/bench_memory.py --sizes 124M \
		| tee $(BENCH_RESULTS)/memory.txt  # quick: 124M (355M and 774M need ~40 GB)
	$(BIN)/python benchmarks/profile_step.py | tee $(BENCH_RESULTS)/profile_step.txt
	$(BIN)/python benchmarks/gpu_check.py --device cpu --quick \
		| tee $(BENCH_RESULTS)/gpu_check_cpu.txt  # the GPU check's CPU dry run

clean:
	rm -rf $(VENV) runs .pytest_cache
