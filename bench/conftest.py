"""Fixtures of the op microbenchmarks (``pytest bench --benchmark-only``; pytest-benchmark).

Not part of the test command: pyproject's ``testpaths`` is python_tests only. Triton is
benchmarked on a GPU only (under TRITON_INTERPRET=1 on a CPU it runs in Python), so this
file, unlike python_tests/conftest.py, does not set TRITON_INTERPRET.
"""
from __future__ import annotations

import pytest
import torch

def pytest_addoption(parser):
    parser.addoption("--bench-rounds", type=int, default=3,
                     help="timed rounds per op benchmark (one untimed warm-up round before them)")


@pytest.fixture
def bench_rounds(request) -> int:
    return request.config.getoption("--bench-rounds")


@pytest.fixture(autouse=True)
def fixed_seed():
    """Same inputs in every run, so --benchmark-compare compares like with like."""
    torch.manual_seed(0)
