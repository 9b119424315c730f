"""Params profiles: validation errors name the bad key/value and the valid choices."""
from __future__ import annotations

import copy

import pytest

from kdbench.config import ParamsError, apply_overrides, teacher_config, with_defaults
from kdbench.hparams import method_hparams, student_config
from kdbench.profile import validate_profile
from kdbench.errors import KDBenchError, UnknownChoiceError
from tests.tiny import TINY_PROFILE


def _bad(**changes):
    prof = copy.deepcopy(TINY_PROFILE)
    prof.update(changes)
    return prof


def test_tiny_profile_is_valid_and_gets_defaults():
    full = validate_profile(copy.deepcopy(TINY_PROFILE))
    assert full["student_train"]["momentum"] == 0.9 and full["evaluation"]["n_samples"] == 256


@pytest.mark.parametrize("changes,pattern", [
    ({"methods": ["vanilla", "kdd"]}, r"unknown method 'kdd' \(did you mean 'kd'\?\); valid choices: .*dkd.*vanilla"),
    ({"pairs": [{"teacher": "resnet56", "student": "resnet21"}]}, r"unknown arch 'resnet21' \(did you mean 'resnet20'\?\)"),
    ({"datasets": {"shapez": {}}}, r"unknown dataset 'shapez' \(did you mean 'shapes'\?\); valid choices: .*cifar10"),
    ({"datasets": {"shapes": {"n_trian": 5}}}, r"unknown option of dataset 'shapes' 'n_trian' \(did you mean 'n_train'\?\)"),
    ({"seeds": "0"}, r"bad value at seeds: '0' is not of type 'array'"),
    ({"threads": 0}, r"bad value at threads"),
    ({"method_params": {"kd": {"temprature": 2}}}, r"'temprature' \(did you mean 'temperature'\?\)"),
])
def test_bad_values_are_named(changes, pattern):
    with pytest.raises(KDBenchError, match=pattern):
        validate_profile(_bad(**changes))


def test_misspelt_top_level_key():
    prof = copy.deepcopy(TINY_PROFILE)
    prof["metods"] = prof.pop("methods")
    with pytest.raises(KDBenchError) as err:
        validate_profile(prof)
    msg = str(err.value)
    assert "metods" in msg and "did you mean 'methods'" in msg and "student_train" in msg


def test_misspelt_recipe_key():
    prof = copy.deepcopy(TINY_PROFILE)
    prof["student_train"] = {"epochs": 2, "learning_rate": 0.1}
    with pytest.raises(UnknownChoiceError, match=r"student_train.*'learning_rate'.*valid choices: .*lr"):
        validate_profile(prof)


def test_method_hparams_merge_pair_overrides_and_profile():
    base = method_hparams("kd", "resnet56", "resnet20")
    assert base == {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0}
    over = method_hparams("kd", "resnet56", "resnet20", {"kd": {"temperature": 2.0}})
    assert over["temperature"] == 2.0


def test_overrides_and_config_hash():
    prof = with_defaults(apply_overrides(copy.deepcopy(TINY_PROFILE), ["student_train.epochs=7", "student_train.arch_lr={resnet8: 0.01}"]))
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "kd", 1)
    assert cfg.recipe["epochs"] == 7 and cfg.lr == 0.01 and cfg.teacher == "resnet14" and cfg.teacher_seed == 0
    same = student_config(prof, "shapes", "resnet14", "resnet8", "kd", 1)
    assert cfg.config_hash == same.config_hash
    other = student_config(prof, "shapes", "resnet14", "resnet8", "kd", 2)
    assert other.config_hash != cfg.config_hash
    van = student_config(prof, "shapes", "resnet14", "resnet8", "vanilla", 1)
    assert van.teacher is None and van.hparams == {}
    t = teacher_config(prof, "shapes", "resnet14", 0)
    assert t.kind == "teacher" and t.method == "vanilla" and t.recipe["student_shots"] is None
    with pytest.raises(ParamsError, match="key.sub=value"):
        apply_overrides({}, ["nonsense"])


def test_teacher_seed_null_follows_student_seed():
    prof = with_defaults(_bad(teacher_seed=None))
    assert student_config(prof, "shapes", "resnet14", "resnet8", "kd", 2).teacher_seed == 2


# ----------------------------------------------------------------------------- exclude_methods
EXCLUDING_PAIRS = [{"teacher": "resnet14", "student": "resnet8"},
                   {"teacher": "wrn_16_2", "student": "mobilenetv2", "exclude_methods": ["kdsvd", "fsp"]}]


