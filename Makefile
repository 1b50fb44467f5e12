# transfer-search: every target creates .venv on first use (CPU or CUDA TensorFlow, chosen here).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SPACE  ?= spaces/default.yaml
STUDY  ?= default
HOST   ?= 127.0.0.1
PORT   ?= 8080
# A machine whose nvidia-smi lists a GPU gets the CUDA build of TensorFlow; any other the CPU build.
TF_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: study test dashboard install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(TF_EXTRA),tfds,dev]'
	touch $@

install: $(BIN)/.installed

## make study [SPACE=spaces/x.yaml] [ARGS="--n-trials 5 --timeout 600 --name x --storage URL"]
study: $(BIN)/.installed
	$(BIN)/python -m search study --space $(SPACE) $(ARGS)

## make test: the whole suite, CPU only, a few minutes
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests $(ARGS)

## make dashboard [STUDY=default] [HOST=127.0.0.1] [PORT=8080]: optuna-dashboard on the study, artifacts included
dashboard: $(BIN)/.installed
	$(BIN)/python -m search dashboard --study $(STUDY) --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
