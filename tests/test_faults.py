"""Injected faults and hostile inputs, the cases of ``bench/faults.py`` (see ``tests/faultcases.py``).

Every fault must be survived (nothing lost, nothing let in) and every input handled: decoded
correctly, or refused with a one-line message while the rest of the batch completes.
"""

from __future__ import annotations

import pytest

from faultcases import FAULTS, Context, cli_input_results, library_input_results, upload_input_results


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, sample_dir) -> Context:
    return Context(tmp_path_factory.mktemp("faults"), sample_dir)


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.__name__ for fault in FAULTS])
def test_fault_is_survived(fault, ctx):
    fault(ctx)


@pytest.mark.parametrize("inputs", [library_input_results, upload_input_results, cli_input_results],
                         ids=["library", "uploads", "cli"])
def test_hostile_inputs_are_handled(inputs, ctx):
    results = inputs(ctx)
    assert len(results) >= 10
    assert [r for r in results if not r.handled] == []
