# cotaforge: `make demo` builds the demo dataset; `make test` runs the test suite.
# Both create (or reuse) the virtual environment in .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test bench schemas clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Core install: enough to run the pipeline (no torch).
$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Test install: torch's CPU build first (its pin takes the local wheel), then the train and dev extras.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,dev]'
	# label-studio-sdk's task and annotation models check the Label Studio export. Its image and NLP dependencies
	# (opencv, nltk) would downgrade numpy, so it goes in without them, with the few its models import.
	$(BIN)/pip install --quiet --no-deps 'label-studio-sdk==2.1.2'
	$(BIN)/pip install --quiet appdirs 'jsf>=0.11.2,<0.12' 'pyjwt>=2.13,<2.14' 'lxml>=6.1' 'ujson>=5.8' 'xmljson==0.2.1'
	# System packages the review tests use: a headless browser and a PostgreSQL server they start themselves.
	# Without root (no apt-get), those tests skip themselves and say why.
	(command -v chromium >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1) || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium postgresql) || \
		echo "warning: could not install chromium and postgresql; the browser and PostgreSQL tests will skip"
	touch $(VENV)/.core-installed $@

demo: $(VENV)/.core-installed
	$(BIN)/cotaforge run configs/demo.yaml

# ms-swift's environment, where the export test loads the swift files with ms-swift's own loader. ms-swift pins
# transformers < 5.20, so it gets a virtualenv of its own; a .pth file lets it see .venv's packages (torch above
# all), and pip adds only what ms-swift needs on top. If it cannot be built, that one test skips and says why.
SWIFT_VENV := .venv-swift
$(SWIFT_VENV)/.installed: $(VENV)/.dev-installed
	rm -rf $(SWIFT_VENV) && $(PYTHON) -m venv $(SWIFT_VENV)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > \
		"$$($(SWIFT_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/cotaforge-venv.pth"
	if $(SWIFT_VENV)/bin/pip install --quiet 'ms-swift==4.6.0' 'transformers<5.20'; then touch $@; else \
		rm -rf $(SWIFT_VENV); echo "warning: could not install ms-swift; the ms-swift export test will skip"; fi

test: $(VENV)/.dev-installed $(SWIFT_VENV)/.installed
	$(BIN)/python -m pytest

bench: $(VENV)/.core-installed
	$(BIN)/python benchmarks/bench_pipeline.py

schemas: $(VENV)/.core-installed
	$(BIN)/cotaforge schemas export

clean:
	rm -rf output/runs output/datasets
