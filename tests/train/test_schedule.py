import math

import pytest
import torch

from multitune.config.schema import TrainConfig
from multitune.train.optim import build_optimizer, build_scheduler, warmup_steps


def lrs(name: str, total: int, warmup_ratio: float, peak: float = 1.0) -> list[float]:
    cfg = TrainConfig(lr_scheduler=name, warmup_ratio=warmup_ratio, learning_rate=peak)
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_cosine_warms_up_linearly_then_decays_to_zero():
    got = lrs("cosine", total=100, warmup_ratio=0.1)
    assert warmup_steps(TrainConfig(warmup_ratio=0.1), 100) == 10
    assert got[0] == 0.0 and got[5] == pytest.approx(0.5) and got[10] == pytest.approx(1.0)
    assert got[55] == pytest.approx(0.5)  # half-way through the decay
    assert got[99] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_linear_and_constant():
    linear = lrs("linear", total=20, warmup_ratio=0.0, peak=2.0)
    assert linear[0] == pytest.approx(2.0) and linear[10] == pytest.approx(1.0) and linear[19] == pytest.approx(0.1)
    constant = lrs("constant", total=20, warmup_ratio=0.1)
    assert constant[0] == 0.0 and constant[1] == pytest.approx(0.5) and set(constant[2:]) == {1.0}


def test_weight_decay_skips_vectors():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


def test_adamw_is_fused_on_one_device_and_steps_as_the_unfused_one(monkeypatch):
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    fused = build_optimizer(a, TrainConfig(weight_decay=0.1))
    assert all(g["fused"] for g in fused.param_groups)
    plain = torch.optim.AdamW([{"params": [b.weight], "weight_decay": 0.1}, {"params": [b.bias], "weight_decay": 0.0}],
                                lr=TrainConfig().learning_rate)
    x = torch.randn(5, 4)
    for _ in range(3):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # FSDP swaps parameters for DTensors after this
    assert not any(g["fused"] for g in build_optimizer(a, TrainConfig()).param_groups)
