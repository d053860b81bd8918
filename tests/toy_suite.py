"""A suite defined outside prunelens, as a user would add one: this module and one line in
``prunelens.suite.SUITE_MODULES`` (tests/test_suite_api.py adds that line for its tests)."""
from __future__ import annotations

import numpy as np

from prunelens import suite as contract
from prunelens.results import Record


class ToyOptions(contract.SuiteOptions):
    gain: float = 0.1


@contract.register_suite
class ToySuite(contract.Suite):
    """A score that rises with the level's sparsity, one record per image."""

    name = "toy"
    title = "a toy score that rises with sparsity"
    Options = ToyOptions
    section = contract.ReportSection("toy", "Toy question", "Does pruning raise the toy score?",
                                     order=60)
    metrics = (contract.Metric("score", "higher", "a higher toy score is better", unit="fraction",
                               figure="toy"),)
    figures = (contract.FigureSpec("toy", "Toy score vs sparsity", panels=("metric",),
                                   lines=("group",)),)

    @classmethod
    def describe(cls, options):
        return f"toy gain {options.gain}"

    def evaluate_level(self, ctx):
        rng = np.random.default_rng(ctx.level.index)
        for i in range(40):
            yield Record(self.name, "score", 0.5 + ctx.options.gain * ctx.level.sparsity
                         + float(rng.normal(0, 0.01)), item=f"img-{i}")
