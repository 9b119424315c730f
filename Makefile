# Two entry points (see README.md): `make run` and `make test`. Both create .venv/ first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CORES  ?= all
STAMP  := $(VENV)/.kdbench-installed

.PHONY: venv data run smoke tune tune-method test clean-results

venv: $(STAMP)

# torch/torchvision are installed first and explicitly: these exact releases are the
# pinned ones (pyproject.toml), installed before the rest so pip never resolves another.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# the default profile's images: Fashion-MNIST's official files, from Debian's package
# dataset-fashion-mnist when they are missing and this machine allows it (root, apt-get);
# otherwise one line says what to run (scripts/ensure_data.py)
data: venv
	$(PY) scripts/ensure_data.py

run: data
	$(VENV)/bin/snakemake --cores $(CORES)

smoke: venv
	$(VENV)/bin/snakemake --cores $(CORES) --configfile params/smoke.yaml

# the hyperparameter selection params/default.yaml uses (params/tune-default.yaml; docs/hyperparameters.md)
tune: data
	$(VENV)/bin/snakemake --cores $(CORES) tune --configfile params/tune-default.yaml
	cp results/tuning/tuned.yaml params/tuned/default.yaml

# ONE method's selection (METHOD=mine) on the default board's cells, merged into
# params/tuned/default.yaml; the other methods are not re-tuned, their entries not touched
PARAMS ?= params/default.yaml
tune-method: data
	@test -n "$(METHOD)" || { echo "make tune-method METHOD=<name> [PARAMS=params/default.yaml]"; exit 2; }
	$(VENV)/bin/kdbench tune-method --params $(PARAMS) --method $(METHOD) --cores $(CORES)

test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

clean-results:
	rm -rf results/
