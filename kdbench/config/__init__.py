"""The leaf layer of kdbench: what a profile, a run and the results folder look like as
data. It imports nothing of kdbench above it (only :mod:`kdbench.errors`), so every other
module may import it (docs/architecture.md).

- :mod:`kdbench.config.loading`: YAML (bounded, ``extends:``), profile defaults and
  structure, recipes, ``--set`` overrides;
- :mod:`kdbench.config.method_files`: params/methods/<method>.yaml;
- :mod:`kdbench.config.run`: :class:`RunConfig` (one job) and its hash;
- :mod:`kdbench.config.layout`: every path under ``results_dir``.

Checking a profile's names and building students' run configs need the registries:
:mod:`kdbench.profile` and :mod:`kdbench.hparams`.
"""
from kdbench.config.layout import run_dir as run_paths  # the historical name
from kdbench.config.loading import (PACKAGE_DIR, PROFILE_DEFAULTS, RECIPE_DEFAULTS,
                                    REFERENCE_METHODS, SCHEMA_PATH, ParamsError, YamlLimitError,
                                    YamlLoader, apply_overrides, check_finite, check_results_dir,
                                    load_yaml, pair_methods, project_root, recipe_for, teacher_seed_of,
                                    teacher_threads,
                                    validate_structure, with_defaults, yaml_load)
from kdbench.config.method_files import (METHOD_FILE_KEYS, check_hparam_types, load_method_spec,
                                         method_file)
from kdbench.config.run import RunConfig, teacher_config

__all__ = ["PACKAGE_DIR", "PROFILE_DEFAULTS", "RECIPE_DEFAULTS", "REFERENCE_METHODS", "SCHEMA_PATH", "ParamsError",
           "YamlLimitError", "YamlLoader", "apply_overrides", "check_finite", "check_results_dir", "load_yaml",
           "pair_methods", "project_root", "recipe_for", "teacher_threads", "validate_structure", "with_defaults",
           "yaml_load", "METHOD_FILE_KEYS", "check_hparam_types", "load_method_spec", "method_file", "RunConfig",
           "teacher_config", "run_paths", "teacher_seed_of"]
