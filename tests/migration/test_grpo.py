"""GRPOTrainer as TRL 1.16 documents it; what is compared and why is in online_cases.py."""

from __future__ import annotations

import pytest

from .harness import LIBS, check
from .online_cases import make_cases

CASES = make_cases("GRPO")


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("case", CASES)
def test_grpo(case, lib, models, tmp_path_factory):
    script, key = CASES[case]
    check(f"grpo/{case}", script, lib, models, tmp_path_factory, key=key)
