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
# User-given values reach the shell only through the environment, quoted ("$$STUDY"), never pasted into
# the command line: a study named `x; rm -rf ~` is just a strange name. $$ARGS is split on spaces only.
export SPACE STUDY HOST PORT ARGS CONFIG DATA WEIGHTS BUDGET N STORAGE FROM TO

.PHONY: study test test-fast dashboard install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(TF_EXTRA),tfds,dev,peer]'
	touch $@

install: $(BIN)/.installed

## make study [SPACE=spaces/x.yaml] [ARGS="--n-trials 5 --timeout 600 --name x --storage URL"]
study: $(BIN)/.installed
	$(BIN)/python -m search study --space "$$SPACE" $$ARGS

# Every core (pytest-xdist), one test file per worker at a time: a file's module fixtures (a study, a server)
# are made once. The 15 slowest tests are listed at the end, so the next slow one is seen when it lands.
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15

## make test: the whole suite, CPU only, on every core (about 10 minutes on 2 cores)
test: $(BIN)/.installed
	$(PYTEST) tests $$ARGS

## make test-fast: everything but the tests marked slow, for everyday edits (under 3 minutes on 2 cores)
test-fast: $(BIN)/.installed
	$(PYTEST) -m "not slow" tests $$ARGS

## make dashboard [STUDY=default] [HOST=127.0.0.1] [PORT=8080]: optuna-dashboard on the study, artifacts included
dashboard: $(BIN)/.installed
	$(BIN)/python -m search dashboard --study "$$STUDY" --host "$$HOST" --port "$$PORT"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# --- export the winner, retrain it, report (search/export.py, retrain.py, report.py) ---
CONFIG ?= $(or $(TRANSFER_SEARCH_HOME),studies)/$(STUDY)/best.yaml
.PHONY: export retrain report deliver

## make deliver STUDY=name: rebuild studies/<name>/delivered/ (model.keras, report.md) from the kept fold models
##   (make study does this at the end of its budget; after `make workers`, run it once all workers are done)
deliver: $(BIN)/.installed
	$(BIN)/python -m search deliver --study "$$STUDY" $$ARGS

## make export STUDY=name [ARGS="--top 3 --storage URL"]: studies/<name>/best.yaml (+ best-2.yaml ...), trials.csv
export: $(BIN)/.installed
	$(BIN)/python -m search export --study "$$STUDY" $$ARGS

## make retrain [CONFIG=studies/<name>/best.yaml | STUDY=name] [ARGS="--seeds 3"]: new studies/<name>/retrain/run-N/
retrain: $(BIN)/.installed
	$(BIN)/python -m search retrain --config "$$CONFIG" $$ARGS

## make report STUDY=name [ARGS="--storage URL"]: studies/<name>/report.md and report.csv
report: $(BIN)/.installed
	$(BIN)/python -m search report --study "$$STUDY" $$ARGS

# --- TensorFlow Lite (search/tflite.py) ---
.PHONY: export-tflite

## make export-tflite [CONFIG=studies/<name>/best.yaml | STUDY=name] [ARGS="--run run-2 --seed 4 --runs 200"]
##   the retrained model as float32 and int8 .tflite, agreement with Keras on the test split, latency at batch 1;
##   written to studies/<name>/retrain/run-N/seed-S/tflite/
export-tflite: $(BIN)/.installed
	$(BIN)/python -m search export-tflite --config "$$CONFIG" $$ARGS

# --- benchmark of the feature cache (search/bench.py) ---
DATA    ?= builtin:shapes
WEIGHTS ?= builtin
.PHONY: bench

## make bench [DATA=folder] [WEIGHTS=file.h5] [ARGS="--size 128 --epochs 10" | ARGS="--memory --trials 20"]
##   plain vs feature-cached trials side by side (or memory per trial); tables in studies/bench/
bench: $(BIN)/.installed
	$(BIN)/python -m search bench --data "$$DATA" --weights "$$WEIGHTS" $$ARGS

# --- several workers on one study (search/workers.py, search/storage.py) ---
N       ?= 2
STORAGE ?=
.PHONY: workers worker copy-study
# --name only when STUDY is given (else the space's study.name); --storage only when STORAGE is given
STUDY_ARG   = $(if $(filter command line environment,$(origin STUDY)),--name "$$STUDY")
STORAGE_ARG = $(if $(STORAGE),--storage "$$STORAGE")

