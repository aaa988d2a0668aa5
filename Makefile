# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   - create .venv, install adamrot, run the main job on the embedded data
#   make test   - same environment, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch/torchvision pinned to the builds this project is tested with
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv benchmark clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m adamrot.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.rotation_overhead

clean:
	rm -rf $(VENV) runs *.egg-info