def test_pair_methods_drop_the_pairs_exclusions_in_profile_order():
    from kdbench.board.records import expected_runs
    from kdbench.config import pair_methods

    full = validate_profile(_bad(pairs=copy.deepcopy(EXCLUDING_PAIRS), methods=["vanilla", "kd", "fsp", "at", "kdsvd"]))
    assert pair_methods(full, "resnet14", "resnet8") == ["vanilla", "kd", "fsp", "at", "kdsvd"]
    assert pair_methods(full, "wrn_16_2", "mobilenetv2") == ["vanilla", "kd", "at"]
    runs = {(r["student"], r["method"]) for r in expected_runs(full)}
    assert ("mobilenetv2", "kdsvd") not in runs and ("resnet8", "kdsvd") in runs and len(runs) == 8
    with pytest.raises(UnknownChoiceError, match=r"pair of this profile 'resnet14->vgg8'.*resnet14->resnet8"):
        pair_methods(full, "resnet14", "vgg8")


def test_a_method_a_pair_cannot_run_names_exclude_methods():
    """Without the exclusion, validation rejects kdsvd on wrn_16_2 -> mobilenetv2 (stage channel
    counts differ) and says how to leave it out."""
    pairs = copy.deepcopy(EXCLUDING_PAIRS)
    del pairs[1]["exclude_methods"]
    with pytest.raises(KDBenchError, match=r"method 'kdsvd' cannot run on pair wrn_16_2->mobilenetv2: .*exclude_methods"):
        validate_profile(_bad(pairs=pairs, methods=["vanilla", "kd", "kdsvd"]))


@pytest.mark.parametrize("excluded,pattern", [
    (["kdvsd"], r"unknown method in exclude_methods of pair wrn_16_2->mobilenetv2 'kdvsd' "
                r"\(did you mean 'kdsvd'\?\); valid choices: .*crd"),
    (["kd"], r"exclude_methods of pair wrn_16_2->mobilenetv2: 'kd' cannot be excluded"),
    (["vanilla"], r"'vanilla' cannot be excluded"),
    ("kdsvd", r"bad value at pairs.*exclude_methods.*'kdsvd' is not of type 'array'"),
])
def test_bad_exclusions_are_named(excluded, pattern):
    """A typo is caught (against every registered method: a profile listing fewer methods may
    keep its pairs' exclusions, e.g. `at` below), and so is excluding a reference."""
    pairs = copy.deepcopy(EXCLUDING_PAIRS)
    pairs[1]["exclude_methods"] = excluded
    with pytest.raises(KDBenchError, match=pattern):
        validate_profile(_bad(pairs=pairs, methods=["vanilla", "kd", "kdsvd"]))
    pairs[1]["exclude_methods"] = ["kdsvd", "at"]  # at: registered, not in this profile's list: fine
    validate_profile(_bad(pairs=pairs, methods=["vanilla", "kd", "kdsvd"]))


def test_cifar100_profile_has_every_method():
    """params/cifar100.yaml lists every shipped method; the pairs exclude only what they
    cannot run (and validation passes: every other combination can)."""
    from kdbench.config import pair_methods, project_root
    from kdbench.profile import load_profile
    from kdbench.methods import iter_method_names

    full = load_profile(project_root() / "params" / "cifar100.yaml")
    # the shipped methods: one params file each (other tests register throwaway methods)
    shipped = sorted(p.stem for p in (project_root() / "params" / "methods").glob("*.yaml"))
    assert len(shipped) == 31 and set(shipped) <= set(iter_method_names())
    assert sorted(full["methods"]) == shipped
    excluded = {f"{p['teacher']}->{p['student']}": p.get("exclude_methods", []) for p in full["pairs"]}
    assert excluded["resnet32x4->shufflenetv2"] == ["kdsvd", "fsp", "ab"]
    assert excluded["resnet56->resnet20"] == [] and len(pair_methods(full, "resnet56", "resnet20")) == 31


