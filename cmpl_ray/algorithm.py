"""The CMPL objective (Eq. 1-6 and Appendix A of Xu et al., CVPR 2022) in pure PyTorch, Ray-free.

Notation follows the paper: F is the primary network, A the auxiliary, p^F / p^A their softmax outputs on
the weak view of an unlabeled clip, l_F / l_A the distributions each network is taught with. Teachers are
always computed under stop-gradient (``detach``): a network is pulled towards its teacher's labels, never
the teacher towards the student.

BatchNorm: ``bn_mode="clean"`` (default) runs one forward over ``cat([labeled, weak])`` and one over the
strong views whose batch statistics are kept OUT of the running averages, so evaluation normalises with
statistics of undistorted clips (RandAugment + Cutout clips shift them; measured to cost FixMatch 15 points
of top-1 on the synthetic set). ``split`` keeps the strong views out of the running averages as ``clean`` does
but runs the weak views under ``no_grad`` and the labeled clips on their own: ``clean``'s backward pass also
runs over the weak rows, whose gradient is zero (their logits only feed the detached teacher), which is
B_u / (B_l + 2 B_u) of every network's backward work spent on nothing. ``concat`` is FixMatch's single forward
over ``cat([labeled, weak, strong])``; ``separate`` runs one forward per view (the weak one under ``no_grad``).

``aux_stream`` (GPU only, ``train.aux_stream``): the auxiliary's forward, and so its backward (autograd runs a
backward op on its forward op's stream), is queued on a second CUDA stream so that its small, latency-bound
kernels can run beside the primary's instead of after them; the math is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCHEMES = ("cross", "self_first", "opposite_first", "maximum", "average")
PL_COUNTS = "pl_counts_"
"""Stats keys with this prefix are (K, 4) :func:`pseudo_label_counts` tensors (summed), not scalar means."""


def teacher_distributions(p_f: Tensor, p_a: Tensor, scheme: str, threshold: float) -> tuple[Tensor, Tensor]:
    """Return (l_F, l_A): the class distributions that teach F and A (Appendix A).

    p_f, p_a: (B, K) probabilities of F and A on the weak views, already detached.
    cross: l_F = p^A, l_A = p^F (each network learns only from the other, Eq. 4-5).
    self_first / opposite_first: own (resp. other's) prediction if confident, else the other one.
    maximum: the more confident of the two for both (ties go to F). average: (p^F + p^A) / 2 for both.
    """
    conf_f = p_f.max(dim=1, keepdim=True).values >= threshold  # (B, 1)
    conf_a = p_a.max(dim=1, keepdim=True).values >= threshold
    if scheme == "cross":
        return p_a, p_f
    if scheme == "self_first":
        return torch.where(conf_f, p_f, p_a), torch.where(conf_a, p_a, p_f)
    if scheme == "opposite_first":
        return torch.where(conf_a, p_a, p_f), torch.where(conf_f, p_f, p_a)
    if scheme == "maximum":
        f_wins = p_f.max(dim=1, keepdim=True).values >= p_a.max(dim=1, keepdim=True).values
        best = torch.where(f_wins, p_f, p_a)
        return best, best
    if scheme == "average":
        avg = (p_f + p_a) / 2
        return avg, avg
    raise ValueError(f"algo.scheme: must be one of {SCHEMES}, got {scheme!r}")


def pseudo_label_loss(
    logits_strong: Tensor, teacher: Tensor, threshold: float, valid: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 1/4/5: masked cross-entropy of the strong view against the teacher's hard pseudo-label.

    Returns (loss, mask, pseudo_label). The loss is averaged over ALL (valid) B_u clips, so a batch with
    nothing above the threshold gives exactly 0 (not NaN), and the mask rate scales the signal as in the paper.
    """
    conf, target = teacher.max(dim=1)  # (B,), (B,)
    mask = (conf >= threshold).float()
    if valid is not None:
        mask = mask * valid.float()
    n = valid.float().sum().clamp(min=1.0) if valid is not None else torch.tensor(float(max(len(mask), 1)))
    ce = F.cross_entropy(logits_strong.float(), target, reduction="none")  # (B,)
    return (ce * mask).sum() / n.to(ce.device), mask, target


def supervised_loss(logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """Eq. 2/3: cross-entropy on labeled clips (invalid/skipped clips excluded)."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    if valid is None:
        return ce.mean()
    v = valid.float()
    return (ce * v).sum() / v.sum().clamp(min=1.0)


@contextmanager
def _frozen_bn_stats(net: nn.Module):
    """BatchNorm normalises with the batch's statistics but leaves the running statistics untouched."""
    saved = []
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            saved.append((m, m.momentum))
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, mom in saved:
            m.momentum = mom


def _forward_views(net: nn.Module, views: list[Tensor], bn_mode: str) -> list[Tensor]:
    """Logits of each view. views = [labeled, weak, strong] (weak may be absent). weak comes back detached."""
    if bn_mode == "clean" and len(views) == 3:
        sizes = [v.shape[0] for v in views[:2]]
        parts = list(torch.split(net(torch.cat(views[:2], dim=0)), sizes, dim=0))  # (B_l + B_u, K)
        with _frozen_bn_stats(net):
            parts.append(net(views[2]))  # strong: its own batch statistics, not in the running average
    elif bn_mode == "split" and len(views) == 3:
        with torch.no_grad():
            weak = net(views[1])  # (B_u, K): batch statistics of the weak views, running averages updated
        lab = net(views[0])  # (B_l, K): the only clean view that needs a gradient
        with _frozen_bn_stats(net):
            strong = net(views[2])
        parts = [lab, weak, strong]
    elif bn_mode == "concat":
        sizes = [v.shape[0] for v in views]
        out = net(torch.cat(views, dim=0))  # (sum B, K)
        parts = list(torch.split(out, sizes, dim=0))
    elif bn_mode in ("separate", "clean", "split"):
        parts = []
        for i, v in enumerate(views):
            if len(views) == 3 and i == 1:
                with torch.no_grad():
                    parts.append(net(v))
            else:
                parts.append(net(v))
    else:
        raise ValueError(f"algo.bn_mode: must be concat, separate, clean or split, got {bn_mode!r}")
    if len(parts) == 3:
        parts[1] = parts[1].detach()  # stop-gradient on the teacher view
    return parts


def pseudo_label_counts(mask: Tensor, target: Tensor, y_u: Tensor, valid: Tensor | None, num_classes: int) -> Tensor:
    """(K, 4) per-class counts of one batch's pseudo-labels, summed over steps (and ranks) by the caller:
    column 0 clips of true class k, 1 of those kept (above the threshold), 2 of those kept with the right label,
    3 clips whose kept pseudo-label is k. So per class: mask rate = c1 / c0, recall = c2 / c0 and precision
    = c2 / c3 (a class can be over-predicted while its own clips stay below the threshold)."""
    y, t = y_u.long(), target.long()
    ok = valid.float() if valid is not None else torch.ones_like(mask)
    ok = ok * ((y >= 0) & (y < num_classes)).float()  # a label outside the classes (unknown) counts nowhere
    y = y.clamp(0, num_classes - 1)
    kept = mask * ok
    out = torch.zeros(num_classes, 4, device=mask.device)
    out[:, 0].index_add_(0, y, ok)
    out[:, 1].index_add_(0, y, kept)
    out[:, 2].index_add_(0, y, kept * (t == y).float())
    out[:, 3].index_add_(0, t, kept)
    return out


def _pl_stats(
    prefix: str, mask: Tensor, target: Tensor, y_u: Tensor | None, valid: Tensor | None, num_classes: int = 0
) -> dict[str, Tensor]:
    n = valid.float().sum().clamp(min=1.0) if valid is not None else torch.tensor(float(len(mask)), device=mask.device)
    stats = {f"mask_rate_{prefix}": mask.sum() / n}
    if y_u is not None:
        correct = (target == y_u).float() * mask
        stats[f"pl_acc_{prefix}"] = correct.sum() / mask.sum().clamp(min=1.0)  # precision of kept labels
        stats[f"pl_correct_ratio_{prefix}"] = correct.sum() / n  # Fig. 2: correct pseudo-labels / all clips
        if num_classes:  # not a scalar: the loop sums it apart from the means (see PL_COUNTS)
            stats[f"{PL_COUNTS}{prefix}"] = pseudo_label_counts(mask, target, y_u, valid, num_classes)
    return stats


def compute_objective(
    primary: nn.Module,
    aux: nn.Module | None,
    batch: Mapping[str, Tensor],
    *,
    algo: str = "cmpl",
    scheme: str = "cross",
    threshold: float = 0.9,
    lambda_u: float = 1.0,
    aux_supervised: bool = True,
    aux_unsupervised: bool = True,
    bn_mode: str = "clean",
    aux_stream: torch.cuda.Stream | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Full training objective for one step and its statistics (detached tensors).

    batch keys (float, normalised, (B, C, T, H, W)):
      ``l_p``, ``l_a``: labeled clip, standard view, at the primary's / auxiliary's frame rate; ``y_l`` labels.
      ``u_weak_p``, ``u_strong_p``, ``u_weak_a``, ``u_strong_a``: unlabeled views; optional ``y_u`` true
      labels (benchmark setting, statistics only); optional ``l_valid`` / ``u_valid`` bool masks of clips
      that decoded (skipped samples keep the batch shape but do not count).
    algo: supervised -> L_s^F; fixmatch -> L_s^F + lambda L_u^F (F teaches itself, Eq. 1);
      cmpl -> (L_s^F + L_s^A) + lambda (L_u^F + L_u^A) (Eq. 6), teachers from ``scheme``.
    aux_stream: a CUDA stream for the auxiliary's forward/backward (cmpl only; None: the current stream).
    """
    l_valid, u_valid = batch.get("l_valid"), batch.get("u_valid")
    y_u = batch.get("y_u")
    stats: dict[str, Tensor] = {}
    if algo == "supervised":
        logits = primary(batch["l_p"])
        loss_s_f = supervised_loss(logits, batch["y_l"], l_valid)
        stats["loss_s_f"] = loss_s_f.detach()
        stats["loss"] = loss_s_f.detach()
        return loss_s_f, stats

    side = aux_stream if algo == "cmpl" and aux is not None else None
    main = torch.cuda.current_stream() if side is not None else None
    if side is not None:  # before the primary is queued: the side stream waits only for the batch's copies
        side.wait_stream(main)
    lo_l_f, lo_w_f, lo_s_f = _forward_views(primary, [batch["l_p"], batch["u_weak_p"], batch["u_strong_p"]], bn_mode)
    loss_s_f = supervised_loss(lo_l_f, batch["y_l"], l_valid)
    p_f = torch.softmax(lo_w_f.float(), dim=1)
    if algo == "fixmatch":
        loss_u_f, mask_f, target_f = pseudo_label_loss(lo_s_f, p_f, threshold, u_valid)
        loss = loss_s_f + lambda_u * loss_u_f
        stats.update(loss_s_f=loss_s_f.detach(), loss_u_f=loss_u_f.detach(), loss=loss.detach())
        stats.update(_pl_stats("f", mask_f, target_f, y_u, u_valid, lo_w_f.shape[1]))
        return loss, stats
    if algo != "cmpl":
        raise ValueError(f"algo.name: must be supervised, fixmatch or cmpl, got {algo!r}")
    if aux is None:
        raise ValueError("algo.name=cmpl needs an auxiliary network")

    views_a = [batch["l_a"], batch["u_weak_a"], batch["u_strong_a"]]
    with torch.cuda.stream(side) if side is not None else nullcontext():
        lo_l_a, lo_w_a, lo_s_a = _forward_views(aux, views_a, bn_mode)
    if side is not None:  # the caching allocator must not hand these blocks out while the other stream reads them
        for v in views_a:
            v.record_stream(side)
        main.wait_stream(side)
        for t in (lo_l_a, lo_w_a, lo_s_a):
            t.record_stream(main)
    loss_s_a = supervised_loss(lo_l_a, batch["y_l"], l_valid)
    p_a = torch.softmax(lo_w_a.float(), dim=1)
    l_f, l_a = teacher_distributions(p_f, p_a, scheme, threshold)
    loss_u_f, mask_f, target_f = pseudo_label_loss(lo_s_f, l_f, threshold, u_valid)
    loss_u_a, mask_a, target_a = pseudo_label_loss(lo_s_a, l_a, threshold, u_valid)
    sup = loss_s_f + (loss_s_a if aux_supervised else 0.0 * loss_s_a)
    unsup = loss_u_f + (loss_u_a if aux_unsupervised else 0.0 * loss_u_a)
    # 0 * term keeps every parameter in the graph, so DDP needs no find_unused_parameters for Table 6 runs
    loss = sup + lambda_u * unsup
    stats.update(
        loss_s_f=loss_s_f.detach(),
        loss_s_a=loss_s_a.detach(),
        loss_u_f=loss_u_f.detach(),
        loss_u_a=loss_u_a.detach(),
        loss=loss.detach(),
    )
    stats.update(_pl_stats("f", mask_f, target_f, y_u, u_valid, lo_w_f.shape[1]))
    stats.update(_pl_stats("a", mask_a, target_a, y_u, u_valid, lo_w_a.shape[1]))
    return loss, stats
