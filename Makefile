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

# Every benchmark script, each printing its results file's header (date, commit, command) first. Where a
# full run is long, quick settings (noted; docs/benchmarks.md gives each figure's own command): about an
# hour on 2 cores. BENCH_PLOTS keeps the plots out of benchmarks/results/.
BENCH_PLOTS ?= /tmp
bench: install-dev
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_train.py --precision bf16
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_int8.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_tasks.py
	$(BIN)/python benchmarks/bench_prepare.py --sizes-mb 100  # quick: 100 MB only
	$(BIN)/python benchmarks/bench_tokenizer.py
	$(BIN)/python benchmarks/bench_load_memory.py
	$(BIN)/python benchmarks/bench_integrity.py --rounds 1  # quick: one round
	$(BIN)/python benchmarks/bench_lecture.py --epochs 3 --skip-fp32 --plot $(BENCH_PLOTS)/lecture_losses.png  # quick: 3 epochs
	$(BIN)/python benchmarks/bench_estimate.py --rounds 1  # quick: one round
	$(BIN)/python benchmarks/bench_transfer.py --skip-124m  # quick: no 124M rows
	$(BIN)/python benchmarks/bench_quality.py --tokens 50000 --eval-every 10000  # quick: a quarter of the tokens
	$(BIN)/python benchmarks/bench_serve.py --clients 1 8  # quick: two loads
	$(BIN)/python benchmarks/bench_memory.py --sizes 124M  # quick: 124M (355M and 774M need ~40 GB)
	$(BIN)/python benchmarks/profile_step.py
	$(BIN)/python benchmarks/gpu_check.py --device cpu --quick  # the GPU check's CPU dry run

clean:
	rm -rf $(VENV) runs .pytest_cache
