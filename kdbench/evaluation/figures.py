"""The explanation grid of one run: rows = images, columns = image | teacher Grad-CAM |
student Grad-CAM | UniCAM distilled | UniCAM residual (UniCAM columns only when the run
has a base model, i.e. not for ``vanilla``). Maps are overlaid on the image, each
normalised by its own maximum. The PNG bytes are deterministic (no timestamp/software
metadata; matplotlib's Agg canvas, no pyplot global state)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch


def to_display(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised images (B×C×H×W) back to [0, 1] RGB (B×H×W×3)."""
    m = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    x = (images.detach().float().cpu() * s + m).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def render_grid(images: np.ndarray, columns: Dict[str, torch.Tensor], title: str = "", dpi: int = 100) -> bytes:
    """PNG bytes of the grid. ``images``: B×H×W×3 in [0, 1]; ``columns``: name -> B×H×W maps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = images.shape[0]
    names = ["image", *columns]
    fig = Figure(figsize=(1.6 * len(names), 1.6 * n + (0.4 if title else 0.1)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, len(names), squeeze=False)
    for r in range(n):
        for c, name in enumerate(names):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(images[r], interpolation="nearest")
            if name != "image":
                cam = columns[name][r].detach().double().cpu().numpy()
                top = cam.max()
                cam = cam / top if top > 0 else cam
                ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0, interpolation="bilinear")
            if r == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def write_grid(path: Path, images: np.ndarray, columns: Dict[str, torch.Tensor], title: str = "") -> Path:
    """Render and write the grid atomically."""
    from kdbench.engine.io import _atomic

    data = render_grid(images, columns, title)
    return _atomic(Path(path), lambda fh: fh.write(data))
