"""TDD's claim as numbers: does the student's decision process follow the teacher's
coarse-to-fine tree? (``decision_consistency``), and does the teacher's tree match the
true hierarchy? (``walk_partition_ari``).

The teacher's per-stage partitions come from :mod:`kdbench.methods.tdd` (the same
tree TDD trains with: derived once on the full training split and cached beside the
teacher in ``hierarchy.json``).

The probes are sklearn's default ``StandardScaler`` + ``LogisticRegression`` (C = 1,
L-BFGS) re-done in torch float64 (:func:`fit_probe`), and the ARI is the contingency-table
formula in exact integers (:func:`adjusted_rand_index`): the same numbers (tests compare
them with sklearn) without importing sklearn (1.5 s) in every evaluate job.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from kdbench.methods.adapters import stage_pairs
from kdbench.data.loader import make_loader

Partition = List[List[int]]

#: the probe's inverse L2 strength (sklearn's LogisticRegression default)
PROBE_C = 1.0
#: L-BFGS stops at this max-abs gradient of the summed objective (or after PROBE_MAX_ITER)
PROBE_TOL_GRAD = 1e-7
#: ... or when a step changes the objective (or any parameter) by less than this
PROBE_TOL_CHANGE = 1e-12
PROBE_MAX_ITER = 1000
PROBE_HISTORY = 10  # scipy's L-BFGS-B default (sklearn's solver)

try:  # the line search of torch.optim.LBFGS, usable without constructing an Optimizer
    from torch.optim.lbfgs import _strong_wolfe
except ImportError:  # pragma: no cover - other torch versions: torch.optim.LBFGS itself
    _strong_wolfe = None


def class_to_group(partition: Partition, num_classes: int) -> np.ndarray:
    """Array mapping each class to the index of its group in ``partition``."""
    out = np.full(num_classes, -1, dtype=np.int64)
    for g, members in enumerate(partition):
        for c in members:
            out[int(c)] = g
    if (out < 0).any():
        missing = np.flatnonzero(out < 0).tolist()
        raise ValueError(f"partition does not cover classes {missing[:10]}")
    return out


@dataclass
class LinearProbe:
    """A fitted multinomial logistic-regression probe on standardised features:
    ``classes[argmax((x - mean) / scale @ coef.T + intercept)]`` (two classes: one
    coefficient row, class 1 when the score is > 0)."""

    classes: np.ndarray
    mean: torch.Tensor
    scale: torch.Tensor
    coef: torch.Tensor  # K×d (two classes: 1×d)
    intercept: torch.Tensor  # K (two classes: 1)
    n_iter: int = 0

    def decision_function(self, x) -> torch.Tensor:
        z = (torch.as_tensor(np.asarray(x, dtype=np.float64)) - self.mean) / self.scale
        return z @ self.coef.T + self.intercept

    def predict(self, x) -> np.ndarray:
        scores = self.decision_function(x)
        idx = (scores[:, 0] > 0).long() if self.coef.shape[0] == 1 else scores.argmax(1)
        return self.classes[idx.numpy()]

    def score(self, x, y) -> float:
        return float(np.mean(self.predict(x) == np.asarray(y)))


def lbfgs_minimize(fun: Callable[[torch.Tensor], Tuple[float, torch.Tensor]], x0: torch.Tensor, *,
                   max_iter: int = PROBE_MAX_ITER, max_eval: Optional[int] = None,
                   tolerance_grad: float = PROBE_TOL_GRAD, tolerance_change: float = PROBE_TOL_CHANGE,
                   history_size: int = PROBE_HISTORY) -> Tuple[torch.Tensor, int]:
    """Minimise ``fun`` (flat x -> (loss, flat gradient)) from ``x0``: one
    ``torch.optim.LBFGS(lr=1, line_search_fn="strong_wolfe").step`` on a flat parameter,
    step for step (the same two-loop recursion, the same strong-Wolfe line search
    ``torch.optim.lbfgs._strong_wolfe``, the same stopping rules), without constructing
    an ``Optimizer``: that imports ``torch._dynamo`` (over a second per evaluate job).
    Returns (x, iterations)."""
    if _strong_wolfe is None:  # a torch without the module-level line search: the optimizer itself
        return _lbfgs_with_optimizer(fun, x0, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                                     tolerance_change=tolerance_change, history_size=history_size)
    max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
    x = x0.detach().clone()
    loss, flat_grad = fun(x)
    current_evals = 1
    if flat_grad.abs().max() <= tolerance_grad:
        return x, 0
    d = t = prev_flat_grad = None
    old_dirs: List[torch.Tensor] = []
    old_stps: List[torch.Tensor] = []
    ro: List[torch.Tensor] = []
    al: List[Optional[torch.Tensor]] = [None] * history_size
    h_diag = 1
    n_iter = 0

    def obj_func(x_, t_, d_):
        return fun(x_.add(d_, alpha=t_))

    while n_iter < max_iter:
        n_iter += 1
        if n_iter == 1:
            d = flat_grad.neg()
        else:
            y = flat_grad.sub(prev_flat_grad)
            s = d.mul(t)
            ys = y.dot(s)
            if ys > 1e-10:
                if len(old_dirs) == history_size:
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)
                h_diag = ys / y.dot(y)
            q = flat_grad.neg()
            for i in range(len(old_dirs) - 1, -1, -1):
                al[i] = old_stps[i].dot(q) * ro[i]
                q.add_(old_dirs[i], alpha=-al[i])
            d = r = torch.mul(q, h_diag)
            for i in range(len(old_dirs)):
                be_i = old_dirs[i].dot(r) * ro[i]
                r.add_(old_stps[i], alpha=al[i] - be_i)
        prev_flat_grad = flat_grad.clone()
        prev_loss = loss
        t = min(1.0, 1.0 / flat_grad.abs().sum()) if n_iter == 1 else 1.0
        gtd = flat_grad.dot(d)
        if gtd > -tolerance_change:
            break
        loss, flat_grad, t, ls_evals = _strong_wolfe(obj_func, x.clone(), t, d, loss, flat_grad, gtd,
                                                     max_ls=max_eval - current_evals)
        x.add_(d, alpha=t)
        current_evals += ls_evals
        if n_iter == max_iter or current_evals >= max_eval or flat_grad.abs().max() <= tolerance_grad:
            break
        if d.mul(t).abs().max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
            break
    return x, n_iter


def _lbfgs_with_optimizer(fun, x0, *, max_iter, max_eval, tolerance_grad, tolerance_change, history_size):
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                            tolerance_change=tolerance_change, history_size=history_size,
                            line_search_fn="strong_wolfe")

    def closure():
        loss, grad = fun(x.detach())
        x.grad = grad.clone()
        return loss

    opt.step(closure)
    return x.detach(), int(opt.state[x].get("n_iter", 0))


def probe_objective(z: torch.Tensor, y: torch.Tensor, n_classes: int, C: float = PROBE_C):
    """The probe's objective on standardised features ``z`` (n×d) and class indices ``y``
    as a function of the flat parameters [W (k×d, row-major), b (k)] -> (loss, gradient):
    the summed log-loss + ``0.5 / C · ||W||²``, b unpenalised. ``n_classes`` ≥ 3: softmax
    over k = n_classes score columns; 2: the binary logistic loss of one score column
    (k = 1, class 1 when the score is > 0), as sklearn fits binary problems."""
    n, dim = z.shape
    k = 1 if n_classes == 2 else n_classes
    alpha = 0.5 / float(C)
    if k == 1:
        target = y.to(z.dtype)
        zero = torch.zeros((), dtype=z.dtype)
    else:
        onehot = F.one_hot(y, k).to(z.dtype)

    def fun(theta: torch.Tensor) -> Tuple[float, torch.Tensor]:
        w = theta[: k * dim].view(k, dim)
        b = theta[k * dim:]
        scores = torch.addmm(b, z, w.T)
        if k == 1:
            s = scores[:, 0]
            loss = (torch.logaddexp(zero, s) - target * s).sum()
            g = (torch.sigmoid(s) - target)[:, None]
        else:
            logp = torch.log_softmax(scores, dim=1)
            loss = -(logp * onehot).sum()
            g = logp.exp() - onehot
        grad_w = g.T @ z + (2 * alpha) * w
        return float(loss + alpha * (w * w).sum()), torch.cat([grad_w.reshape(-1), g.sum(0)])

    return fun, k


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, *, C: float = PROBE_C, **lbfgs) -> LinearProbe:
    """Fit the decision-consistency probe: the minimiser of the objective of sklearn's
    ``make_pipeline(StandardScaler(), LogisticRegression(C=1))``, in torch float64.

    Features are standardised with the training mean and (population) std; a constant
    feature (sklearn's ``_is_constant_feature`` bound) keeps scale 1. The objective
    (:func:`probe_objective`) is the summed log-loss + ``0.5 / C · ||W||²`` with the
    intercept unpenalised: softmax for K ≥ 3 classes, the binary logistic loss with a
    single weight vector for K = 2 (as sklearn; a two-column softmax would halve the
    effective penalty). Minimised from zero by L-BFGS with strong-Wolfe line search
    (:func:`lbfgs_minimize`) to a max-abs gradient of ``PROBE_TOL_GRAD``; the objective is
    strictly convex in W, so the optimum is unique. Deterministic (CPU float64, fixed start)."""
    x = torch.as_tensor(np.asarray(train_x, dtype=np.float64))
    classes, y = np.unique(np.asarray(train_y).reshape(-1), return_inverse=True)
    y = y.reshape(-1)
    if x.dim() != 2 or x.shape[0] != len(y):
        raise ValueError(f"probe: features {tuple(x.shape)} and {len(y)} labels do not match")
    if len(classes) < 2:
        raise ValueError("probe: needs at least two classes")
    n, dim = x.shape
    mean = x.mean(0)
    var = ((x - mean) ** 2).mean(0)
    eps = float(np.finfo(np.float64).eps)
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = torch.where(constant, torch.ones_like(var), var.sqrt())
    z = (x - mean) / scale
    fun, k = probe_objective(z, torch.as_tensor(y, dtype=torch.long), len(classes), C)
    theta, n_iter = lbfgs_minimize(fun, torch.zeros(k * dim + k, dtype=torch.float64), **lbfgs)
    return LinearProbe(classes=classes, mean=mean, scale=scale, coef=theta[: k * dim].view(k, dim).clone(),
                       intercept=theta[k * dim:].clone(), n_iter=n_iter)


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Accuracy on (test_x, test_y) of a linear probe (:func:`fit_probe`: standardised
    features, L2-penalised multinomial logistic regression with C = 1, the objective of
    sklearn's default ``LogisticRegression``) fit on (train_x, train_y)."""
    classes = np.unique(train_y)
    if len(classes) < 2:  # nothing to learn: predict the one class seen
        return float(np.mean(np.asarray(test_y) == classes[0]))
    return fit_probe(train_x, train_y).score(test_x, test_y)


def adjusted_rand_index(labels_a, labels_b) -> float:
    """Adjusted Rand index (Hubert & Arabie) of two labelings of the same items, from the
    contingency table n_ij with row sums a_i and column sums b_j, in exact integers:
    (Σ C(n_ij,2) − Σ C(a_i,2)·Σ C(b_j,2)/C(n,2)) / (½(Σ C(a_i,2) + Σ C(b_j,2)) −
    Σ C(a_i,2)·Σ C(b_j,2)/C(n,2)); 1.0 when the two labelings make the same pairs
    (sklearn's ``adjusted_rand_score`` convention, e.g. for n < 2)."""
    a = np.asarray(labels_a).reshape(-1)
    b = np.asarray(labels_b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"labelings of different lengths: {a.shape[0]} vs {b.shape[0]}")
    n = int(a.shape[0])
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    ia, ib = ia.reshape(-1), ib.reshape(-1)
    table = np.zeros((int(ia.max(initial=-1)) + 1, int(ib.max(initial=-1)) + 1), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)

    def pairs(counts) -> int:
        return sum(int(c) * (int(c) - 1) // 2 for c in np.asarray(counts).reshape(-1))

    index, sum_a, sum_b = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = n * (n - 1) // 2
    if index == sum_a == sum_b:  # the same pairs together (and apart): full agreement
        return 1.0
    # (index - expected) / (max - expected), times 2·C(n,2) above and below
    return float(Fraction(2 * (index * total - sum_a * sum_b), (sum_a + sum_b) * total - 2 * sum_a * sum_b))


def stage_for_partitions(n_student: int, n_teacher: int) -> List[Tuple[int, int]]:
    """(student stage, teacher stage): for every teacher stage the student stage at the
    same relative depth, where TDD puts the auxiliary head of that stage's partition
    (``TDD.head_stages``), except those on the student's last stage (the evaluation spec:
    intermediate decisions; the last stage's decision is the classification itself)."""
    return [(s, t) for t, s in stage_pairs(n_teacher, n_student) if s < n_student - 1]


def decision_consistency(train_feats: Sequence[np.ndarray], train_labels: np.ndarray,
                         test_feats: Sequence[np.ndarray], test_labels: np.ndarray,
                         partitions: Sequence[Partition], num_classes: int,
                         n_teacher_stages: Optional[int] = None) -> Tuple[Optional[float], List[Optional[float]]]:
    """Mean probe accuracy, over the teacher's stages l whose TDD head sits on an
    intermediate student stage (:func:`stage_for_partitions`), of a probe on that student
    stage's pooled features predicting the teacher's super-class π_l(y) of each image's
    true class: the decisions TDD trains, where it trains them (one entry per such pair
    in the per-stage list).

    ``train_feats[i]`` / ``test_feats[i]``: pooled features (n × C_i) of student stage i.
    ``partitions[l]``: the teacher's partition at teacher stage l (l = 0..n_t-1, as
    :func:`kdbench.methods.tdd.cached_teacher_tree` derives them). Stages whose partition
    has a single super-class carry no decision (the probe would be trivially right) and
    are skipped (None in the per-stage list); if every stage is skipped the mean is None.
    """
    n_s = len(train_feats)
    n_t = len(partitions) if n_teacher_stages is None else n_teacher_stages
    if len(partitions) != n_t:
        raise ValueError(f"{len(partitions)} partitions for a teacher of {n_t} stages (one per stage expected)")
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    per_stage: List[Optional[float]] = []
    for i, j in stage_for_partitions(n_s, n_t):
        part = partitions[j]
        if len(part) < 2:
            per_stage.append(None)
            continue
        lookup = class_to_group(part, num_classes)
        per_stage.append(probe_accuracy(train_feats[i], lookup[train_labels], test_feats[i], lookup[test_labels]))
    valid = [v for v in per_stage if v is not None]
    return (float(np.mean(valid)) if valid else None), per_stage


def coarsest_partition(partitions: Sequence[Partition]) -> Optional[Partition]:
    """The teacher's coarsest non-trivial partition: the fewest super-classes but at least
    two (earliest stage on ties); if every stage is a single group, that group."""
    if not partitions:
        return None
    nontrivial = [p for p in partitions if len(p) >= 2]
    pool = nontrivial or list(partitions)
    return min(pool, key=len)  # min keeps the first (earliest) on ties


def walk_partition_ari(partitions: Sequence[Partition], hierarchy: Optional[Sequence[Partition]],
                  num_classes: int) -> Optional[float]:
    """Adjusted Rand index (over classes) between the teacher's coarsest partition and
    the dataset's true coarse groups ``hierarchy[0]``; None without a hierarchy."""
    if not hierarchy:
        return None
    part = coarsest_partition(partitions)
    if part is None:
        return None
    return adjusted_rand_index(class_to_group(hierarchy[0], num_classes), class_to_group(part, num_classes))


@torch.no_grad()
def pooled_features(model, dataset, split, *, features: str = "stages", batch_size: int = 256,
                    device=None) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Global-average-pooled per-stage features (float32 CPU, N×C_l, one per stage) of
    ``model`` (eval mode, no augmentation) over ``split`` (a name or a split object), and
    the labels. ``features``: ``stages`` (the stage outputs) or ``taps``
    (:meth:`StagedNet.forward_taps`: an early pre-activation block output per stage)."""
    if features not in ("stages", "taps"):
        raise ValueError(f"features must be 'stages' or 'taps', got {features!r}")
    was = model.training
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    feats: List[List[torch.Tensor]] = []
    labels = []
    try:
        for batch in make_loader(dataset, split, batch_size, train=False, device=device):
            if features == "taps":
                out = model.forward_taps(batch["image"]).extra["taps"]
            else:
                out = model.forward_features(batch["image"]).stages
            feats.append([t.float().mean(dim=(2, 3)).cpu() for t in out])
            labels.append(batch["label"].cpu())
    finally:
        model.train(was)
    return [torch.cat([b[i] for b in feats]) for i in range(len(feats[0]))], torch.cat(labels)


def stage_probe_table(model, dataset, *, n_train: int = 2000, features: str = "stages",
                      train_split: str = "train", test_split: str = "test") -> List[dict]:
    """Per stage: linear-probe (:func:`fit_probe`) test accuracy for the dataset's coarsest
    true groups (``hierarchy[0]``) and for the classes, fit on the first ``n_train``
    images of ``train_split``. Each row: stage, coarse, fine, their chance levels (the
    majority group / class share of the test labels) and chance-normalised accuracies
    (acc - chance) / (1 - chance)."""
    if not dataset.hierarchy:
        raise ValueError(f"{dataset.name} has no ground-truth hierarchy")
    train = dataset.splits[train_split]
    if len(train) > n_train:
        train = train.subset(torch.arange(int(n_train)))
    tr_f, tr_y = pooled_features(model, dataset, train, features=features)
    te_f, te_y = pooled_features(model, dataset, test_split, features=features)
    lookup = class_to_group(dataset.hierarchy[0], dataset.num_classes)
    rows = []
    for stage, (a, b) in enumerate(zip(tr_f, te_f)):
        row = {"stage": stage}
        for name, ytr, yte in (("coarse", lookup[tr_y.numpy()], lookup[te_y.numpy()]),
                               ("fine", tr_y.numpy(), te_y.numpy())):
            acc = probe_accuracy(a.numpy(), ytr, b.numpy(), yte)
            chance = float(np.bincount(yte).max() / len(yte))
            row.update({name: acc, f"{name}_chance": chance, f"{name}_norm": (acc - chance) / (1 - chance)})
        rows.append(row)
    return rows


def tree_ari(linkage_matrix, hierarchy: Optional[Sequence[Partition]], num_classes: int) -> Optional[float]:
    """Adjusted Rand index between the dataset's true coarse groups ``hierarchy[0]`` and one
    stage's Ward tree of the teacher's class means (``linkage_matrix``: scipy's (K-1)×4,
    as :func:`kdbench.methods.tdd.derive_partition` records it) cut into as many groups
    (``fcluster(maxclust)``): does the tree itself hold the true coarse split, whatever
    TDD's purity walk then makes of it? None without a hierarchy."""
    if not hierarchy or linkage_matrix is None or len(linkage_matrix) == 0:
        return None
    from scipy.cluster.hierarchy import fcluster

    z = np.asarray(linkage_matrix, dtype=np.float64)
    cut = fcluster(z, t=len(hierarchy[0]), criterion="maxclust")
    return adjusted_rand_index(class_to_group(hierarchy[0], num_classes), cut)


def dendrogram_purity(linkage_matrix, groups: Partition, num_classes: int) -> Optional[float]:
    """Dendrogram purity (Heller & Ghahramani, 2005) of the true ``groups`` in a tree of the
    classes (``linkage_matrix``: scipy's (K-1)×4, leaves = class ids): for every pair of
    classes in the same group, the fraction of the leaves under their lowest common
    ancestor that belong to that group, averaged over those pairs. 1.0 when every group is
    a branch of the tree; None when no group has two classes or there is no tree."""
    if linkage_matrix is None or len(linkage_matrix) == 0:
        return None
    group_of = class_to_group(groups, num_classes)
    members = {k: [k] for k in range(num_classes)}
    total, pairs = 0.0, 0
    for step, row in enumerate(np.asarray(linkage_matrix, dtype=np.float64)):
        left, right = members.pop(int(row[0])), members.pop(int(row[1]))
        node = left + right
        counts = np.bincount(group_of[node], minlength=len(groups))
        for a in left:  # the pairs whose lowest common ancestor is this node
            same = sum(1 for b in right if group_of[b] == group_of[a])
            total += same * counts[group_of[a]] / len(node)
            pairs += same
        members[num_classes + step] = node
    return total / pairs if pairs else None


def purity_baseline(linkage_matrix, groups: Partition, num_classes: int, *, n_permutations: int = 1000,
                    seed: int = 0) -> Optional[dict]:
    """Chance level of :func:`dendrogram_purity`: the purity of the same tree with the class
    labels permuted (``n_permutations`` permutations drawn by ``np.random.default_rng(seed)``).
    Returns ``{"mean", "p95", "p_value"}`` (p_value: the share of permutations whose purity is
    at least the observed one, counting the observed labelling: (1 + hits) / (1 + n))."""
    observed = dendrogram_purity(linkage_matrix, groups, num_classes)
    if observed is None:
        return None
    rng = np.random.default_rng(seed)
    sims = np.empty(n_permutations)
    for i in range(n_permutations):
        perm = rng.permutation(num_classes)
        sims[i] = dendrogram_purity(linkage_matrix, [[int(perm[c]) for c in g] for g in groups], num_classes)
    return {"mean": float(sims.mean()), "p95": float(np.quantile(sims, 0.95)),
            "p_value": float((1 + np.sum(sims >= observed - 1e-12)) / (1 + n_permutations))}
