"""Plain-numpy float64 reference computations shared by the method test modules (an
independent path from kdbench's vectorised torch code, written from the formulas)."""
from __future__ import annotations

import numpy as np


def np_softmax(z, axis=1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def np_kd(zs, zt, T):
    """Hinton's KD loss: T² · KL(teacher ‖ student) at temperature T, batch mean."""
    ps, pt = np_softmax(zs / T), np_softmax(zt / T)
    return T * T * float(np.sum(pt * (np.log(pt) - np.log(ps)))) / zs.shape[0]
