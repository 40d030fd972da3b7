"""Weight EMA used for evaluation: hand-computed updates, BN buffers, skipped steps, checkpoint round trip."""

import pytest
import torch
from torch import nn

from cmpl_ray.config import load_config
from cmpl_ray.models import build_model
from cmpl_ray.train.checkpoint import load_checkpoint, restore, save_checkpoint
from cmpl_ray.train.ema import WeightEma
from cmpl_ray.train.loop import train_one_epoch


def test_update_hand_computed_with_decay_warmup():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = WeightEma([net, None], decay=0.5)
    assert ema.current_decay() == pytest.approx(2 / 11)  # warm-up: (1 + n) / (10 + n) with n = 1
    with torch.no_grad():
        net.weight.fill_(11.0)
    ema.update()  # 2/11 * 0 + 9/11 * 11 = 9
    assert ema.nets[0].weight.item() == pytest.approx(9.0)
    ema.updates = 100  # past the warm-up: the configured decay
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update()  # 0.5 * 9 + 0.5 * 1
    assert ema.nets[0].weight.item() == pytest.approx(5.0)
    assert net.weight.item() == 1.0  # the live weights are never written
    assert not ema.nets[0].weight.requires_grad and ema.nets[1] is None


def test_bn_running_stats_are_averaged_and_counters_copied():
    bn = nn.BatchNorm1d(2)
    ema = WeightEma([bn], decay=0.9)
    ema.updates = 1000
    with torch.no_grad():
        bn.running_mean.fill_(10.0)
        bn.num_batches_tracked.fill_(7)
    ema.update()
    assert ema.nets[0].running_mean.tolist() == pytest.approx([1.0, 1.0])  # 0.9 * 0 + 0.1 * 10
    assert int(ema.nets[0].num_batches_tracked) == 7


def test_bad_decay_is_refused_with_the_key():
    with pytest.raises(ValueError, match="train.ema_decay"):
        load_config("demo", overrides=["train.ema_decay=1.0"])
    with pytest.raises(ValueError):
        WeightEma([nn.Linear(1, 1)], decay=0.0)


def test_loop_updates_once_per_applied_step_only():
    cfg = load_config("demo", overrides=["algo.name=supervised", "train.max_bad_steps=3"])

    class OneBad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.calls = nn.Linear(3, 2), 0

        def forward(self, x):  # (B, C, T, H, W)
            self.calls += 1
            out = self.fc(x.mean(dim=(2, 3, 4)))
            return out * float("nan") if self.calls == 2 else out

    net = OneBad()
    ema = WeightEma([net], decay=0.99)
    batches = (
        {"l_p": torch.randint(0, 255, (2, 3, 2, 4, 4), dtype=torch.uint8), "y_l": torch.tensor([0, 1])}
        for _ in range(5)
    )
    res = train_one_epoch(
        net,
        None,
        torch.optim.SGD(net.parameters(), lr=0.1),
        batches,
        cfg,
        epoch=0,
        steps=5,
        global_step=0,
        total_steps=5,
        device=torch.device("cpu"),
        ema=ema,
    )
    assert res.steps == 4 and ema.updates == 4  # the skipped non-finite step does not touch the average
    assert torch.isfinite(ema.nets[0].fc.weight).all()
    assert not torch.equal(ema.nets[0].fc.weight, net.fc.weight)  # it lags the live weights


def test_checkpoint_keeps_live_and_ema_weights_apart(tmp_path):
    f, a = build_model("tiny", 4, 1.0, 0.0), build_model("tiny", 4, 0.5, 0.0)
    ema = WeightEma([f, a], decay=0.9)
    with torch.no_grad():
        for p in list(f.parameters()) + list(a.parameters()):
            p.add_(1.0)
    ema.update()
    opt = torch.optim.SGD(list(f.parameters()) + list(a.parameters()), lr=0.1)
    save_checkpoint(
        tmp_path, primary=f, aux=a, optimizer=opt, scaler=None, epoch=0, global_step=1, config={}, metrics={}, ema=ema
    )
    state = load_checkpoint(tmp_path)
    live_f, live_a = build_model("tiny", 4, 1.0, 0.0), build_model("tiny", 4, 0.5, 0.0)
    restore(state, primary=live_f, aux=live_a)
    ema_f, ema_a = build_model("tiny", 4, 1.0, 0.0), build_model("tiny", 4, 0.5, 0.0)
    restore(state, primary=ema_f, aux=ema_a, weights="ema")
    assert torch.equal(live_f.fc.weight, f.fc.weight)
    assert torch.equal(ema_a.fc.weight, ema.nets[1].fc.weight) and not torch.equal(ema_a.fc.weight, a.fc.weight)
    again = WeightEma([live_f, live_a], decay=0.9)
    again.load_state_dict(state["ema"])  # resume continues the same average
    assert again.updates == 1 and torch.equal(again.nets[0].fc.weight, ema.nets[0].fc.weight)
