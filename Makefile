# Two entry points on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

demo: $(VENV)/.live
	$(BIN)/toxrt demo

test: $(VENV)/.full
	bash tools/install_system_deps.sh
	$(BIN)/python -m pytest -q

# The live stage: no torch.
$(VENV)/.live: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[report,eval]'
	touch $@

# Everything, with torch's CPU build (a bare "torch" requirement would pull a multi-GB CUDA build).
# The test extra brings idtracker.ai 6.0.14 (its tools need no torch and it requires none) and movement.
$(VENV)/.full: $(VENV)/.live
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[offline,test,batch]'
	touch $@

clean:
	rm -rf $(VENV) demo_output dist build
