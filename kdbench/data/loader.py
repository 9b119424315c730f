"""Batch loaders.

In-memory splits (``Split``): the uint8 images move to the device once; every epoch a
permutation and the augmentation randomness come from a generator seeded by (seed, epoch),
so a resumed run sees exactly the batches an uninterrupted one would. Augmentation is
batched on tensors: zero-padded random crop (one gather for the whole batch) and per-image
horizontal flip; aligned per-pixel tensors (masks, stored explanation maps) receive the
same crop and flip as their images.

Folder splits (``FileSplit``) stream through a torch DataLoader with workers (PIL decode,
torchvision transforms), sampled by the same (seed, epoch) rule, yielding the same dicts.
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Union

import torch

from kdbench.data.base import Dataset, FileSplit, Split


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2**63 - 1))
    return g


def crop_and_flip(tensors: Dict[str, torch.Tensor], pad: int, flip: bool, g: torch.Generator) -> Dict[str, torch.Tensor]:
    """Apply one random zero-padded crop and flip per sample to every tensor of the dict
    (each N×C×H×W or N×H×W, same N, H, W). Offsets/flips are drawn once from ``g``."""
    first = next(iter(tensors.values()))
    n, h, w = first.shape[0], first.shape[-2], first.shape[-1]
    dev = first.device
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(dev)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(dev)
    if flip:
        flips = (torch.rand(n, generator=g) < 0.5).to(dev)
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    out = {}
    for key, t in tensors.items():
        squeeze = t.dim() == 3
        x = t.unsqueeze(1) if squeeze else t
        if pad > 0:
            x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
            ri = (dy[:, None] + rows[None, :])  # N×H
            ci = (dx[:, None] + cols[None, :])  # N×W
            if flip:
                ci = torch.where(flips[:, None], ci.flip(1), ci)
            x = x[torch.arange(n, device=dev)[:, None, None, None], torch.arange(x.shape[1], device=dev)[None, :, None, None],
                  ri[:, None, :, None], ci[:, None, None, :]]
        elif flip:
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        out[key] = x.squeeze(1) if squeeze else x
    return out


class TensorLoader:
    """Batches of an in-memory split; see the module docstring."""

    def __init__(self, dataset: Dataset, split: Split, batch_size: int, *, train: bool, seed: int = 0,
                 device="cpu", aligned: Optional[Dict[str, torch.Tensor]] = None, drop_last: Optional[bool] = None):
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.train, self.seed, self.epoch = train, int(seed), 0
        self.drop_last = train if drop_last is None else drop_last
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.masks = None if split.masks is None else split.masks.to(self.device)
        self.aligned = {k: v.to(self.device) for k, v in (aligned or {}).items()}
        for k, v in self.aligned.items():
            if v.shape[0] != len(split) or v.shape[-2:] != split.images.shape[-2:]:
                raise ValueError(f"aligned tensor {k!r} has shape {tuple(v.shape)}, expected N={len(split)} "
                                 f"and H×W={tuple(split.images.shape[-2:])}")
        c = self.images.shape[1]
        self.mean = torch.tensor(list(dataset.mean), dtype=torch.float32, device=self.device).view(1, c, 1, 1) * 255
        self.std = torch.tensor(list(dataset.std), dtype=torch.float32, device=self.device).view(1, c, 1, 1) * 255
        aug = dataset.augment or {}
        self.pad = int(aug.get("crop_pad", 0)) if train else 0
        self.flip = bool(aug.get("flip", False)) if train else False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        n = self.images.shape[0]
        g = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        order = order.to(self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            parts = {"image": self.images[idx]}
            if self.masks is not None:
                parts["mask"] = self.masks[idx]
            for k, v in self.aligned.items():
                parts[k] = v[idx]
            if self.pad or self.flip:
                parts = crop_and_flip(parts, self.pad, self.flip, g)
            batch = {"image": (parts.pop("image").float() - self.mean) / self.std, "label": self.labels[idx], "index": idx}
            batch.update(parts)
            yield batch


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, split: FileSplit, transform):
        self.split, self.transform = split, transform

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.split.paths[i]) as im:
            x = self.transform(im.convert("RGB"))
        return x, self.split.labels[i], i


class FileLoader:
    """Batches of a folder split through a DataLoader with workers."""

    def __init__(self, dataset: Dataset, split: FileSplit, batch_size: int, *, train: bool, seed: int = 0,
                 device="cpu", num_workers: int = 4, drop_last: Optional[bool] = None):
        from torchvision import transforms as T

        size = int(dataset.image_size)
        norm = T.Normalize(list(dataset.mean), list(dataset.std))
        if train:
            tf = [T.RandomResizedCrop(size)] + ([T.RandomHorizontalFlip()] if dataset.augment.get("flip") else [])
        else:
            tf = [T.Resize(int(dataset.augment.get("eval_resize", round(size * 256 / 224)))), T.CenterCrop(size)]
        self.ds = _FileDataset(split, T.Compose(tf + [T.ToTensor(), norm]))
        self.batch_size, self.train, self.seed, self.epoch = batch_size, train, seed, 0
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.drop_last = train if drop_last is None else drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        g = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(len(self.ds), generator=g) if self.train else torch.arange(len(self.ds))
        base_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))

        def init(worker_id):  # per-worker augmentation seed from (seed, epoch)
            torch.manual_seed(base_seed + worker_id)

        dl = torch.utils.data.DataLoader(self.ds, batch_size=self.batch_size, sampler=order.tolist(),
                                         num_workers=self.num_workers, drop_last=self.drop_last,
                                         worker_init_fn=init, pin_memory=self.device.type == "cuda",
                                         persistent_workers=False)
        for x, y, idx in dl:
            yield {"image": x.to(self.device, non_blocking=True), "label": y.to(self.device), "index": idx.to(self.device)}


def make_loader(dataset: Dataset, split: Union[str, Split, FileSplit], batch_size: int, *, train: bool, seed: int = 0,
                device="cpu", aligned: Optional[Dict[str, torch.Tensor]] = None, num_workers: int = 4,
                drop_last: Optional[bool] = None):
    """A loader over ``split`` (a split name of ``dataset`` or a split object)."""
    if isinstance(split, str):
        split = dataset.splits[split]
    if isinstance(split, FileSplit):
        if aligned:
            raise ValueError("aligned per-pixel tensors need an in-memory split")
        return FileLoader(dataset, split, batch_size, train=train, seed=seed, device=device,
                          num_workers=num_workers, drop_last=drop_last)
    return TensorLoader(dataset, split, batch_size, train=train, seed=seed, device=device, aligned=aligned,
                        drop_last=drop_last)
