#!/bin/sh
# Run by `snakemake --use-conda` inside the new environment.yml environment (from the
# repository root, where Snakemake runs), or by hand after `conda env create`: installs
# kdbench itself from this checkout (its dependencies are the environment's pins).
set -eu
python -m pip install --no-deps -e .
