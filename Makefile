# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   - create .venv, install adamrot, run the main job on the embedded data
#   make test   - same environment, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch/torchvision pinned to the builds this project is tested with; every other package
# to the exact version in constraints.txt (refresh: make lock)
TORCH  := torch==2.14.1 torchvision==0.29.1
PIN    := -c constraints.txt

.PHONY: demo test venv benchmark clean lock

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIN) $(TORCH)
	$(BIN)/python -m pip install --quiet $(PIN) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m adamrot.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.rotation_overhead

# resolve the newest versions setup.cfg allows in a fresh venv and pin them in constraints.txt
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet $(TORCH) -e '.[dev]'
	head -3 constraints.txt > constraints.txt.new
	.venv-lock/bin/python -m pip freeze --all --exclude-editable \
	    | grep -v -e '^pip==' -e '^wheel==' | sort -f >> constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) runs *.egg-info
