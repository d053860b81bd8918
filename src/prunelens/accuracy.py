"""The ``accuracy`` suite: top-1 accuracy of every level on the run's evaluation split."""
from __future__ import annotations

from collections.abc import Iterable

from prunelens.suite import (ACCURACY, Claim, FigureSpec, LevelContext, Metric, Record,
                             ReportSection, Suite, SuiteOptions, register_suite)

#: the section the report opens with: the pool tables and accuracy across levels
POOL_SECTION = ReportSection("pool", "Pool and accuracy",
                             "How does accuracy change as the network is pruned?", order=0)


class AccuracyOptions(SuiteOptions):
    split: str | None = None  # default: the dataset's evaluation split (ImageNet: val)


@register_suite
class AccuracySuite(Suite):
    """Top-1 accuracy on a split of the run's dataset, one 0/1 record per image."""

    name = "accuracy"
    title = "top-1 accuracy per image of the evaluation split"
    Options = AccuracyOptions
    section = POOL_SECTION
    metrics = (Metric("accuracy", "higher", "share of images classified correctly", unit="fraction",
                      figure="accuracy"),)
    figures = (FigureSpec("accuracy", "Test accuracy vs sparsity", panels=("metric",),
                          lines=("group", "dataset"), accuracy_axis=False),)
    in_schedule_comparison = True
    claims = (Claim("gradual_better_minima",
                    "Tartaglione et al.: gradual pruning finds better minima than one-shot — test "
                    "accuracy at the final level, one-shot − gradual at equal sparsity",
                    y=ACCURACY, statistic="final_mean", unit="images", between="schedule",
                    between_expected=-1),)

    def evaluate_level(self, ctx: LevelContext) -> Iterable[Record]:
        from prunelens.pruning.train import evaluate_model

        split = ctx.options.split or ctx.data.eval_split
        dataset = ctx.data.split(split)
        correct = evaluate_model(ctx.model, ctx.loader(dataset), ctx.spec, ctx.device)["correct"]
        ids = getattr(dataset, "item_ids", None) or [str(i) for i in range(len(dataset))]
        for item, c in zip(ids, correct.tolist()):
            yield Record("accuracy", "accuracy", float(c), dataset=split, item=item)
