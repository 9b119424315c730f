"""The batch loader: in-memory splits augmented in batches on tensors, file splits through a
``torch.utils.data.DataLoader``. Both yield the same dicts::

    {"image": float32 N×C×H×W (normalised with dataset.mean/std), "label": int64 N,
     "index": int64 N (row indices into the split), "mask": bool N×H×W (when the split
     has masks), **aligned}

A training loader made with ``strong_view=True`` (in-memory splits; MLKD asks for it
through ``Distiller.loader_options``) adds ``"image_strong"``: the same images under their
own crop/flip and the batched RandAugment + Cutout of :mod:`kdbench.data.randaugment`,
normalised the same way. Its randomness comes from a second generator seeded by
``(seed, epoch, 1)``, so ``image`` and every other key are bit-identical with and without it.

Randomness (shuffle, crop offsets, flips) comes from a ``torch.Generator`` seeded by
``(seed, epoch)`` only, so the batches of an epoch are a pure function of the data, seed
and epoch: a resumed run sees exactly the same batches. Call ``set_epoch(epoch)`` before
iterating (like ``DistributedSampler``); the epoch does not advance by itself.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, Optional, Union

import numpy as np
import torch

from kdbench.data.base import Dataset, FileSplit, Split
from kdbench.data.randaugment import draw_strong_params, strong_augment
from kdbench.errors import KDBenchError, UnknownChoiceError

RESERVED_KEYS = ("image", "label", "index", "mask", "image_strong")
#: the extra seed word of the strong view's generator (the weak view's stream is untouched)
STRONG_STREAM = 1


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, ...) (numpy ``SeedSequence``)."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, int(epoch) & 0xFFFFFFFFFFFF,
                                 *(int(m) & 0xFFFFFFFFFFFF for m in more), 0x6B64])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_generator(seed: int, epoch: int, *more: int) -> torch.Generator:
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, *more))


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    if drop_last and n >= batch_size:
        return n // batch_size
    return math.ceil(n / batch_size)


class InMemoryLoader:
    """Batches of an in-memory ``Split``. Data (uint8) is moved to ``device`` once; when
    ``train``: a fresh permutation per epoch, and per-sample random crop with zero padding
    ``crop_pad`` plus horizontal flip (when ``flip``), done for the whole batch in one
    gather from an ``unfold`` view of the zero-padded data (no per-sample Python loop);
    the same crop/flip applies to the mask and every spatial aligned tensor.
    ``drop_last`` drops the last incomplete batch, except when the split is smaller than
    one batch (then the epoch is one smaller batch). ``strong_view`` (training only) adds
    ``image_strong`` (see the module docstring)."""

    def __init__(self, split: Split, batch_size: int, *, train: bool, seed: int, device, mean, std,
                 crop_pad: int = 0, flip: bool = False, aligned: Optional[Dict[str, torch.Tensor]] = None,
                 drop_last: bool = False, strong_view: bool = False):
        self.device = torch.device(device)
        self.strong_view = bool(strong_view) and bool(train)
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.drop_last, self.epoch = bool(drop_last), 0
        self.n = len(split)
        n, c, h, w = split.images.shape
        self.size = (h, w)
        self.pad = int(crop_pad) if train else 0
        self.flip = bool(flip) and train
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() not in (1, c) or std.numel() not in (1, c):
            raise ValueError(f"mean/std have {mean.numel()}/{std.numel()} entries for {c}-channel images")
        self.scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(self.device)
        self.shift = (-mean / std).view(1, -1, 1, 1).to(self.device)

        # name -> (tensor on device (zero-padded if spatial and augmenting), is_spatial, crop view)
        self._tensors: Dict[str, tuple] = {}
        self._add("image", split.images, True)
        self._add("label", split.labels, False)
        if split.masks is not None:
            self._add("mask", split.masks, True)
        for key, t in (aligned or {}).items():
            if key in RESERVED_KEYS:
                raise ValueError(f"aligned key {key!r} clashes with the batch keys {RESERVED_KEYS}")
            if not isinstance(t, torch.Tensor) or t.shape[0] != self.n:
                raise ValueError(f"aligned tensor {key!r} must have {self.n} rows (one per image), "
                                 f"got {getattr(t, 'shape', type(t))}")
            spatial = t.dim() >= 3
            if spatial and (t.dim() > 4 or tuple(t.shape[-2:]) != self.size):
                raise ValueError(f"aligned tensor {key!r} must be N×H×W or N×C×H×W with H×W = "
                                 f"{self.size} (or N / N×K, indexed only), got {tuple(t.shape)}")
            self._add(key, t, spatial)

    def _add(self, key: str, t: torch.Tensor, spatial: bool):
        t = t.to(self.device)
        view = None
        if spatial and self.train and (self.pad > 0 or self.flip):
            p, (h, w) = self.pad, self.size
            if p > 0:  # zero padding, any dtype (bool included)
                padded = t.new_zeros((*t.shape[:-2], h + 2 * p, w + 2 * p))
                padded[..., p:p + h, p:p + w] = t
                t = padded
            t = t.contiguous()
            d = t.dim()
            # a free view of every crop: N×[C×](2p+1)×(2p+1)×H×W; a batch is one gather from it
            view = t.unfold(d - 2, h, 1).unfold(d - 1, w, 1)
        self._tensors[key] = (t, spatial, view)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return _num_batches(self.n, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        n, bs = self.n, self.batch_size
        augment = self.train and (self.pad > 0 or self.flip)
        if self.train:
            g = epoch_generator(self.seed, self.epoch)
            order = torch.randperm(n, generator=g)
            if augment:
                oy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
                ox = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
                fl = torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
                oy, ox, fl = oy.to(self.device), ox.to(self.device), fl.to(self.device)
            order = order.to(self.device)
            if self.strong_view:
                gs = epoch_generator(self.seed, self.epoch, STRONG_STREAM)
                s_oy = torch.randint(0, 2 * self.pad + 1, (n,), generator=gs).to(self.device)
                s_ox = torch.randint(0, 2 * self.pad + 1, (n,), generator=gs).to(self.device)
                s_fl = (torch.rand(n, generator=gs) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)).to(self.device)
                s_params = draw_strong_params(n, gs)
        nb = len(self)
        for b in range(nb):
            s, e = b * bs, min(n, (b + 1) * bs)
            if self.train:
                idx = order[s:e]
            else:
                idx = torch.arange(s, e, device=self.device)
            batch: Dict[str, torch.Tensor] = {}
            if augment:
                by, bx, bf = oy[s:e], ox[s:e], fl[s:e]
                # CPU: flip only the flipped rows; elsewhere a sync-free select
                flipped = torch.nonzero(bf).flatten() if self.device.type == "cpu" else None
                for key, (t, spatial, view) in self._tensors.items():
                    if not spatial:
                        batch[key] = t[idx]
                        continue
                    out = view[idx, :, by, bx] if view.dim() == 6 else view[idx, by, bx]  # B×[C×]H×W
                    if flipped is None:
                        out = torch.where(bf.view(-1, *[1] * (out.dim() - 1)), out.flip(-1), out)
                    elif len(flipped):
                        out[flipped] = out[flipped].flip(-1)
                    batch[key] = out
            else:
                for key, (t, spatial, view) in self._tensors.items():
                    batch[key] = t[idx] if self.train else t[s:e]
            if self.strong_view:
                batch["image_strong"] = self._strong(idx, s_oy[s:e], s_ox[s:e], s_fl[s:e],
                                                     {k: v[s:e] for k, v in s_params.items()})
            batch["image"] = batch["image"].float().mul_(self.scale).add_(self.shift)
            batch["index"] = idx
            yield batch

    def _strong(self, idx, by, bx, bf, params) -> torch.Tensor:
        """The strong view of rows ``idx``: own crop/flip, RandAugment + Cutout, normalised."""
        t, _, view = self._tensors["image"]
        out = view[idx, :, by, bx] if view is not None else t[idx]
        out = torch.where(bf.view(-1, 1, 1, 1), out.flip(-1), out)
        return strong_augment(out, params).mul_(self.scale).add_(self.shift)


class _FileImages(torch.utils.data.Dataset):
    """Decodes one image with PIL and applies the transform. Training randomness is seeded
    per (seed, epoch, index), so the result does not depend on the number of workers and
    does not touch the caller's global RNG."""

    def __init__(self, split: FileSplit, transform, seed: int, random: bool):
        self.paths, self.labels = split.paths, split.labels.tolist()
        self.transform, self.seed, self.random, self.epoch = transform, int(seed), random, 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with open(self.paths[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        if self.random:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(epoch_seed(self.seed, self.epoch, i))
                x = self.transform(img)
        else:
            x = self.transform(img)
        return x, self.labels[i], i


class _EpochSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle, self.epoch = n, int(seed), shuffle, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        return iter(torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)).tolist())


