# Two commands do all the set-up on a fresh machine (Python 3.11, no GPU, no conda):
#   make demo   - creates .venv on first use (with the dev and lab extras: .venv/bin/jupyter lab),
#                 then runs the demo pipeline (outputs/runs/demo/)
#   make test   - creates .venv on first use, then runs ruff and the tests on TEST_WORKERS
#                 processes (no network, no writes outside a temporary folder;
#                 TINYLAB_NETWORK_TESTS=1 adds the real fetches)
#   make lab    - creates .venv on first use, then JupyterLab on notebooks/ with .venv's kernel
#                 (as root too), printing its URL; LAB_PORT picks the port
# TORCH_SPEC picks the torch build; on machines without a local CPU wheel, a smaller CPU build
# comes with: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
LAB_PORT ?= 8888
# pytest-xdist workers for make test, each taking whole test files (14 -> 9 min on 2 cores)
TEST_WORKERS ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lab clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), sys.version' \
		|| { echo "error: Python 3.11 or 3.12 is needed (found $$($(PYTHON) --version))"; exit 2; }
	@$(PYTHON) -m venv $(VENV) \
		|| { echo "error: could not create $(VENV); on Debian: apt-get install python3-venv"; exit 2; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev,lab]"
	@touch $@

demo: $(STAMP)
	$(BIN)/tinylab run params/pipelines/demo.yaml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# --allow-root only for root: Jupyter refuses root without it, and a user needs no such flag
lab: $(STAMP)
	@echo "JupyterLab on notebooks/ (kernel: $(BIN)/python); open the http://127.0.0.1 URL below; Ctrl-C stops it"
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks --no-browser --ip=127.0.0.1 \
		--port=$(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root)

clean-venv:
	rm -rf $(VENV)
