"""The typed run config: everything one training job needs, and its hash (recorded with
the run so that a changed recipe is visible on the board). Students' configs are built by
:func:`kdbench.hparams.student_config` (it resolves the method's hyperparameters); a
teacher's needs nothing but the profile. Leaf layer.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

from kdbench.config.loading import recipe_for, teacher_threads

#: recipe keys added after config hashes were first recorded, with the value that
#: reproduces the older runs exactly: a recipe holding that value hashes as if the key did
#: not exist (every earlier hash, and the committed selections' recorded hashes, stay
#: valid); any other value enters the hash. ``test_every_epoch: false`` scores nothing
#: extra; ``true`` changes what metrics.json holds, so such a run is another config.
HASH_NEUTRAL_RECIPE: Dict[str, Any] = {"test_every_epoch": False}


def hashed_recipe(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """The recipe as the config hash sees it: :data:`HASH_NEUTRAL_RECIPE` keys at their
    neutral value left out."""
    return {k: v for k, v in recipe.items() if not (k in HASH_NEUTRAL_RECIPE and v == HASH_NEUTRAL_RECIPE[k]
                                                     and type(v) is type(HASH_NEUTRAL_RECIPE[k]))}

@dataclass
class RunConfig:
    """Everything one training job needs. ``kind`` is "teacher" or "student"."""

    kind: str
    dataset: str
    dataset_options: Dict[str, Any]
    arch: str
    method: str
    seed: int
    recipe: Dict[str, Any]
    hparams: Dict[str, Any] = field(default_factory=dict)
    teacher: Optional[str] = None
    teacher_seed: Optional[int] = None
    device: str = "auto"
    threads: int = 1
    precision: str = "fp32"
    channels_last: bool = False
    #: opt-in torch.compile of the training step's loss (CUDA only; CPU runs stay eager)
    compile: bool = False
    #: where ``hparams`` came from: "paper" (params/methods defaults), "defaults" (the
    #: class's ``default_hparams``: a plugin without a params file), "tuned (N trials,
    #: val)" (a selection on the validation split, kdbench.tuning) or, for a tuning
    #: trial, "trial K/N"
    hparams_source: str = "paper"
    #: the tuning trial this run is (None: a benchmark run). A trial never reads the test split.
    trial: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def config_hash(self) -> str:
        """Hash of everything that determines the numbers (not where they are written)."""
        # threads count: CPU kernels (conv backward, reductions) split their sums by thread,
        # so another thread count gives other low bits, i.e. other numbers
        # (the provenance of a run - device kind, torch build, world size - is recorded in
        # metrics.json, never hashed: kdbench.engine.runtime.provenance)
        payload = {k: v for k, v in self.to_dict().items() if k not in ("device", "compile")}
        payload["recipe"] = hashed_recipe(payload["recipe"])
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def lr(self) -> float:
        return float((self.recipe.get("arch_lr") or {}).get(self.arch, self.recipe["lr"]))


def teacher_config(profile: dict, dataset: str, arch: str, seed: int) -> RunConfig:
    return RunConfig(
        kind="teacher", dataset=dataset, dataset_options=profile["datasets"][dataset], arch=arch,
        method="vanilla", seed=seed, recipe=dict(recipe_for(profile, "teacher_train", dataset), student_shots=None),
        hparams={}, device=profile["device"], threads=teacher_threads(profile),
        precision=profile["precision"], channels_last=profile["channels_last"], compile=profile["compile"])