def test_default_long_and_embedded_all_share_their_base_profiles_runs():
    """The same config hash for the runs two profiles have in common: default-long's seeds
    0-2 are the default's runs, and embedded-all's resnet32 -> resnet8 runs of the embedded
    profile's methods are the embedded profile's (a results folder holding one board does
    not train them again)."""
    from kdbench.config import project_root
    from kdbench.profile import load_profile

    root = project_root() / "params"
    default, long, embedded, every = (load_profile(root / f"{n}.yaml")
                                      for n in ("default", "default-long", "embedded", "embedded-all"))
    assert set(default["seeds"]) < set(long["seeds"]) and long["methods"] == default["methods"]
    for base, other in ((default, long), (embedded, every)):
        for dataset in base["datasets"]:  # embedded's: shapes, digits (every also has fashion_mnist)
            for method in base["methods"]:
                for seed in set(base["seeds"]) & set(other["seeds"]):
                    key = (dataset, "resnet32", "resnet8", method, seed)
                    assert student_config(other, *key).config_hash == student_config(base, *key).config_hash, key
    assert set(embedded["datasets"]) == {"shapes", "digits"}
    assert set(every["datasets"]) == {"shapes", "digits", "fashion_mnist"}
    for dataset in every["datasets"]:
        for method in ("fitnet", "crd", "cid"):
            # tuned on this very recipe: no "selected for another recipe" in the source
            assert student_config(every, dataset, "resnet32", "resnet8", method, 0).hparams_source == \
                "tuned (4 trials, val)", (dataset, method)
    # every method but vanilla is tuned in embedded-all on every dataset, and the methods
    # tune-embedded also tunes carry the embedded profile's selections on its datasets (the
    # same trial jobs)
    from kdbench.config import load_yaml

    shared = {m for m in load_yaml(root / "tune-embedded.yaml")["methods"] if m != "vanilla"}
    entries = lambda name: {(e["dataset"], e["teacher"], e["student"], e["method"]): e
                            for e in load_yaml(root / "tuned" / name)["entries"]}
    mine, embedded_sel = entries("embedded-all.yaml"), entries("embedded.yaml")
    for dataset in every["datasets"]:
        assert {k[3] for k in mine if k[0] == dataset} == set(every["methods"]) - {"vanilla"}, dataset
    for k, e in mine.items():
        if k[3] in shared and k[0] in embedded["datasets"]:
            assert e == embedded_sel[k], k
    # the default's selection covers every method of the default but vanilla, on its cells
    sel = entries("default.yaml")
    assert {k[3] for k in sel} == set(default["methods"]) - {"vanilla"}
    assert {k[0] for k in sel} == {"fashion_mnist"}


def test_every_dataset_declares_every_option_type_and_range():
    """Issue 21: each registered dataset (a new one too) declares, beside its registration,
    a type and range for every option of its builder (kdbench.data.base.OPTION_TYPES),
    and each builder's default value passes its own declaration."""
    import inspect

    import jsonschema

    from kdbench.data import DATASETS, list_datasets
    from kdbench.data.base import OPTION_TYPES

    for name in list_datasets():
        assert name in OPTION_TYPES, f"dataset {name!r} declares no OPTION_TYPES[{name!r}] beside its registration"
        params = inspect.signature(DATASETS.get(name)).parameters
        assert set(OPTION_TYPES[name]) == set(params), f"{name}: declared {sorted(OPTION_TYPES[name])}, takes {sorted(params)}"
        for key, p in params.items():
            jsonschema.Draft202012Validator.check_schema(OPTION_TYPES[name][key])
            if p.default is not None:
                assert jsonschema.Draft202012Validator(OPTION_TYPES[name][key]).is_valid(p.default), (name, key)
            assert any(k in OPTION_TYPES[name][key] for k in ("type", "enum")), (name, key)


def test_test_every_epoch_off_keeps_every_config_hash_and_on_changes_it():
    """The recipe key ``test_every_epoch`` (added in issue 24) hashes as if absent at its
    default (config.run.HASH_NEUTRAL_RECIPE): runs trained before it, and the committed
    tuned selections, keep their hashes. The expected values were computed at commit
    41f104e (before the key existed) with
    ``teacher_config(with_defaults(TINY_PROFILE), "shapes", "resnet14", 0).config_hash``,
    ``student_config(..., "shapes", "resnet14", "resnet8", "kd", 1)`` and the same for
    ``load_profile(root / "smoke.yaml")`` (kd, seed 0)."""
    from kdbench.config import project_root
    from kdbench.profile import load_profile

    root = project_root() / "params"
    prof = with_defaults(copy.deepcopy(TINY_PROFILE))
    assert prof["student_train"]["test_every_epoch"] is False and prof["teacher_train"]["test_every_epoch"] is False
    assert teacher_config(prof, "shapes", "resnet14", 0).config_hash == "33a04a056551"
    assert student_config(prof, "shapes", "resnet14", "resnet8", "kd", 1).config_hash == "5f0a0cda81ef"
    smoke = load_profile(root / "smoke.yaml")
    assert student_config(smoke, "shapes", "resnet14", "resnet8", "kd", 0).config_hash == "da8250d266a4"
    on = with_defaults(apply_overrides(copy.deepcopy(TINY_PROFILE), ["student_train.test_every_epoch=true"]))
    assert student_config(on, "shapes", "resnet14", "resnet8", "kd", 1).config_hash != "5f0a0cda81ef"
    assert teacher_config(on, "shapes", "resnet14", 0).config_hash == "33a04a056551"   # the teacher's recipe is off
    for name in ("cifar100", "cifar10", "imagenet"):   # the paper-scale profiles turn it on, the CPU ones do not
        assert load_profile(root / f"{name}.yaml")["student_train"]["test_every_epoch"] is True, name
    assert load_profile(root / "default.yaml")["student_train"]["test_every_epoch"] is False


