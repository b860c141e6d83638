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

# docs/benchmarks.md's first figures, side by side with the book's code and HF transformers (about 30 minutes on 2 cores).
bench: install-dev
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_train.py --precision bf16
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_tokenizer.py
	$(BIN)/python benchmarks/bench_load_memory.py
	$(BIN)/python benchmarks/bench_lecture.py

clean:
	rm -rf $(VENV) runs .pytest_cache
