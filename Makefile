# fedlora: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedlora-installed
# CPU machines get this torch; a venv that already has torch (e.g. a CUDA build) keeps it.
TORCH_SPEC ?= torch==2.13.0
export FLWR_TELEMETRY_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo flower-demo test test-all bench bench-deploy lint format protos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedlora simulate

# The same federation under Flower's simulation engine (detached local SuperLink + Ray).
# Stop the SuperLink afterwards with: pkill -f "flower-superlink --insecure --simulation"
flower-demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
	  $(VENV)/bin/flwr run . --stream \
	  --federation-config "num-supernodes=3 client-resources-num-cpus=1" \
	  --run-config "run-dir='$(CURDIR)/runs'"

# The fast tier (unit, component, in-process integration; about 2 min on 2 cores). test-all adds
# the real-process tests (Flower daemons over TLS on loopback, Ray): what CI runs.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

# The benchmark suite (bench/run.py): about 3 min on 2 idle CPU cores; JSON + markdown in
# runs/bench/ (docs/performance.md).
bench: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(PY) -m bench.run

# The deploy section alone (bench/deploy.py): a real loopback deployment, ~15 min on 2 busy cores.
bench-deploy: $(STAMP)
	$(PY) -m bench.run --only deploy

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Regenerate the enrollment service's gRPC code (committed; tests/unit/test_protos.py checks it).
protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
	  protos/fedlora/enroll/v1/enroll.proto

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
