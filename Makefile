# The two commands: `make run` (the product on its embedded defaults) and `make test` (every
# test tier, lint and types). Both set up everything they need from this repository alone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps run test lint unit bench clean image soak

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

setup: $(STAMP)

# kernels run sandboxed (bubblewrap); where it cannot run, make run says why and opts out
run: setup
	scripts/run.sh $$($(BIN)/python -m gateway.sandbox || echo --LocalRuntime.sandbox=none)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

system-deps:
	scripts/install-system-deps.sh

test: lint system-deps
	$(BIN)/python -c 'from gateway.runtimes.local import main; main()'  # the kernel environment
	$(BIN)/pytest

unit: setup
	$(BIN)/pytest -m unit

# the job image of the docker and swarm runtimes (needs root for debootstrap, and dockerd)
image: setup
	$(BIN)/python -m gateway.container.build

# 1,000 create -> execute -> delete/expire/kill cycles, 8 at a time (the soak tier runs 200)
soak: setup
	mkdir -p .bench
	$(BIN)/python -m benchmarks.soak --cycles 1000 --parallel 8 --json .bench/soak.json

EG_BIN := .bench/eg/bin

# Enterprise Gateway 3.3 in its own virtualenv: its pins (jupyter_client<7, pyzmq<25) clash with ours
$(EG_BIN)/jupyter-enterprisegateway:
	$(PYTHON) -m venv .bench/eg
	$(EG_BIN)/python -m pip install --quiet 'jupyter_enterprise_gateway==3.3.0' 'jupyter_client<7' 'ipykernel<6.30'

bench: setup $(EG_BIN)/jupyter-enterprisegateway
	mkdir -p .bench
	$(BIN)/python benchmarks/chronos_throughput.py --json .bench/chronos.json
	$(BIN)/python benchmarks/relay_latency.py --eg-bin $(EG_BIN) --json .bench/relay.json \
	  $$( [ "$$(id -u)" = 0 ] && command -v dockerd >/dev/null && echo --docker )
	$(BIN)/python benchmarks/relay_in_turns.py --json .bench/relay_in_turns.json
	$(BIN)/python benchmarks/transfer.py --json .bench/transfer.json
	$(BIN)/python benchmarks/concurrency.py --json .bench/concurrency.json
	$(BIN)/python benchmarks/scheduling.py --seeds 1-5 --json .bench/scheduling.json
	$(BIN)/python benchmarks/sdk_map.py --json .bench/sdk_map.json
	$(BIN)/python benchmarks/sandbox.py --json .bench/sandbox.json
	$(BIN)/python benchmarks/report.py --dir .bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
