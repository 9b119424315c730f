"""Seeding, determinism, devices and threads."""
from __future__ import annotations

import os
import platform
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


# ------------------------------------------------------------------ provenance
def _cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform's answer elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cpu_capability() -> str:
    """The ATen CPU capability the kernels dispatch to (e.g. AVX2, AVX512): a CPU run's
    low bits depend on it."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return str(get()) if get is not None else "unknown"


def device_kind(device: torch.device, n_devices: int = 1) -> dict:
    """What a run's numbers were computed on: ``device_kind`` (one line) with the CPU model
    and ATen capability, or the GPU name, count and compute capability."""
    out = {"cpu_model": _cpu_model(), "cpu_capability": _cpu_capability(),
           "gpu_name": None, "gpu_count": None, "gpu_capability": None}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        out.update(gpu_name=torch.cuda.get_device_name(device), gpu_count=int(n_devices),
                   gpu_capability=f"{major}.{minor}")
        out["device_kind"] = f"GPU {out['gpu_name']} x{n_devices} (compute capability {major}.{minor})"
    else:
        out["device_kind"] = f"CPU {out['cpu_model']} (ATen {out['cpu_capability']})"
    return out


def torch_build() -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "cudnn_version": None if cudnn is None else str(cudnn)}


def provenance(cfg, device: torch.device, world_size: int = 1) -> dict:
    """Where a run's numbers were computed (recorded in metrics.json, never in the config
    hash): the device kind, the torch / CUDA / cuDNN build, the world size, the global
    batch size (the recipe's: split over the processes), and the precision, ``compile`` and
    ``channels_last`` as they took effect (each applies on CUDA only; a CPU run is fp32,
    eager, contiguous whatever the profile asks)."""
    cuda = device.type == "cuda"
    return {**device_kind(device, world_size if cuda else 1), **torch_build(),
            "world_size": int(world_size), "global_batch_size": int(cfg.recipe["batch_size"]),
            "precision": cfg.precision if cuda else "fp32", "compile": bool(cfg.compile and cuda),
            "channels_last": bool(cfg.channels_last and cuda)}
