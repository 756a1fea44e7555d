# The course's two commands: `make course` (set-up + execute the lectures) and `make test`.
# Everything runs inside .venv, created on first use from the pins in requirements.txt.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Notebook parameters, passed to papermill as -p values.
DEVICE ?= auto
SEED   ?= 0
FAST   ?= 0
# Grading
ASSIGNMENT ?= ps1_smoothing
SUBMISSIONS ?= build/example_submissions/$(ASSIGNMENT)
WORKERS ?=

# Jupyter, IPython and matplotlib write to $HOME by default: keep them inside build/.
export JUPYTER_CONFIG_DIR  := $(CURDIR)/build/jupyter/config
export JUPYTER_DATA_DIR    := $(CURDIR)/build/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CURDIR)/build/jupyter/runtime
export IPYTHONDIR          := $(CURDIR)/build/ipython
export MPLCONFIGDIR        := $(CURDIR)/build/matplotlib
export PYTHONDONTWRITEBYTECODE := 1
# nbgrader calls `alembic` and `jupyter` from PATH: the venv's come first.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup course notebooks release examples test lab grade bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@touch $@

## course: set up, execute every lecture notebook into build/notebooks/, generate the student
## release and grade the bundled example submissions.
course: setup notebooks release examples

## release: regenerate release/ from source/ with nbgrader generate_assignment.
release: setup
	$(PY) -m autograder.release

## examples: build example submissions and grade them with the course's grader.
examples: setup
	$(PY) -m autograder.examples --out build/example_submissions

## grade: make grade ASSIGNMENT=ps1_smoothing SUBMISSIONS=path/to/submissions [WORKERS=2]
grade: setup
	$(PY) -m autograder grade $(ASSIGNMENT) --submissions $(SUBMISSIONS) $(if $(WORKERS),--workers $(WORKERS))

## bench: every benchmark; JSON in build/bench/, a table on the terminal, plots beside.
bench: setup
	$(PY) -m bench

notebooks: setup
	$(PY) -m utils.runner --device $(DEVICE) --seed $(SEED) --fast $(FAST) --out build/notebooks notebooks/*.ipynb

## test: set up, then the whole test suite (what CI runs).
test: setup
	$(PY) -m pytest

## lab: JupyterLab in the venv, nbgrader's extensions enabled.
lab: setup
	@# pip installs nbgrader's lab and server extensions enabled; show them before starting
	@$(VENV)/bin/jupyter labextension list 2>&1 | grep "@jupyter/nbgrader"
	@$(VENV)/bin/jupyter server extension list 2>&1 | grep "nbgrader.server_extensions"
	$(VENV)/bin/jupyter lab --notebook-dir=$(CURDIR)

clean:
	rm -rf build
