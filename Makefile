# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,rtx]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rmeeto-export build --model vim_b --ratio 0.31 --out out/vim_b-r0.31

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_vim_cpu.py

clean:
	rm -rf build out
