"""Hand-computed cases for the CMPL objective (Eq. 1-6, Appendix A)."""

import math

import pytest
import torch
from torch import nn

from cmpl_ray.algorithm import compute_objective, pseudo_label_loss, teacher_distributions

P_F = torch.tensor([[0.95, 0.05], [0.60, 0.40], [0.90, 0.10]])
P_A = torch.tensor([[0.20, 0.80], [0.05, 0.95], [0.50, 0.50]])


def test_cross_swaps_teachers():
    l_f, l_a = teacher_distributions(P_F, P_A, "cross", 0.9)
    assert torch.equal(l_f, P_A) and torch.equal(l_a, P_F)


def test_self_first():
    l_f, l_a = teacher_distributions(P_F, P_A, "self_first", 0.9)
    # row0: F confident (0.95) -> own; row1: F not -> A's; row2: F exactly at threshold 0.9 -> own
    assert torch.equal(l_f, torch.stack([P_F[0], P_A[1], P_F[2]]))
    # A: row0 0.8 no -> F; row1 0.95 yes -> own; row2 0.5 no -> F
    assert torch.equal(l_a, torch.stack([P_F[0], P_A[1], P_F[2]]))


def test_opposite_first():
    l_f, l_a = teacher_distributions(P_F, P_A, "opposite_first", 0.9)
    assert torch.equal(l_f, torch.stack([P_F[0], P_A[1], P_F[2]]))  # A confident only on row1
    assert torch.equal(l_a, torch.stack([P_F[0], P_A[1], P_F[2]]))  # F confident rows 0, 2


def test_maximum_and_ties_go_to_primary():
    pf = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    pa = torch.tensor([[0.1, 0.9], [0.4, 0.6]])  # row1: tie 0.6 vs 0.6
    l_f, l_a = teacher_distributions(pf, pa, "maximum", 0.9)
    assert torch.equal(l_f, l_a)
    assert torch.equal(l_f, torch.stack([pa[0], pf[1]]))


def test_average():
    l_f, l_a = teacher_distributions(P_F, P_A, "average", 0.9)
    assert torch.allclose(l_f, (P_F + P_A) / 2) and torch.equal(l_f, l_a)


def test_unknown_scheme():
    with pytest.raises(ValueError, match="algo.scheme"):
        teacher_distributions(P_F, P_A, "bogus", 0.9)


def test_pseudo_label_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    teacher = torch.tensor([[0.95, 0.05], [0.10, 0.90], [0.5, 0.5]])  # rows 0 and 1 (exactly 0.9) kept
    loss, mask, target = pseudo_label_loss(logits, teacher, 0.9)
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce1 = -math.log(math.exp(1) / (math.exp(1) + 1))
    assert mask.tolist() == [1.0, 1.0, 0.0]
    assert target.tolist()[:2] == [0, 1]
    assert loss.item() == pytest.approx((ce0 + ce1) / 3, rel=1e-6)  # divided by B_u, not by kept count


def test_nothing_above_threshold_is_zero_not_nan():
    logits = torch.randn(4, 3, requires_grad=True)
    teacher = torch.full((4, 3), 1 / 3)
    loss, mask, _ = pseudo_label_loss(logits, teacher, 0.9)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_valid_mask_excludes_skipped_clips():
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss_all, _, _ = pseudo_label_loss(logits, teacher, 0.9)
    loss_one, mask, _ = pseudo_label_loss(logits, teacher, 0.9, valid=torch.tensor([True, False]))
    assert mask.tolist() == [1.0, 0.0]
    assert loss_one.item() == pytest.approx(loss_all.item())  # mean over valid clips only


