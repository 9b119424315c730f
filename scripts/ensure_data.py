"""Make sure the default profile's data is on this machine: Fashion-MNIST's official files
(``make run`` and ``.ci/run`` call this before any job starts).

The files are looked for where ``kdbench`` looks (the profile's ``data_root``,
``$KDBENCH_DATA/fashion-mnist``, Debian's ``/usr/share/datasets/fashion-mnist``). Missing,
they are installed from Debian's package ``dataset-fashion-mnist`` when this machine allows
it (root and apt-get); otherwise one line says what to run. Nothing is downloaded from
anywhere else.

    python scripts/ensure_data.py [--params params/default.yaml]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from kdbench.config import load_yaml
from kdbench.data.fashion_mnist import GET_IT, find_files
from kdbench.errors import DatasetNotFoundError

PACKAGE = "dataset-fashion-mnist"


def data_root(params: str):
    """The fashion_mnist ``data_root`` of the profile (None: the default search)."""
    options = (load_yaml(params).get("datasets") or {}).get("fashion_mnist")
    return None if not isinstance(options, dict) else options.get("data_root")


def install() -> bool:
    """apt-get install the package (root + apt-get only); True when it ran cleanly."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"[ensure_data] installing {PACKAGE} (apt-get)", file=sys.stderr, flush=True)
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--reinstall", PACKAGE]):
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            return False
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/default.yaml")
    args = ap.parse_args(argv)
    root = data_root(args.params)
    if "fashion_mnist" not in (load_yaml(args.params).get("datasets") or {}):
        return 0  # this profile reads no Fashion-MNIST
    try:
        find_files(root)
        return 0
    except DatasetNotFoundError:
        pass
    if install():
        find_files(root)
        return 0
    print(f"kdbench: Fashion-MNIST is not on this machine and cannot be installed from here (needs root and "
          f"apt-get): {GET_IT}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
