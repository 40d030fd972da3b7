"""Ray-free loop: lr schedule, lambda ramp, non-finite steps skipped and counted, then a clear stop."""

import pytest
import torch
from torch import nn

from cmpl_ray.config import load_config
from cmpl_ray.train.loop import NonFiniteLossError, evaluate, lambda_at, lr_at, summarize_eval, train_one_epoch


def test_lr_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_lambda_ramp():
    assert lambda_at(0.0, 4.0, 2.0) == 0.0 and lambda_at(1.0, 4.0, 2.0) == 2.0 and lambda_at(3.0, 4.0, 2.0) == 4.0
    assert lambda_at(0.0, 4.0, 0.0) == 4.0


class Tiny(nn.Module):
    def __init__(self, poison_after: int | None = None):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.calls, self.poison_after = 0, poison_after

    def forward(self, x):  # (B, C, T, H, W)
        self.calls += 1
        out = self.fc(x.mean(dim=(2, 3, 4)))
        if self.poison_after is not None and self.calls > self.poison_after:
            out = out * float("nan")
        return out


def batches(n):
    for _ in range(n):
        yield {"l_p": torch.randint(0, 255, (2, 3, 2, 4, 4), dtype=torch.uint8), "y_l": torch.tensor([0, 1])}


def test_non_finite_steps_are_skipped_counted_then_stop():
    cfg = load_config("demo", overrides=["algo.name=supervised", "train.max_bad_steps=3", "train.log_every=1"])
    net = Tiny(poison_after=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses"):
        train_one_epoch(
            net,
            None,
            opt,
            batches(10),
            cfg,
            epoch=0,
            steps=10,
            global_step=0,
            total_steps=10,
            device=torch.device("cpu"),
        )
    assert torch.isfinite(net.fc.weight).all()  # the poisoned steps never touched the weights
    cfg2 = load_config("demo", overrides=["algo.name=supervised", "train.max_bad_steps=5"])
    net2 = Tiny()
    res = train_one_epoch(
        net2,
        None,
        torch.optim.SGD(net2.parameters(), lr=0.1),
        batches(4),
        cfg2,
        epoch=0,
        steps=4,
        global_step=0,
        total_steps=4,
        device=torch.device("cpu"),
    )
    assert res.steps == 4 and res.skipped_steps == 0 and res.clips == 8


def test_isolated_bad_step_is_skipped_and_training_goes_on():
    cfg = load_config("demo", overrides=["algo.name=supervised", "train.max_bad_steps=2"])

    class OneBad(Tiny):
        def forward(self, x):
            out = super().forward(x)
            return out * float("inf") if self.calls == 2 else out

    net = OneBad()
    res = train_one_epoch(
        net,
        None,
        torch.optim.SGD(net.parameters(), lr=0.1),
        batches(5),
        cfg,
        epoch=0,
        steps=5,
        global_step=0,
        total_steps=5,
        device=torch.device("cpu"),
    )
    assert res.steps == 4 and res.skipped_steps == 1


def test_evaluate_multiview_hand_computed():
    class ByPixel(nn.Module):
        def forward(self, x):  # class = 0 if the first pixel is dark, else 1
            p = x[:, 0, 0, 0, 0]
            return torch.stack([-p * 10, p * 10], dim=1)

    dark, bright = torch.zeros(3, 1, 1, 1, dtype=torch.uint8), torch.full((3, 1, 1, 1), 255, dtype=torch.uint8)
    batch = {
        "v_p": torch.stack([torch.stack([dark, dark]), torch.stack([bright, dark])]),  # (B=2, V=2, C, T, H, W)
        "y": torch.tensor([0, 1]),
        "valid": torch.tensor([True, True]),
    }
    counts = evaluate(ByPixel(), None, [batch], 2, torch.device("cpu"))
    res = summarize_eval(counts, has_aux=False)
    # video 0: both views dark -> class 0 (right); video 1: one bright, one dark -> averaged softmax ~ tie
    assert counts["total"].tolist() == [1.0, 1.0] and counts["top1"][0] == 1.0
    assert res["val_top5"] == 100.0 and res["val_videos"] == 2.0
