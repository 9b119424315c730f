"""Seeding, determinism, devices and threads."""
from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_deterministic() -> None:
    """Same params + seed -> bit-identical numbers on CPU (and as close as CUDA allows).

    The flag is set through torch's internal setter: the public
    ``torch.use_deterministic_algorithms`` also imports ``torch._inductor.config`` (and with
    it ``torch._dynamo``, about 1.9 s per process here) only to set the same flag for
    ``torch.compile``, which kdbench does not use. The public call is made instead when
    inductor is already loaded or when this torch lacks the setter."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here (use device: auto or cpu)")
    return dev


def set_threads(n: int) -> None:
    """Intra-op threads. Snakemake sets OMP_NUM_THREADS to the rule's threads; an explicit
    value wins."""
    n = int(os.environ.get("KDBENCH_THREADS", n))
    torch.set_num_threads(max(1, n))


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached), "kind": kind}


def set_rng_state(state: dict) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_tuplify(ast.literal_eval(state["python"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x
