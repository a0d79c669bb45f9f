# Two commands on a fresh machine: `make run` (the main job) and `make test`.
# Both create .venv and install what is missing. On machines without an NVIDIA GPU the CPU
# build of torch 2.13.0 is installed first, so that pip does not pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/nri-ray quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/simulate.py --json benchmarks/results/simulate.json
	$(BIN)/python benchmarks/round.py --sweep --json benchmarks/results/round_cpu.json
	$(BIN)/python benchmarks/reference_round.py --json benchmarks/results/reference_round.json

clean:
	rm -rf $(VENV) runs data benchmarks/results
