"""pytest plugin: which device each test trained on.

Load with ``-p device_probe`` (benchmarks/gpu on PYTHONPATH). It wraps ``transformers.Trainer.training_step``
(SFT, reward, DPO/KTO: posttrain's PostTrainer and TRL's) and ``OnlineTrainer.begin_training`` (GRPO, RLOO,
PPO, ReST) to note the device of the model's first parameter, per test, and prints a summary at the end:
how many tests trained on cuda and which trained on the CPU. ``DEVICE_PROBE_LOG=path`` also writes it there.
Tests that never train (pure tensor or data tests) are not counted, nor training inside fixtures. Works under
pytest-xdist: each test's devices ride on its report (``user_properties``, also in the junit xml).
"""

from __future__ import annotations

import collections
import os

import pytest

_seen: dict[str, set[str]] = collections.defaultdict(set)
_current = {"test": "(outside a test)"}


def _note(model) -> None:
    try:
        _seen[_current["test"]].add(str(next(model.parameters()).device.type))
    except Exception:  # a model without parameters: nothing to note
        pass


def pytest_configure(config):
    import transformers

    original_step = transformers.Trainer.training_step

    def training_step(self, model, *args, **kwargs):
        _note(model)
        return original_step(self, model, *args, **kwargs)

    transformers.Trainer.training_step = training_step
    try:
        from posttrain.trainers.online import OnlineTrainer
    except Exception:
        return
    original_begin = OnlineTrainer.begin_training

    def begin_training(self, *args, **kwargs):
        _note(self.model)
        return original_begin(self, *args, **kwargs)

    OnlineTrainer.begin_training = begin_training


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _current["test"] = item.nodeid
    yield
    _current["test"] = "(outside a test)"
    if _seen.get(item.nodeid):  # travels with the report: pytest-xdist workers send it to the controller
        item.user_properties.append(("trained_on", ",".join(sorted(_seen[item.nodeid]))))


def pytest_runtest_logreport(report):
    if report.when == "call":
        for key, value in getattr(report, "user_properties", ()):
            if key == "trained_on":
                _seen[report.nodeid].update(value.split(","))


def pytest_terminal_summary(terminalreporter):
    by_device = collections.Counter()
    cpu_tests = []
    for test, devices in sorted(_seen.items()):
        for d in devices:
            by_device[d] += 1
        if "cpu" in devices:
            cpu_tests.append(test)
    lines = [f"device probe: tests that trained, by device of the trained model: {dict(by_device)}"]
    lines += [f"  trained on cpu: {t}" for t in cpu_tests]
    for line in lines:
        terminalreporter.write_line(line)
    path = os.environ.get("DEVICE_PROBE_LOG")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            for test, devices in sorted(_seen.items()):
                f.write(f"{test}\t{','.join(sorted(devices))}\n")