class FileLoader:
    """Batches of a ``FileSplit`` through a ``DataLoader`` with ``num_workers`` workers:
    PIL decode + torchvision transforms (train: RandomResizedCrop + flip; eval: resize +
    centre crop), sampler and per-sample randomness seeded by (seed, epoch)."""

    def __init__(self, split: FileSplit, batch_size: int, *, train: bool, seed: int, device, mean, std,
                 augment: dict, image_size: int, num_workers: int = 0, drop_last: bool = False):
        from torchvision import transforms as T

        self.device = torch.device(device)
        self.batch_size, self.train, self.drop_last, self.n = int(batch_size), bool(train), bool(drop_last), len(split)
        size = int(augment.get("random_resized_crop", image_size))
        norm = [T.ToTensor(), T.Normalize(list(mean), list(std))]
        if train:
            tf = [T.RandomResizedCrop(size)] + ([T.RandomHorizontalFlip()] if augment.get("flip", False) else [])
        else:
            tf = [T.Resize(int(augment.get("eval_resize", int(size * 256 / 224)))), T.CenterCrop(size)]
        self.images = _FileImages(split, T.Compose(tf + norm), seed, random=bool(train))
        self.sampler = _EpochSampler(self.n, seed, shuffle=bool(train))
        self.loader = torch.utils.data.DataLoader(
            self.images, batch_size=self.batch_size, sampler=self.sampler, num_workers=int(num_workers),
            drop_last=self.drop_last and self.n >= self.batch_size, pin_memory=self.device.type == "cuda")

    def set_epoch(self, epoch: int) -> None:
        self.images.epoch = self.sampler.epoch = int(epoch)

    def __len__(self) -> int:
        return _num_batches(self.n, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        nb = self.device.type == "cuda"
        for x, y, i in self.loader:
            yield {"image": x.to(self.device, non_blocking=nb), "label": y.to(self.device, non_blocking=nb),
                   "index": i.to(self.device, non_blocking=nb)}


Loader = Union[InMemoryLoader, FileLoader]


def make_loader(dataset: Dataset, split: Union[str, Split, FileSplit], batch_size: int, *, train: bool,
                seed: int = 0, device="cpu", aligned: Optional[Dict[str, torch.Tensor]] = None,
                num_workers: int = 0, drop_last: Optional[bool] = None, strong_view: bool = False) -> Loader:
    """A loader over ``dataset``'s ``split`` (a name or a split object, e.g. a few-shot
    subset). ``train`` turns on shuffling and the dataset's augmentation; ``drop_last``
    defaults to ``train``. ``aligned``: extra per-image tensors, row-aligned with the split:
    N×H×W / N×C×H×W ones get exactly the crop/flip of their image, N / N×K ones are only
    indexed (in-memory splits only). ``num_workers`` applies to file splits.
    ``strong_view``: training batches also carry ``image_strong`` (in-memory splits only)."""
    if isinstance(split, str):
        if split not in dataset.splits:
            raise UnknownChoiceError(f"split of dataset {dataset.name!r}", split, dataset.splits)
        split = dataset.splits[split]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    drop_last = bool(train) if drop_last is None else bool(drop_last)
    aug = dataset.augment or {}
    if isinstance(split, Split):
        return InMemoryLoader(split, batch_size, train=train, seed=seed, device=device, mean=dataset.mean,
                              std=dataset.std, crop_pad=int(aug.get("crop_pad", 0) or 0),
                              flip=bool(aug.get("flip", False)), aligned=aligned, drop_last=drop_last,
                              strong_view=strong_view)
    if isinstance(split, FileSplit):
        if aligned:
            raise ValueError("aligned tensors are only supported for in-memory splits")
        if strong_view and train:
            raise KDBenchError(f"dataset {dataset.name!r}: the strong augmented view (MLKD) is only "
                               "available for in-memory datasets, not for file splits")
        return FileLoader(split, batch_size, train=train, seed=seed, device=device, mean=dataset.mean,
                          std=dataset.std, augment=aug, image_size=dataset.image_size,
                          num_workers=num_workers, drop_last=drop_last)
    raise TypeError(f"split must be a split name, Split or FileSplit, got {type(split).__name__}")
