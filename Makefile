# `make test` and `make demo` create or update the virtualenv (.venv/) themselves when it is missing or
# older than pyproject.toml, so nothing else has to be typed first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
# Optional extras `make test` installs (pyproject.toml): add one here when its tests need it.
EXTRAS := dev,server,ray,search,docs
# MLflow's own default store depends on the working directory: name it explicitly.
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export MLFLOW_DISABLE_TELEMETRY ?= true
DEMO_DATA_DIR ?= $(DATA_DIR)

.PHONY: venv test mutants demo lint docs clean-stores benchmarks

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The suite must leave the checkout exactly as it found it (tests write only to their temporary directories).
# One pytest-xdist worker per core, at most 4 (one torch thread each); a module's tests stay on one worker.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; [ $$n -lt 2 ] && n=2; echo $$n)
test: $(STAMP)
	scripts/unchanged_tree.sh $(BIN)/python -m pytest -q -ra --durations=10 -p no:cacheprovider \
		-n $(TEST_WORKERS) --dist loadfile

# Plant one bug at a time (resume, the ceiling search, selection on validation, byte rules, the trial key) in a copy
# of the checkout and check that the tests named for it fail (scripts/mutants.py).
mutants: $(STAMP)
	$(BIN)/python scripts/mutants.py

# The docs site (mkdocs.yml, docs/) into site/ (git-ignored); --strict: any warning (a broken link or anchor, a page
# missing from the nav, a method without its section) fails the build. `make test` runs the same build (tests/test_docs.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check prune_tracker entrypoints tests benchmarks

demo: $(STAMP)
	DATA_DIR="$(DEMO_DATA_DIR)" $(BIN)/python -m prune_tracker.studies.demo

clean-stores:
	rm -rf mlflow.db mlruns mlartifacts