class Fixed(nn.Module):
    """Returns fixed logits per input 'id' (first pixel) so tests control every prediction."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        ids = x[:, 0, 0, 0, 0].long()
        return self.table[ids] * self.scale


def _clip(ids, t=2):
    x = torch.zeros(len(ids), 3, t, 4, 4)
    x[:, 0, 0, 0, 0] = torch.tensor(ids, dtype=torch.float)
    return x


def _batch():
    # ids 0: labeled; 1, 2: unlabeled weak; 3, 4: unlabeled strong
    return {
        "l_p": _clip([0]),
        "l_a": _clip([0], 4),
        "y_l": torch.tensor([0]),
        "u_weak_p": _clip([1, 2]),
        "u_strong_p": _clip([3, 4]),
        "u_weak_a": _clip([1, 2], 4),
        "u_strong_a": _clip([3, 4], 4),
        "y_u": torch.tensor([1, 0]),
    }


def test_cross_each_network_learns_from_the_other():
    big = 20.0
    table_f = torch.tensor([[0.0, 0.0], [big, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # F: u1 -> class 0
    table_a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, big], [0.0, 0.0], [0.0, 0.0]])  # A: u2 -> class 1
    f, a = Fixed(table_f), Fixed(table_a)
    loss, st = compute_objective(f, a, _batch(), algo="cmpl", scheme="cross", threshold=0.9, lambda_u=2.0)
    # F is taught by A (only u2 confident, label 1); A is taught by F (only u1 confident, label 0)
    assert st["mask_rate_f"].item() == pytest.approx(0.5) and st["mask_rate_a"].item() == pytest.approx(0.5)
    ln2 = math.log(2)
    assert st["loss_u_f"].item() == pytest.approx(ln2 / 2, rel=1e-5)  # strong logits are 0 -> CE ln2, /B_u=2
    assert st["loss_s_f"].item() == pytest.approx(ln2, rel=1e-5)
    assert loss.item() == pytest.approx(2 * ln2 + 2.0 * (ln2 / 2 + ln2 / 2), rel=1e-5)
    # y_u = [1, 0]: F's teacher (A) said class 1 for u2 whose truth is 0 -> wrong; A's teacher said 0 for u1 (truth 1)
    assert st["pl_acc_f"].item() == 0.0 and st["pl_correct_ratio_a"].item() == 0.0


def test_fixmatch_uses_own_predictions_only():
    table_f = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    f = Fixed(table_f)
    _, st = compute_objective(f, None, _batch(), algo="fixmatch", threshold=0.9, lambda_u=1.0)
    assert st["mask_rate_f"].item() == pytest.approx(0.5)
    assert st["pl_acc_f"].item() == 0.0  # pseudo label 0 for u1 whose truth is 1
    assert "loss_u_a" not in st


def test_supervised_only_labeled_loss():
    f = Fixed(torch.zeros(5, 2))
    loss, st = compute_objective(f, None, _batch(), algo="supervised")
    assert set(st) == {"loss_s_f", "loss"} and loss.item() == pytest.approx(math.log(2))


def test_no_gradient_through_teacher():
    torch.manual_seed(0)
    net_f = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 3))
    net_a = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4 * 4, 3))
    b = {
        "l_p": torch.randn(2, 3, 2, 4, 4),
        "l_a": torch.randn(2, 3, 4, 4, 4),
        "y_l": torch.tensor([0, 1]),
        "u_weak_p": torch.randn(3, 3, 2, 4, 4).requires_grad_(),
        "u_strong_p": torch.randn(3, 3, 2, 4, 4),
        "u_weak_a": torch.randn(3, 3, 4, 4, 4).requires_grad_(),
        "u_strong_a": torch.randn(3, 3, 4, 4, 4),
    }
    loss, _ = compute_objective(net_f, net_a, b, algo="cmpl", threshold=0.01, lambda_u=1.0, bn_mode="concat")
    loss.backward()
    assert b["u_weak_p"].grad is None or torch.all(b["u_weak_p"].grad == 0)
    assert b["u_weak_a"].grad is None or torch.all(b["u_weak_a"].grad == 0)


@pytest.mark.parametrize("bn_mode", ["concat", "separate"])
def test_bn_modes_run_and_update_running_stats(bn_mode):
    torch.manual_seed(0)
    net_f = nn.Sequential(nn.BatchNorm3d(3), nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 3))
    net_a = nn.Sequential(nn.BatchNorm3d(3), nn.Flatten(), nn.Linear(3 * 4 * 4 * 4, 3))
    b = {
        "l_p": torch.randn(2, 3, 2, 4, 4),
        "l_a": torch.randn(2, 3, 4, 4, 4),
        "y_l": torch.tensor([0, 1]),
        "u_weak_p": torch.randn(3, 3, 2, 4, 4) + 5,
        "u_strong_p": torch.randn(3, 3, 2, 4, 4),
        "u_weak_a": torch.randn(3, 3, 4, 4, 4) + 5,
        "u_strong_a": torch.randn(3, 3, 4, 4, 4),
    }
    before = net_f[0].num_batches_tracked.item()
    loss, _ = compute_objective(net_f, net_a, b, algo="cmpl", threshold=0.5, bn_mode=bn_mode)
    assert torch.isfinite(loss)
    # concat: one BN update over all 8 clips; separate: one per view (3)
    assert net_f[0].num_batches_tracked.item() - before == (1 if bn_mode == "concat" else 3)


def test_table6_switches_drop_aux_terms():
    f = Fixed(torch.zeros(5, 2))
    a = Fixed(torch.zeros(5, 2))
    loss_full, st = compute_objective(f, a, _batch(), algo="cmpl", threshold=0.4, lambda_u=1.0)
    loss_no_sa, _ = compute_objective(f, a, _batch(), algo="cmpl", threshold=0.4, lambda_u=1.0, aux_supervised=False)
    loss_no_ua, _ = compute_objective(f, a, _batch(), algo="cmpl", threshold=0.4, lambda_u=1.0, aux_unsupervised=False)
    assert loss_full.item() - loss_no_sa.item() == pytest.approx(st["loss_s_a"].item(), rel=1e-5)
    assert loss_full.item() - loss_no_ua.item() == pytest.approx(st["loss_u_a"].item(), rel=1e-5)


def test_bn_clean_keeps_strong_views_out_of_running_stats():
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm3d(3), nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 3))
    ref = nn.Sequential(nn.BatchNorm3d(3), nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 3))
    ref.load_state_dict(net.state_dict())
    lab, weak, strong = torch.randn(2, 3, 2, 4, 4), torch.randn(3, 3, 2, 4, 4), torch.randn(3, 3, 2, 4, 4) * 50 + 100
    from cmpl_ray.algorithm import _forward_views

    out = _forward_views(net, [lab, weak, strong], "clean")
    ref(torch.cat([lab, weak]))
    assert torch.allclose(net[0].running_mean, ref[0].running_mean)  # strong (mean ~100) left no trace
    assert torch.allclose(net[0].running_var, ref[0].running_var)
    assert net[0].momentum == ref[0].momentum  # restored
    assert [o.shape[0] for o in out] == [2, 3, 3] and not out[1].requires_grad and out[2].requires_grad


def test_pseudo_label_counts_hand_computed():
    from cmpl_ray.algorithm import pseudo_label_counts
    from cmpl_ray.train.loop import pseudo_label_per_class

    # 5 clips, 3 classes: true labels, pseudo-labels, kept mask, last clip failed to decode
    y_u = torch.tensor([0, 0, 1, 2, 2])
    target = torch.tensor([0, 1, 1, 1, 2])
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    valid = torch.tensor([True, True, True, True, False])
    c = pseudo_label_counts(mask, target, y_u, valid, 3)
    # class 0: 2 clips, both kept, 1 right; class 1: 1 clip, not kept; class 2: 1 valid clip, kept as 1 (wrong)
    # kept labels: 0 once (right), 1 twice (one from class 0, one from class 2, both wrong), 2 never (invalid clip)
    assert c.tolist() == [[2, 2, 1, 1], [1, 0, 0, 2], [1, 1, 0, 0]]
    pc = pseudo_label_per_class(c)
    assert pc["mask_rate"] == [100.0, 0.0, 100.0]
    assert pc["precision"][:2] == [100.0, 0.0] and math.isnan(pc["precision"][2])
    assert pc["recall"] == [50.0, 0.0, 0.0]
    # a clip whose list label is outside the classes (an unlabeled list from a bigger label set) counts nowhere
    c2 = pseudo_label_counts(torch.ones(2), torch.tensor([0, 2]), torch.tensor([0, 7]), None, 3)
    assert c2.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_objective_reports_per_class_counts_that_match_the_scalars():
    torch.manual_seed(0)
    k, b = 4, 6
    net_f, net_a = nn.Linear(3, k), nn.Linear(3, k)
    batch = {n: torch.randn(b, 3) for n in ("l_p", "l_a", "u_weak_p", "u_strong_p", "u_weak_a", "u_strong_a")}
    batch.update(y_l=torch.randint(0, k, (b,)), y_u=torch.randint(0, k, (b,)))
    _, stats = compute_objective(net_f, net_a, batch, algo="cmpl", threshold=0.0)
    for net in ("f", "a"):
        c = stats[f"pl_counts_{net}"]
        assert c.shape == (k, 4) and float(c[:, 0].sum()) == b
        assert float(c[:, 1].sum()) / b == pytest.approx(float(stats[f"mask_rate_{net}"]))
        assert float(c[:, 2].sum()) / float(c[:, 3].sum()) == pytest.approx(float(stats[f"pl_acc_{net}"]))


def test_bn_split_same_running_stats_as_separate_clean_views_and_no_graph_on_weak():
    """split: weak (no_grad) then labeled update the running averages, one update each; strong leaves none."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm3d(3), nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 3))
    ref = nn.Sequential(nn.BatchNorm3d(3), nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 3))
    ref.load_state_dict(net.state_dict())
    lab, weak, strong = (
        torch.randn(2, 3, 2, 4, 4),
        torch.randn(3, 3, 2, 4, 4) + 3,
        torch.randn(3, 3, 2, 4, 4) * 50 + 100,
    )
    from cmpl_ray.algorithm import _forward_views

    out = _forward_views(net, [lab, weak, strong], "split")
    ref(weak)
    ref(lab)
    assert torch.allclose(net[0].running_mean, ref[0].running_mean)
    assert torch.allclose(net[0].running_var, ref[0].running_var)
    assert net[0].num_batches_tracked.item() == 3 and net[0].momentum  # strong counts, at momentum 0 == ref[0].momentum
    assert [o.shape[0] for o in out] == [2, 3, 3]
    assert out[1].grad_fn is None and out[0].requires_grad and out[2].requires_grad  # no graph over weak rows