def test_a_method_without_a_params_file_is_labelled_defaults_not_paper(monkeypatch):
    """Issue 24: a plugin (no params/methods/<m>.yaml, the class's default_hparams) runs
    with hparams_source "defaults"; every shipped method has its params file and keeps
    "paper" (so its config hash, which includes the source, is unchanged)."""
    import torch.nn.functional as F

    from kdbench.hparams import untuned_source
    from kdbench.methods import METHODS, Distiller, iter_method_names

    class Plugin(Distiller):
        needs_teacher = False
        hparam_names = ("smoothing",)
        default_hparams = {"smoothing": 0.1}

        def loss(self, batch):
            return {"ce": F.cross_entropy(self.student(batch["image"]), batch["label"])}

    monkeypatch.setitem(METHODS._entries, "_plugin_no_file", Plugin)
    prof = with_defaults(copy.deepcopy(TINY_PROFILE))
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "_plugin_no_file", 0)
    assert cfg.hparams == {"smoothing": 0.1} and cfg.hparams_source == "defaults"
    assert student_config(prof, "shapes", "resnet14", "resnet8", "kd", 0).hparams_source == "paper"
    shipped = [m for m in iter_method_names() if not m.startswith("_")]
    assert len(shipped) > 25 and {m: untuned_source(m) for m in shipped} == dict.fromkeys(shipped, "paper")


def test_an_extending_profile_gives_its_own_description(tmp_path):
    """Issue 24: `extends:` does not hand the parent's description to the child as is: an
    extending profile without one gets the parent's marked as extended (a file written
    before the rule keeps loading); with one, it is its own; every shipped extending
    profile of params/ has its own."""
    import yaml

    from kdbench.config import load_yaml
    from kdbench.config.loading import project_root

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"description": "the base board", "seeds": [0]}))
    (tmp_path / "copy.yaml").write_text("extends: base.yaml\nseeds: [0, 1]\n")
    assert load_yaml(tmp_path / "copy.yaml") == {
        "description": "the base board — extended by copy.yaml (its own keys: seeds)", "seeds": [0, 1]}
    (tmp_path / "copy.yaml").write_text("extends: base.yaml\ndescription: base with 2 seeds\nseeds: [0, 1]\n")
    assert load_yaml(tmp_path / "copy.yaml") == {"description": "base with 2 seeds", "seeds": [0, 1]}
    extending = [p for p in sorted((project_root() / "params").glob("*.yaml")) if "extends:" in p.read_text()]
    assert len(extending) >= 5
    for path in extending:
        parent = yaml.safe_load(path.read_text())["extends"]
        desc = load_yaml(path)["description"]
        assert desc != load_yaml(path.parent / parent).get("description"), path


def test_a_job_checks_only_its_own_methods():
    """A training or evaluation job validates the profile's structure and every name, but
    only its own methods' hyperparameters and pairs (the workflow checked them all before
    any job); the whole check still refuses another method's bad value."""
    prof = copy.deepcopy(TINY_PROFILE)
    prof["methods"] = ["vanilla", "kd", "dkd"]
    prof["method_params"] = {"dkd": {"beta": 1.0}}
    with pytest.raises(UnknownChoiceError, match="'beta'"):
        validate_profile(copy.deepcopy(prof))
    with pytest.raises(UnknownChoiceError, match="'beta'"):
        validate_profile(copy.deepcopy(prof), methods=["dkd"])
    assert validate_profile(copy.deepcopy(prof), methods=["kd"])["methods"] == ["vanilla", "kd", "dkd"]
    assert validate_profile(copy.deepcopy(prof), methods=[])["methods"] == ["vanilla", "kd", "dkd"]
    bad_name = dict(copy.deepcopy(prof), methods=["vanilla", "kdd"])
    with pytest.raises(UnknownChoiceError, match="'kdd'"):
        validate_profile(bad_name, methods=["vanilla"])  # names are always checked