## make workers N=4 [STUDY=name] [SPACE=spaces/x.yaml] STORAGE=journal:///studies/x.log|postgresql://... [ARGS="--n-trials 40"]
##   N worker processes, one study; the space's n_trials (or --n-trials) is the total for all of them
workers: $(BIN)/.installed
	$(BIN)/python -m search workers -n "$$N" --space "$$SPACE" $(STUDY_ARG) $(STORAGE_ARG) $$ARGS

## make worker [SPACE=spaces/x.yaml] STORAGE=postgresql://... [ARGS="--n-trials 10 --worker-index 5"]
##   one more worker on the study (another machine): takes queued trials until none is left
worker: $(BIN)/.installed
	$(BIN)/python -m search worker --space "$$SPACE" $(STUDY_ARG) $(STORAGE_ARG) $$ARGS

## make copy-study FROM=sqlite:///studies/x.db TO=postgresql://user@host/db STUDY=x
copy-study: $(BIN)/.installed
	$(BIN)/python -m search copy-study --from "$$FROM" --to "$$TO" --study "$$STUDY" $$ARGS

# --- the real-data proof (search/flowers_bench.py): about an hour on 2 CPU cores ---
BUDGET ?= 2400
.PHONY: bench-flowers
## make bench-flowers DATA=../shared/data/flowers WEIGHTS=../shared/weights [BUDGET=2400] [ARGS="--seeds 3 --folds auto --fit all"]
bench-flowers: $(BIN)/.installed
	$(BIN)/python -m search bench-flowers --data "$$DATA" --weights "$$WEIGHTS" --budget "$$BUDGET" $$ARGS

# --- choose before you train (search/rank.py, search/prerank.py) ---
.PHONY: rank rank-check
# --set only for what the user gave: the space's own dataset and weights otherwise
DATA_SET    = $(if $(filter command line environment,$(origin DATA)),--set "dataset=$$DATA")
WEIGHTS_SET = $(if $(filter command line environment,$(origin WEIGHTS)),--set "weights=$$WEIGHTS")

## make rank [SPACE=spaces/x.yaml] [DATA=folder] [WEIGHTS=folder]: LogME of every backbone of the space, in seconds
rank: $(BIN)/.installed
	$(BIN)/python -m search rank --space "$$SPACE" $(DATA_SET) $(WEIGHTS_SET) $$ARGS

## make rank-check STUDY=name: Kendall's tau between LogME and the study's fine-tuned validation accuracies
rank-check: $(BIN)/.installed
	$(BIN)/python -m search rank-check --study "$$STUDY" $$ARGS

# --- one split against K folds (search/selection_bench.py): does the study pick the truly better config? ---
.PHONY: bench-peer
## make bench-peer DATA=folder WEIGHTS=folder [BUDGET=600] [ARGS="--seeds 3 --name NAME"]: against KerasTuner, studies/bench/<name>.md
bench-peer: $(BIN)/.installed
	$(BIN)/python -m search bench-peer --data "$$DATA" --weights "$$WEIGHTS" $(if $(filter command line environment,$(origin BUDGET)),--budget "$$BUDGET") $$ARGS

.PHONY: bench-suite
## make bench-suite DATA=../shared/data/flowers WEIGHTS=../shared/weights [ARGS="--sets proxy,shapes --seeds 3 --arms staged,recipes --budget 300"]
##   the default study vs the seeds' recipes (the bar), the previous strategy and KerasTuner; resumable pieces
##   under studies/bench/suite/, the table in studies/bench/suite.md
bench-suite: $(BIN)/.installed
	$(BIN)/python -m search bench-suite $(if $(filter command line environment,$(origin DATA)),--data "$$DATA") $(if $(filter command line environment,$(origin WEIGHTS)),--weights "$$WEIGHTS") $$ARGS

.PHONY: bench-portfolio
## make bench-portfolio DATA=folder WEIGHTS=folder [ARGS="--stage measure|compare --seeds 3 --budget 240"]:
##   candidates across data sets -> studies/bench/portfolio.yaml (paste into spaces/portfolio.yaml); warm vs cold
bench-portfolio: $(BIN)/.installed
	$(BIN)/python -m search bench-portfolio --data "$$DATA" --weights "$$WEIGHTS" $$ARGS

.PHONY: bench-cv
## make bench-cv [SPACE=spaces/flowers.yaml] [DATA=folder] [WEIGHTS=folder] [ARGS="--budget 300 --study-seeds 3 --top 10"]
bench-cv: $(BIN)/.installed
	$(BIN)/python -m search bench-cv $(if $(filter command line environment,$(origin SPACE)),--space "$$SPACE") $(if $(filter command line environment,$(origin DATA)),--data "$$DATA") $(if $(filter command line environment,$(origin WEIGHTS)),--weights "$$WEIGHTS") $$ARGS
