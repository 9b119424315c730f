"""TDD's tree as the reference builds it (zju-vipa/KamalEngine), the taps it reads, and the
one cached tree that training and evaluation share."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kdbench.hparams import method_hparams
from kdbench.data import build_dataset
from kdbench.data.loader import make_loader
from kdbench.errors import KDBenchError
from kdbench.methods import TrainContext, get_method
from kdbench.methods.tdd import (HIERARCHY_FILE, cached_teacher_tree, derive_partition,
                                 resolve_purity_threshold)
from kdbench.models import create_model
from tests.tiny import one_thread  # noqa: F401  (fixture, autouse)


# ----------------------------------------------------------------------------- the rule at K = 10
def _ring(centre, n, radius, phase=0.0):
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([centre[0] + radius * np.cos(a), centre[1] + radius * np.sin(a)], 1)


def _k10_case():
    """Ten classes, 2-D, three sites far apart on a line and a lone class.

    At sites 0 and 1, classes a, b (ids 3s, 3s+1) lie on rings of radius 10 around the
    site (mean: the site) and class c (3s+2) is 20 images at site + (0.5, 0). Ward joins a
    and b first (their means coincide), then c. The node {a, b} has the site as its mean;
    its 20 nearest images are c's: purity 0/20 = 0 < 0.2, so {a, b} is one super-class.
    At site 2, a and b each put 2 of their 20 images on the site itself (the other 18 on
    the ring, so the means stay there): the 20 nearest are those 4 and 16 of c's, purity
    4/20 = 0.2, exactly τ: not below it, so a and b stay apart (KamalEngine's strict <).
    Every node above a site's {a, b} has its mean between or on its own classes' images,
    purity 1. So at τ = 0.2: [[0, 1], [2], [3, 4], [5], [6], [7], [8], [9]]."""
    feats, labels = [], []
    for s, x in enumerate((0.0, 1000.0, 2000.0)):
        site = (x, 0.0)
        if s < 2:
            a, b = _ring(site, 20, 10.0), _ring(site, 20, 10.0, phase=math.pi / 20)
        else:
            a = np.concatenate([np.repeat([site], 2, 0), _ring(site, 18, 10.0)])
            b = np.concatenate([np.repeat([site], 2, 0), _ring(site, 18, 10.0, phase=math.pi / 18)])
        c = np.repeat([[x + 0.5, 0.0]], 20, 0)
        for k, pts in enumerate((a, b, c)):
            feats.append(pts)
            labels += [3 * s + k] * len(pts)
    feats.append(np.repeat([[3000.0, 0.0]], 20, 0))
    labels += [9] * 20
    return torch.tensor(np.concatenate(feats), dtype=torch.float64), torch.tensor(labels)


def _reference_merge(feats, labels, num_classes, k, threshold):
    """KamalEngine's pipeline re-done independently (hierarchical_clustering.py): Ward on
    the class means -> scipy tree; a node's mean is the plain mean of its two children's
    (cluster_tree.set_means with equal shape[0]); KNN accuracy: the k smallest squared
    L2 distances over all images; merge_tree: pop a node, keep it if it is a leaf or its
    accuracy is below the threshold, else push left, then right."""
    from scipy.cluster.hierarchy import linkage, to_tree

    x, y = feats.numpy(), labels.numpy()
    means = np.stack([x[y == c].mean(0) for c in range(num_classes)])
    root = to_tree(linkage(means, method="ward"))

    def members(node):
        return {node.id} if node.is_leaf() else members(node.left) | members(node.right)

    def mean(node):
        return means[node.id] if node.is_leaf() else (mean(node.left) + mean(node.right)) / 2

    def acc(node):
        d = ((x - mean(node)) ** 2).sum(1)
        nearest = np.argsort(d, kind="stable")[:k]
        return float(np.mean([int(y[i]) in members(node) for i in nearest]))

    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.is_leaf() or acc(node) < threshold:
            out.append(sorted(members(node)))
        else:
            stack += [node.left, node.right]
    return sorted(out)


def test_auto_threshold_reproduces_kamalengine_at_k10():
    assert resolve_purity_threshold("auto", 10) == 0.2  # the reference's merge_threshold
    assert resolve_purity_threshold("auto", 8) == 0.25 and resolve_purity_threshold(0.3, 8) == 0.3
    feats, labels = _k10_case()
    want = [[0, 1], [2], [3, 4], [5], [6], [7], [8], [9]]
    part, purity = derive_partition(feats, labels, 10, purity_k=20, purity_threshold=resolve_purity_threshold("auto", 10))
    assert sorted(part) == want
    assert sorted(part) == _reference_merge(feats, labels, 10, 20, 0.2)
    by_group = {tuple(g): p for g, p in zip(part, purity)}
    assert by_group[(0, 1)] == 0.0 and by_group[(3, 4)] == 0.0
    # τ is an absolute number when given as one: 0.25 also merges site 2's pair (purity 0.2)
    part25, _ = derive_partition(feats, labels, 10, purity_k=20, purity_threshold=0.25)
    assert sorted(part25) == [[0, 1], [2], [3, 4], [5], [6, 7], [8], [9]] == _reference_merge(feats, labels, 10, 20, 0.25)


def test_purity_threshold_bad_values_are_rejected_early():
    hp = method_hparams("tdd", "resnet14", "resnet8")
    assert hp["purity_threshold"] == "auto" and hp["teacher_features"] == "tap"
    cls = get_method("tdd")
    for bad in ("half", 1.5, -0.1, True):
        with pytest.raises(KDBenchError, match="purity_threshold"):
            cls.check_hparams({**hp, "purity_threshold": bad})
    with pytest.raises(KDBenchError, match="teacher_features"):
        cls.check_hparams({**hp, "teacher_features": "logits"})


# ----------------------------------------------------------------------------- taps
@pytest.mark.parametrize("arch,block", [("resnet56", 2), ("resnet32", 1), ("resnet20", 0), ("resnet8", 0),
                                        ("wrn_16_2", 0), ("wrn_40_2", 1)])
def test_taps_are_an_early_preactivation_block_output(arch, block):
    torch.manual_seed(0)
    m = create_model(arch, 8).eval()
    x = torch.randn(2, 3, 16, 16)
    mods = m.tap_modules()
    assert len(mods) == m.num_stages
    for stage, mod in zip(m.stages, mods):
        blocks = [b for b in stage if hasattr(b, "conv2")]
        want = blocks[block].bn2 if arch.startswith("resnet") else blocks[block].conv2
        assert mod is want
    f = m.forward_taps(x)
    plain = m.forward_features(x)
    assert torch.equal(f.logits, plain.logits) and "taps" not in plain.extra  # forward_features unchanged
    for tap, out, c in zip(f.extra["taps"], f.stages, m.stage_channels):
        assert tap.shape == out.shape and tap.shape[1] == c
    if arch.startswith("resnet"):  # pre-activation: the BN output has negative values, the stage output none
        assert (f.extra["taps"][0] < 0).any() and (f.stages[0] >= 0).all()
    # resnet56: the reference's layer1.2.bn2 etc. (a hook on it gives the same tensor)
    if arch == "resnet56":
        got = {}
        h = m.stages[1][2].bn2.register_forward_hook(lambda mod, i, o: got.setdefault("t", o))
        m(x)
        h.remove()
        assert torch.equal(got["t"], f.extra["taps"][1])
    assert not m.stages[0][0]._forward_hooks  # hooks removed


def test_other_families_tap_their_stage_output():
    m = create_model("mobilenetv2", 8).eval()
    x = torch.randn(2, 3, 16, 16)
    f = m.forward_taps(x)
    assert all(torch.equal(a, b) for a, b in zip(f.extra["taps"], f.stages))


# ----------------------------------------------------------------------------- one tree, full split
@pytest.fixture(scope="module")
def ds():
    return build_dataset("shapes", image_size=16, n_train=64, n_val=8, n_test=8, n_test_ood=8, seed=0)


def _ctx(ds, split, teacher_path=None):
    def loader(sp, bs, train, aligned=None):
        return make_loader(ds, sp, bs, train=train, seed=0, aligned=aligned)

    return TrainContext(dataset=ds, train_split=split, device=torch.device("cpu"), batch_size=16, seed=0,
                        make_loader=loader, info={"teacher_path": teacher_path})


def test_tree_from_full_train_split_cached_and_shared_with_evaluation(ds, tmp_path):
    from kdbench import io as kio
    from kdbench.evaluation.run import cached_teacher_partitions
    from kdbench.methods.tdd import teacher_partitions

    torch.manual_seed(0)
    teacher = create_model("resnet14", 8).eval()
    tdir = tmp_path / "teacher"
    tdir.mkdir()
    kio.save_torch({"state_dict": teacher.state_dict()}, tdir / "model.pt")  # any file: keyed by its hash
    hp = method_hparams("tdd", "resnet14", "resnet8")
    few = ds.splits["train"].subset(torch.arange(16))  # the students' few-shot split

    def build(seed):
        torch.manual_seed(seed)
        return get_method("tdd")(create_model("resnet8", 8), teacher, 8, hp, epochs=2, input_size=16)

    d = build(0)
    d.prepare(_ctx(ds, few, tdir / "model.pt"))
    full = teacher_partitions(teacher, ds, "train", batch_size=7)
    assert d.partitions == full != teacher_partitions(teacher, ds, few)
    assert len(d.partitions) == teacher.num_stages and len(d.tree_heads) == teacher.num_stages  # all stages
    blob = json.loads((tdir / HIERARCHY_FILE).read_text())
    assert blob["partitions"] == full and blob["key"]["n_images"] == 64 and blob["key"]["purity_threshold"] == 0.25
    # the evaluation reads the very same file
    assert cached_teacher_partitions(teacher, tdir, ds, "cpu", tdd_hparams=hp) == full
    (tdir / HIERARCHY_FILE).write_text(json.dumps({**blob, "partitions": [[list(range(8))]] * 3}))
    assert cached_teacher_partitions(teacher, tdir, ds, "cpu", tdd_hparams=hp) == [[list(range(8))]] * 3
    d2 = build(1)
    d2.prepare(_ctx(ds, few, tdir / "model.pt"))  # training reads the cache too
    assert d2.partitions == [[list(range(8))]] * 3
    # another key (a retrained teacher file, other τ) derives again
    assert cached_teacher_tree(teacher, tdir / "model.pt", ds, hparams={**hp, "purity_threshold": 0.2}
                               )["key"]["purity_threshold"] == 0.2
    kio.save_torch({"state_dict": teacher.state_dict(), "x": 1}, tdir / "model.pt")
    assert cached_teacher_tree(teacher, tdir / "model.pt", ds, hparams=hp)["partitions"] == full
    # without a teacher file the tree still comes from the full split (uncached)
    d3 = build(2)
    d3.prepare(_ctx(ds, few, None))
    assert d3.partitions == full


def test_tree_ari_reads_the_ward_tree_cut_at_the_true_coarse_level():
    from kdbench.evaluation.hierarchy import walk_partition_ari, tree_ari

    truth = [[[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 1], [2, 3], [4, 5], [6, 7]], [[k] for k in range(8)]]
    # class means on the true tree: coarse far apart, families nearer, classes nearest
    means = np.array([[c * 100 + f * 10 + k, 0.0] for c in range(2) for f in range(2) for k in range(2)])
    feats = torch.tensor(np.repeat(means, 25, 0) + np.random.default_rng(0).normal(0, 0.1, (200, 2)))
    labels = torch.arange(8).repeat_interleave(25)
    tree = {}
    part, _ = derive_partition(feats, labels, 8, purity_k=20, purity_threshold=0.25, tree=tree)
    assert len(tree["linkage"]) == 7 and tree["nodes"][-1] == {"classes": list(range(8)), "purity": 1.0}
    assert tree_ari(tree["linkage"], truth, 8) == 1.0
    # every node is pure (its 20 nearest images are its own), so the reference's walk splits
    # down to the leaves: the tree holds the hierarchy, the partition does not
    assert sorted(part) == [[k] for k in range(8)] and walk_partition_ari([part], truth, 8) == 0.0
    # a tree whose top split mixes the coarse groups scores lower
    mixed = np.array([[((k % 2) * 100) + (k // 2) * 10, 0.0] for k in range(8)])
    tree2 = {}
    derive_partition(torch.tensor(np.repeat(mixed, 25, 0) + np.random.default_rng(1).normal(0, 0.1, (200, 2))),
                     labels, 8, tree=tree2)
    assert tree_ari(tree2["linkage"], truth, 8) < 0.0
    assert tree_ari(tree["linkage"], None, 8) is None


def _linkage(merges, num_leaves):
    """A scipy-form linkage matrix from a list of (left id, right id) merges (heights 1, 2, ...)."""
    sizes = {k: 1 for k in range(num_leaves)}
    rows = []
    for step, (a, b) in enumerate(merges):
        sizes[num_leaves + step] = sizes[a] + sizes[b]
        rows.append([a, b, step + 1.0, sizes[num_leaves + step]])
    return np.array(rows)


def test_dendrogram_purity_on_hand_built_trees():
    from scipy.cluster.hierarchy import linkage

    from kdbench.evaluation.hierarchy import dendrogram_purity, purity_baseline

    groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
    # every group a branch: ((0,1),(2,3)) and ((4,5),(6,7)) under the root -> 1.0
    branches = _linkage([(0, 1), (2, 3), (8, 9), (4, 5), (6, 7), (11, 12), (10, 13)], 8)
    assert dendrogram_purity(branches, groups, 8) == 1.0
    # the same tree as scipy builds it from class means on the true tree
    means = np.array([[c * 100 + f * 10 + k] for c in range(2) for f in range(2) for k in range(2)], float)
    assert dendrogram_purity(linkage(means, "ward"), groups, 8) == 1.0
    # a mixed tree on 4 leaves, groups {0,1}, {2,3}: ((0,2),1),3. Pair (0,1): LCA {0,2,1}, 2 of
    # 3 leaves in its group; pair (2,3): LCA the root, 2 of 4 -> (2/3 + 1/2) / 2 = 7/12
    mixed = _linkage([(0, 2), (4, 1), (5, 3)], 4)
    assert dendrogram_purity(mixed, [[0, 1], [2, 3]], 4) == pytest.approx(7 / 12)
    # singleton groups have no pairs; only pairs of the same group count
    assert dendrogram_purity(mixed, [[0, 1], [2], [3]], 4) == pytest.approx(2 / 3)
    assert dendrogram_purity(mixed, [[0], [1], [2], [3]], 4) is None
    assert dendrogram_purity(None, groups, 8) is None
    # the permutation baseline: a perfect tree is above its 95th percentile, with a small
    # p-value; the chance mean is what random labels give (every permutation of an
    # all-in-one group gives 1.0: the baseline equals the observed value there)
    base = purity_baseline(branches, groups, 8, n_permutations=500, seed=0)
    assert base["p95"] < 1.0 and base["mean"] < 0.8 and base["p_value"] < 0.05
    assert base == purity_baseline(branches, groups, 8, n_permutations=500, seed=0)  # fixed seed
    flat = purity_baseline(mixed, [[0, 1, 2, 3]], 4, n_permutations=50)
    assert flat["mean"] == flat["p95"] == 1.0 and flat["p_value"] == 1.0


def test_teacher_tree_table_reads_the_stage_lists_of_runs_csv():
    import json

    import pandas as pd

    from kdbench.board.trees import display, teacher_tree_table

    run = {"dataset": "d", "teacher": "t", "teacher_seed": 0, "method": "kd", "seed": 0,
           "tree_purity_stages": json.dumps([0.5, 0.9]), "tree_purity_chance_stages": json.dumps([0.45, 0.45]),
           "tree_purity_p95_stages": json.dumps([0.6, 0.6]), "probe_coarse_stages": json.dumps([0.8, 0.95]),
           "probe_fine_stages": json.dumps([0.5, 0.9])}
    runs = pd.DataFrame([run, {**run, "seed": 1, "method": "vanilla"}])
    table = teacher_tree_table(runs)
    assert len(table) == 2 and table["above_chance_p95"].tolist() == [False, True]
    assert table["probe_coarse"].tolist() == [0.8, 0.95]
    assert display(table)["coarse probe %"].tolist() == ["80.0", "95.0"]
    assert teacher_tree_table(runs.drop(columns=["tree_purity_stages"])).empty
