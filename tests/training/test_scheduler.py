import pytest
import torch
from torch.optim import AdamW

from deepsynth.training.errors import ConfigError
from deepsynth.training.scheduler import (
    build_scheduler,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)


def _optimizer():
    return AdamW(torch.nn.Linear(10, 10).parameters(), lr=2e-5)


def test_seed_test_3_runs_and_prints_learning_rates(capsys):
    # The seed's Test 3, as written.
    optimizer = _optimizer()
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=100, num_training_steps=1000)
    seen = {}
    for step in range(1000):
        optimizer.step()
        scheduler.step()
        if step in [0, 10, 50, 100, 500, 999]:
            lr = scheduler.get_last_lr()[0]
            seen[step] = lr
            print(f"Step {step}: LR = {lr:.2e}")
    out = capsys.readouterr().out
    assert "Step 0: LR = 2.00e-07" in out  # after 1 of 100 warmup updates
    assert seen[10] < seen[50] < seen[100]  # warming up
    assert seen[100] == pytest.approx(2e-5, rel=1e-3)  # peak
    assert seen[500] < seen[100] and seen[999] < 1e-9  # cosine decay to zero


def test_linear_schedule_decays_linearly():
    optimizer = _optimizer()
    scheduler = get_linear_schedule_with_warmup(optimizer, 10, 110)
    lrs = []
    for _ in range(110):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert lrs[9] == pytest.approx(2e-5)
    assert lrs[59] == pytest.approx(1e-5)
    assert lrs[-1] == 0


@pytest.mark.parametrize("kind, at_end", [("cosine", 0.0), ("linear", 0.0), ("constant", 2e-5), ("none", 2e-5)])
def test_build_scheduler_by_type(kind, at_end):
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, kind, num_warmup_steps=5, num_training_steps=20)
    first = scheduler.get_last_lr()[0]
    for _ in range(20):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(at_end, abs=1e-12)
    assert first == (2e-5 if kind == "none" else 0.0)  # "none": no warmup at all


def test_unknown_scheduler_is_refused():
    with pytest.raises(ConfigError, match="scheduler_type"):
        build_scheduler(_optimizer(), "exponential", 1, 10)