def test_bn_split_equals_clean_without_batchnorm():
    """Without BatchNorm the two modes compute the same loss and the same gradients (split only skips work)."""
    torch.manual_seed(0)
    net_f, net_a = nn.Linear(3, 4), nn.Linear(3, 4)
    batch = {n: torch.randn(6, 3) for n in ("l_p", "l_a", "u_weak_p", "u_strong_p", "u_weak_a", "u_strong_a")}
    batch.update(y_l=torch.randint(0, 4, (6,)), y_u=torch.randint(0, 4, (6,)))
    grads = []
    for mode in ("clean", "split"):
        net_f.zero_grad()
        net_a.zero_grad()
        loss, _ = compute_objective(net_f, net_a, batch, algo="cmpl", threshold=0.3, bn_mode=mode)
        loss.backward()
        grads.append((loss.item(), net_f.weight.grad.clone(), net_a.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0])
    assert torch.allclose(grads[0][1], grads[1][1]) and torch.allclose(grads[0][2], grads[1][2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a second CUDA stream needs a GPU")
def test_aux_stream_same_loss_and_gradients_as_one_stream():
    """``train.aux_stream`` only moves the auxiliary's kernels to another stream: loss and gradients unchanged."""
    from cmpl_ray.models import build_model

    torch.manual_seed(0)
    dev = torch.device("cuda")
    net_f, net_a = build_model("tiny", 4, 1.0, 0.0).to(dev), build_model("tiny", 4, 0.5, 0.0).to(dev)
    batch = {
        n: torch.randn(3, 3, 4, 16, 16, device=dev)
        for n in ("l_p", "l_a", "u_weak_p", "u_strong_p", "u_weak_a", "u_strong_a")
    }
    batch.update(y_l=torch.randint(0, 4, (3,), device=dev), y_u=torch.randint(0, 4, (3,), device=dev))
    out = []
    for stream in (None, torch.cuda.Stream(dev)):
        net_f.zero_grad(set_to_none=True)
        net_a.zero_grad(set_to_none=True)
        loss, _ = compute_objective(net_f, net_a, batch, algo="cmpl", threshold=0.0, aux_stream=stream)
        loss.backward()
        torch.cuda.synchronize()
        out.append((loss.item(), [p.grad.clone() for p in list(net_f.parameters()) + list(net_a.parameters())]))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    assert all(torch.allclose(g0, g1, rtol=1e-4, atol=1e-6) for g0, g1 in zip(out[0][1], out[1][1]))


def test_aux_stream_is_accepted_and_ignored_on_cpu():
    """On CPU the flag changes nothing: the same step, bit for bit, and the run identity ignores it."""
    from cmpl_ray.config import load_config
    from cmpl_ray.train.identity import VOLATILE_KEYS
    from cmpl_ray.train.loop import train_one_epoch

    assert "train.aux_stream" in VOLATILE_KEYS
    res = []
    for flag in ("false", "true"):
        cfg = load_config("demo", overrides=[f"train.aux_stream={flag}", "algo.threshold=0.01"])
        assert cfg.train.aux_stream is (flag == "true")
        torch.manual_seed(0)
        net_f, net_a = (nn.Sequential(nn.Flatten(), nn.Linear(12, 4)) for _ in range(2))
        batch = {
            n: torch.randint(0, 255, (2, 3, 1, 2, 2), dtype=torch.uint8)
            for n in ("l_p", "l_a", "u_weak_p", "u_strong_p", "u_weak_a", "u_strong_a")
        }
        batch.update(y_l=torch.tensor([0, 1]), y_u=torch.tensor([2, 3]))
        opt = torch.optim.SGD(list(net_f.parameters()) + list(net_a.parameters()), lr=0.1)
        train_one_epoch(
            net_f, net_a, opt, [batch], cfg, epoch=5, steps=1, global_step=0, total_steps=10, device=torch.device("cpu")
        )
        res.append(torch.cat([p.detach().flatten() for p in list(net_f.parameters()) + list(net_a.parameters())]))
    assert torch.equal(res[0], res[1])


def test_objective_kwargs_covers_every_config_derived_parameter():
    """Every keyword of compute_objective except the runtime ones comes from the config, in one place."""
    import inspect

    from cmpl_ray.config import load_config
    from cmpl_ray.train.build import objective_kwargs

    runtime = {"aux_stream"}  # a CUDA stream: chosen by the trainer, not the config
    params = [n for n, p in inspect.signature(compute_objective).parameters.items() if p.kind is p.KEYWORD_ONLY]
    cfg = load_config(
        "demo",
        overrides=[
            "algo.bn_mode=concat",
            "algo.aux_supervised=false",
            "algo.aux_unsupervised=false",
            "algo.scheme=maximum",
            "algo.lambda_u=3",
        ],
    )
    kw = objective_kwargs(cfg)
    assert set(kw) == set(params) - runtime
    for name, value in kw.items():
        assert value == getattr(cfg.algo, "name" if name == "algo" else name), name
    assert objective_kwargs(cfg, lambda_u=0.5)["lambda_u"] == 0.5  # the warm-up's scheduled weight
