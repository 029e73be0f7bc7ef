"""The shared measurement protocol: positive finite numbers, an honest spread, re-measurement."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from litv2cli.measure import protocol as measure
from litv2cli.measure.protocol import (
    cpu_model_name, device_name, interleaved, measure_latency, measure_peak_memory, measure_throughput,
    relative_spread,
)


def test_interleaved_cycles_rotate_the_order_and_keep_each_steps_values_in_its_own_order():
    calls = []

    def step(name):
        def run():
            calls.append(name)
            return len(calls)
        return run

    results = interleaved({"a": step("a"), "b": step("b"), "c": step("c")}, 3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert results == {"a": [1, 6, 8], "b": [2, 4, 9], "c": [3, 5, 7]}


class SleepFor(nn.Module):
    """A step whose duration we control: `durations` cycles (seconds)."""

    def __init__(self, durations: list[float]):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.durations = durations
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.durations[self.calls % len(self.durations)])
        self.calls += 1
        return self.linear(x.mean(dim=(2, 3)).repeat(1, 2)[:, :4])


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def test_throughput_is_a_positive_finite_median_with_its_spread_and_protocol():
    result = measure_throughput(tiny_cnn(), 4, (32, 32), warmup=1, repeats=5)
    assert result.images_per_s > 0 and math.isfinite(result.images_per_s)
    assert len(result.samples) == 5 and all(s > 0 and math.isfinite(s) for s in result.samples)
    assert min(result.samples) <= result.images_per_s <= max(result.samples)
    assert result.spread >= 0 and math.isfinite(result.spread)
    assert result.device.startswith("cpu") and result.timer == "perf_counter" and result.dtype == "float32"
    assert "batch 4" in result.protocol and "32x32" in result.protocol and "median of 5" in result.protocol


def test_median_matches_the_known_step_time():
    result = measure_throughput(SleepFor([0.04]), 2, (8, 8), warmup=1, repeats=5)
    assert result.images_per_s == pytest.approx(2 / 0.04, rel=0.25)
    assert result.latency_ms == pytest.approx(40.0, rel=0.25)


def test_spread_is_interquartile_range_over_median():
    assert relative_spread([10.0, 10.0, 10.0, 10.0]) == 0.0
    assert relative_spread([8.0, 9.0, 10.0, 11.0, 12.0]) == pytest.approx((11.0 - 9.0) / 10.0)


def test_noisy_measurement_is_remeasured_and_reported_unstable():
    # Steps alternate between 2 ms and 20 ms: every round's spread is far above 10%.
    result = measure_throughput(SleepFor([0.002, 0.02]), 1, (8, 8), warmup=0, repeats=6, max_rounds=3)
    assert result.rounds == 3
    assert not result.stable and result.spread > 0.10


def test_steady_measurement_is_accepted_after_one_round(monkeypatch):
    # The clock is replaced by identical step times: a busy test machine cannot make sleeps steady.
    monkeypatch.setattr(measure, "_timed_steps", lambda step, repeats, device: [0.01] * repeats)
    result = measure_throughput(tiny_cnn(), 1, (8, 8), warmup=1, repeats=5, max_rounds=3)
    assert result.rounds == 1 and result.stable and result.spread == 0.0
    assert result.images_per_s == pytest.approx(100.0)


def test_train_mode_times_backward_on_a_copy_and_leaves_the_weights_alone():
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = measure_throughput(model, 2, (16, 16), mode="train", warmup=1, repeats=3)
    assert result.mode == "train" and result.images_per_s > 0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert all(p.grad is None for p in model.parameters())


def test_latency_is_measured_at_batch_one_in_milliseconds():
    result = measure_latency(SleepFor([0.04]), (8, 8), warmup=1, repeats=3)
    assert result.batch_size == 1
    assert result.latency_ms == pytest.approx(40.0, rel=0.3)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        measure_throughput(tiny_cnn(), 0, (8, 8))
    with pytest.raises(ValueError):
        measure_throughput(tiny_cnn(), 1, (8, 8), mode="eval")  # type: ignore[arg-type]


def test_cpu_peak_memory_counts_weights_and_the_activations_of_the_step():
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    result = measure_peak_memory(model, 16, (128, 128))
    activation = 16 * 64 * 128 * 128 * 4  # one float32 conv output: 64 MiB
    assert result.peak_bytes >= activation
    assert result.details["weights_bytes"] == sum(p.numel() * 4 for p in model.parameters())
    assert "fresh process" in result.method and result.peak_bytes < 20 * activation


def test_cpu_device_name_states_the_processor_and_the_thread_count():
    threads = torch.get_num_threads()
    name = device_name(torch.device("cpu"))
    assert name.startswith("cpu (") and name.endswith(f"{threads} thread{'s' if threads != 1 else ''})")
    model = cpu_model_name()
    assert model is None or model in name


class RecordsComputeDtype(nn.Module):
    """A linear layer that records the dtype it computed in at every step. The record goes
    through a function, which `copy.deepcopy` shares, so copies of the module record there too."""

    def __init__(self, record):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.record = record

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.mean(dim=(2, 3)))
        self.record(out.dtype)
        return out


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_step_runs_under_the_autocast_dtype_with_float32_weights(mode, dtype):
    seen = []
    model = RecordsComputeDtype(seen.append)
    result = measure_throughput(model, 2, (8, 8), mode=mode, warmup=1, repeats=3, autocast_dtype=dtype)
    assert len(seen) >= 4 and set(seen) == {dtype}  # warm-up and timed steps (of every round) alike
    assert result.dtype == f"float32, autocast {str(dtype).removeprefix('torch.')}"
    assert f"float32, autocast {str(dtype).removeprefix('torch.')}" in result.protocol
    assert model.linear.weight.dtype == torch.float32


def test_latency_runs_under_the_autocast_dtype():
    seen = []
    measure_latency(RecordsComputeDtype(seen.append), (8, 8), warmup=1, repeats=2, autocast_dtype=torch.bfloat16)
    assert len(seen) >= 3 and set(seen) == {torch.bfloat16}


def test_cpu_peak_memory_runs_its_steps_under_the_autocast_dtype(monkeypatch):
    # The fresh process runs in this one instead, so that the steps it ran can be seen.
    monkeypatch.setattr(measure, "call_in_fresh_process", lambda function, *args, what, timeout: function(*args))
    seen = []
    result = measure_peak_memory(RecordsComputeDtype(seen.append), 2, (8, 8), autocast_dtype=torch.bfloat16)
    assert seen == [torch.bfloat16] * 2 and result.peak_bytes > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_last_gpu_is_timed_as_the_current_device_with_cudnn_autotuning(dtype):
    # With two GPUs or more this is not the default device: its events and statistics must follow it.
    index = torch.cuda.device_count() - 1
    device = torch.device("cuda", index)
    seen = []

    class RecordsCurrentDevice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((torch.cuda.current_device(), torch.backends.cudnn.benchmark))
            return self.conv(x).mean(dim=(2, 3))

    current, benchmark = torch.cuda.current_device(), torch.backends.cudnn.benchmark
    result = measure_throughput(RecordsCurrentDevice(), 2, (16, 16), device=device, warmup=1, repeats=3,
                                autocast_dtype=dtype)
    assert seen and set(seen) == {(index, True)} and result.timer == "cuda-events" and result.images_per_s > 0
    memory = measure_peak_memory(RecordsCurrentDevice(), 2, (16, 16), device=device, autocast_dtype=dtype)
    assert memory.peak_bytes > 0 and seen[-1] == (index, True)
    assert torch.cuda.current_device() == current and torch.backends.cudnn.benchmark == benchmark
