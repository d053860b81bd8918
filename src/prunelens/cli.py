"""The ``prunelens`` command.

Every error a user can cause is printed as one line, ``prunelens: error: …``, with exit code 2
and no traceback; Ctrl-C leaves everything written so far in place (re-run to resume).

Under torchrun (``torchrun --nproc-per-node N -m prunelens prune|evaluate|run …``) every rank runs
the command; ``prune`` and ``evaluate`` share the work (see :mod:`prunelens.distributed`), the other
commands run on rank 0 alone, and output is printed by rank 0.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path

from prunelens.options import CONTROLS, DATA_ROOTS, MAX_N_BOOT, data_root_flag
from prunelens.errors import ConfigError, PrunelensError


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (exit code 2), like every other error. A parser
    with ``lists_suites`` ends its help with the suites and what each measures (read from their
    declarations only when help is asked for)."""

    lists_suites = False

    def error(self, message: str):
        self.exit(2, f"prunelens: error: {message} (see `{self.prog} --help`)\n")

    def format_help(self) -> str:
        text = super().format_help()
        if self.lists_suites:
            from prunelens.suite import all_suites
            text += "\nsuites:\n" + "".join(f"  {s.name:<18}{s.title}\n" for s in all_suites())
        return text


def _config_args(p: argparse.ArgumentParser, optional: bool) -> None:
    if optional:
        p.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    else:
        p.add_argument("config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set prune.rate=0.3 (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="if a run folder was made by a different config, move it aside and start over")


def _data_root_args(p: argparse.ArgumentParser) -> None:
    for option, (suites, text) in DATA_ROOTS.items():
        p.add_argument(data_root_flag(option), dest=option, metavar="PATH", help=(
            f"{text} (sets {', '.join(f'evaluate.{s}.{option}' for s in suites)})"))


def _data_root_overrides(args, suites: list[str] | None = None) -> list[str]:
    """``--set`` overrides for the data folders given by flag, for ``suites`` (default: all)."""
    overrides = []
    for option, (names, _) in DATA_ROOTS.items():
        value = getattr(args, option, None)
        if value:  # paths as JSON strings: the override parser reads YAML, where '#' starts a comment
            overrides += [f"evaluate.{s}.{option}={json.dumps(value)}" for s in names
                          if suites is None or s in suites]
    return overrides


def _resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ignore-unknown-options", action="store_true", help=(
        "resume a pool whose pool.json records options this version does not know (written by a "
        "later prunelens): its next levels are trained without them, and pool.json keeps their record"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunelens", description=(
        "Prune vision models into a pool of checkpoints and measure what pruning does to them."))
    parser.add_argument("--version", action="version", version=f"prunelens {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="prune → evaluate → report, on a config or the embedded demo")
    _config_args(p, optional=True)
    _data_root_args(p)
    _resume_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("prune", help="build (or resume) the pool of checkpoints of a config")
    _config_args(p, optional=False)
    _resume_args(p)
    p.add_argument("--control", choices=CONTROLS, help=(
        "then build the control pool <name>-random-mask (random masks with each layer's sparsity of "
        "the level) or <name>-random-reinit (the level's masks, fresh initial weights), each level "
        "retrained like the pool's"))
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("evaluate", help="measure every level of a pool with evaluation suites")
    p.lists_suites = True
    p.add_argument("run_dir")
    p.add_argument("--suite", dest="suites", action="append", metavar="SUITE",
                   help="suite to run (repeatable; default: every suite that applies; listed below)")
    p.add_argument("--levels", type=_int_list, help="comma-separated level indices (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an evaluation option, e.g. --set evaluate.interpretability.n_images=32")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: evaluate.device of the config)")
    _data_root_args(p)
    p.add_argument("--force", action="store_true", help="recompute results that are already complete")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("results", help="print per-level summaries (mean, 95%% CI, n, n_nan)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--suite", dest="suites", action="append", metavar="SUITE")
    p.add_argument("--metric", dest="metrics", action="append", metavar="METRIC")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("report", help="write the HTML report of one or several runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--out", help="output folder (default: RUN_DIR/report of the first run)")
    p.add_argument("--n-boot", type=_n_boot, help=f"bootstrap resamples, 100 to {MAX_N_BOOT} (default: "
                   "the run's evaluate.n_boot)")
    p.add_argument("--confidence", type=_confidence, default=0.95, help="level of the confidence "
                   "intervals, between 0 and 1 (default 0.95)")
    p.add_argument("--references", action="store_true", help="also draw the reference values the "
                   "suites' figures declare: the humans' accuracy per model-vs-human dataset in "
                   "Figure 6 (default: off, as the paper draws it)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("claims", help="test the papers' claims on one or several runs: statistic, "
                       "bootstrap CI and verdict per run and between runs (as in the report)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("-o", "--out", metavar="PATH", help="also write the table as CSV to PATH")
    p.add_argument("--n-boot", type=_n_boot, help="bootstrap resamples, at least 100 (default: the "
                   "run's evaluate.n_boot)")
    p.add_argument("--confidence", type=_confidence, default=0.95, help="confidence of the intervals "
                   "and of the verdicts, between 0 and 1 (default 0.95)")
    p.set_defaults(func=cmd_claims)

    p = sub.add_parser("explain", help="draw the paper's Figure 2: heatmaps of chosen images across levels")
    p.add_argument("run_dir")
    p.add_argument("--images", nargs="+", required=True, metavar="ID",
                   help="image ids: test-00003 … for the synthetic test split, 2007_000033 … for VOC")
    p.add_argument("--levels", type=_int_list, help="comma-separated level indices (default: all)")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="attribution methods (default: all that apply to the model; an unknown name "
                        "is refused with the list)")
    p.add_argument("-o", "--out", help="PNG path (default: RUN_DIR/results/interpretability/figure2_explain.png)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--voc-root", metavar="PATH", help="explain VOC images instead of the run's test split")
    p.add_argument("--voc-split", default="val")
    p.add_argument("--image-size", type=_positive_int, default=224,
                   help="VOC images: shorter side + centre crop")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("compare-schedules", help=(
        "gradual vs one-shot pruning of a config as a curve: a one-shot pool at every sparsity the "
        "gradual pool reaches, with the retraining epochs the gradual pool spent to get there"))
    _config_args(p, optional=False)
    p.add_argument("-o", "--out", help="folder for the comparison (default: OUTPUT_DIR/<name>-schedules); "
                                       "the pools go to OUTPUT_DIR/<name>-gradual and <name>-one-shot-NN "
                                       "(NN: the gradual level it matches)")
    p.add_argument("--levels", type=_positive_int, nargs="+", metavar="K",
                   help="gradual levels that get a one-shot pool (default: every pruned level)")
    _data_root_args(p)
    p.set_defaults(func=cmd_compare_schedules)

    p = sub.add_parser("pool", help="inspect a pool")
    pool_sub = p.add_subparsers(dest="pool_command", required=True, metavar="ACTION")
    show = pool_sub.add_parser("show", help="print the levels of a run folder")
    show.add_argument("run_dir")
    show.add_argument("--layers", action="store_true", help="also print per-layer sparsity")
    show.set_defaults(func=cmd_pool_show)
    upgrade = pool_sub.add_parser("upgrade", help="bring a run folder of an earlier prunelens to this "
                                                  "version's format (verifies every level first)")
    upgrade.add_argument("run_dir")
    upgrade.set_defaults(func=cmd_pool_upgrade)

    p = sub.add_parser("models", help="print the model registry: per model, the suites that apply "
                       "and why the others do not (any timm model as timm:<name>)")
    p.add_argument("names", nargs="*", help="models to list (default: every registered one)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("config", help="print the resolved config (defaults filled in)")
    p.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _data_root_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"level indices are >= 0, got '{text}'")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _n_boot(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 100:
        raise argparse.ArgumentTypeError(f"at least 100 bootstrap resamples are needed for a "
                                         f"percentile interval, got {value}")
    if value > MAX_N_BOOT:
        raise argparse.ArgumentTypeError(f"at most {MAX_N_BOOT} bootstrap resamples (more change the "
                                         f"intervals by less than their rounding), got {value}")
    return value


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a confidence level is between 0 and 1 (e.g. 0.95), got {text}")
    return value


def _version() -> str:
    import prunelens
    return prunelens.__version__


def cmd_prune(args) -> int:
    from prunelens.pruning import prune_run
    from prunelens.suite import load_configs

    from prunelens import distributed

    for cfg in load_configs(args.config, args.overrides):
        control = None
        if getattr(args, "control", None) and cfg.prune.control is None:
            from prunelens.pruning.runner import control_config

            control = control_config(cfg, args.control)  # a refused control, before any training
        pool = prune_run(cfg, force=args.force, ignore_unknown_options=args.ignore_unknown_options)
        if distributed.is_main():
            print(format_pool_table(pool))
        if control is not None:
            pool = prune_run(control, force=args.force)
            if distributed.is_main():
                print(format_pool_table(pool))
    return 0


def cmd_run(args) -> int:
    from prunelens.evaluate import evaluate_run
    from prunelens.pruning import prune_run
    from prunelens.report import build_report
    from prunelens.suite import check_suite_data, load_configs

    from prunelens import distributed

    configs = load_configs(args.config, args.overrides + _data_root_overrides(args))
    for cfg in configs:  # a missing VOC / model-vs-human folder is named now, not after training
        check_suite_data(cfg)
    stages = _Stages()
    pools = [stages.timed(f"prune {cfg.name}", prune_run, cfg, force=args.force,
                          ignore_unknown_options=args.ignore_unknown_options) for cfg in configs]
    for pool in pools:
        if distributed.is_main():
            print(format_pool_table(pool))
    for cfg, pool in zip(configs, pools):  # with this config's evaluate section, not pool.json's
        stages.timed(f"evaluate {pool.name}", evaluate_run, pool.run_dir, evaluate=cfg.evaluate)
    if not distributed.is_main():
        return 0
    out = None if len(pools) == 1 else Path(configs[0].output_dir) / "report"
    path = stages.timed("report", build_report, [p.run_dir for p in pools], out)
    print(stages.summary())
    print(f"report: {path}")
    return 0


class _Stages:
    """Wall time of each stage of ``prunelens run``, for the closing summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def timed(self, name: str, work, *args, **kwargs):
        start = time.perf_counter()
        try:
            return work(*args, **kwargs)
        finally:
            self.seconds[name] = time.perf_counter() - start

    def summary(self) -> str:
        parts = " · ".join(f"{name} {s:.0f} s" for name, s in self.seconds.items())
        return f"prunelens run: {parts} · total {sum(self.seconds.values()):.0f} s"


def cmd_evaluate(args) -> int:
    from prunelens.evaluate import evaluate_run

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"evaluate.device={args.device}")
    overrides += _data_root_overrides(args, args.suites)
    evaluate_run(args.run_dir, suites=args.suites, levels=args.levels, overrides=overrides,
                 force=args.force)
    return 0


def cmd_results(args) -> int:
    import pandas as pd

    from prunelens.results import load_results
    from prunelens.runfolder import RunFolder
    from prunelens.stats import summarize

    frame = load_results(args.run_dirs, suite=args.suites)
    if args.metrics:
        frame = frame[frame["metric"].isin(args.metrics)]
    if frame.empty:
        print("no results yet: run `prunelens evaluate RUN_DIR`")
        return 0
    summary = summarize(frame, n_boot=RunFolder(args.run_dirs[0]).config.evaluate.n_boot)
    if args.csv:
        print(summary.to_csv(index=False), end="")
        return 0
    summary["95% CI"] = [f"[{lo:.3f}, {hi:.3f}]" if lo == lo else "" for lo, hi in
                         zip(summary["ci_low"], summary["ci_high"])]
    summary["sparsity"] = summary["sparsity"].map(lambda s: f"{s:.1%}")
    summary = summary.rename(columns={"group": "run"})
    columns = ["run", "level", "sparsity", "suite", "metric", "method", "dataset", "condition",
               "mean", "95% CI", "n", "n_nan"]
    shown = summary[[c for c in columns if c in summary and (summary[c] != "").any()]]
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_columns", None):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_report(args) -> int:
    from prunelens.report import build_report

    path = build_report(args.run_dirs, args.out, n_boot=args.n_boot, confidence=args.confidence,
                        references=args.references)
    print(f"report: {path}")
    return 0


def cmd_claims(args) -> int:
    import pandas as pd

    from prunelens.io import atomic_write_bytes
    from prunelens.report import build_claims

    table = build_claims(args.run_dirs, n_boot=args.n_boot, confidence=args.confidence)
    if args.out:
        atomic_write_bytes(Path(args.out), table.to_csv(index=False).encode())
    if args.csv:
        print(table.to_csv(index=False), end="")
        return 0
    if table.empty:
        print("no claim can be tested yet: no results of a suite that declares one "
              "(run `prunelens evaluate RUN_DIR`)")
        return 0
    shown = table.assign(
        of=[" · ".join(v for v in row if v) for row in
            table[["metric", "method", "dataset", "condition"]].itertuples(index=False)],
        ci=[f"[{lo:.3f}, {hi:.3f}]" if lo == lo else "" for lo, hi in zip(table["ci_low"], table["ci_high"])],
        levels=[f"{a}/{b}" for a, b in zip(table["n_levels"], table["n_seeds"])])
    shown = shown.rename(columns={"ci": f"{args.confidence:.0%} CI", "p_holm": "p (Holm)",
                                  "levels": "levels/seeds"})
    columns = ["claim", "compared", "of", "statistic", "value", f"{args.confidence:.0%} CI", "p",
               "p (Holm)", "expected", "verdict", "levels/seeds"]
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_columns", None,
                           "display.max_colwidth", 60):
        print(shown[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"verdicts at {args.confidence:.0%} confidence, Holm-corrected over the rows with an expected "
          "sign; intervals resample levels and images (and seeds): see the report or README")
    return 0


def cmd_explain(args) -> int:
    from prunelens.explain.figure import explain_run

    path = explain_run(args.run_dir, args.images, args.out, levels=args.levels, methods=args.methods,
                       device=args.device, voc_root=args.voc_root, voc_split=args.voc_split,
                       image_size=args.image_size)
    print(f"figure: {path}")
    return 0


def cmd_compare_schedules(args) -> int:
    from prunelens.analysis.schedules import compare_schedules
    from prunelens.suite import load_configs

    configs = load_configs(args.config, args.overrides + _data_root_overrides(args))
    if len(configs) != 1:
        raise ConfigError(f"{args.config} describes {len(configs)} runs; compare-schedules takes one")
    cfg = configs[0]
    out = Path(args.out) if args.out else Path(cfg.output_dir) / f"{cfg.name}-schedules"
    table = compare_schedules(cfg, out, force=args.force, levels=args.levels)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"comparison: {out}")
    return 0


def cmd_pool_show(args) -> int:
    from prunelens.runfolder import RunFolder

    pool = RunFolder(args.run_dir)
    print(format_pool_table(pool))
    if args.layers:
        for level in pool.levels:
            print(f"\nlevel {level.index}:")
            for name, s in level.layer_sparsity.items():
                print(f"  {name:<60} {s:7.2%}")
    return 0


def cmd_pool_upgrade(args) -> int:
    from prunelens.pruning.store import upgrade_pool

    upgrade_pool(args.run_dir)
    return 0


def cmd_models(args) -> int:
    from prunelens.evaluate import suites_for_model
    from prunelens.models import list_models
    for name in args.names or list_models():
        applies = suites_for_model(name)
        print(f"{name}: {', '.join(s for s, why in applies.items() if why is None and '.' not in s)}")
        for part, why in applies.items():
            if why is not None:
                print(f"  not {part}: {why}")
    return 0


def cmd_config(args) -> int:
    import yaml

    from prunelens.suite import load_configs, resolved_suite_options

    for cfg in load_configs(args.config, args.overrides + _data_root_overrides(args)):
        raw = cfg.model_dump(mode="json")
        # every suite's options as it will run them, not only the keys the file gives
        extra = set(cfg.evaluate.model_extra or {})
        raw["evaluate"] = {**{k: v for k, v in raw["evaluate"].items() if k not in extra},
                           **resolved_suite_options(cfg)}
        print(yaml.safe_dump(raw, sort_keys=False).rstrip())
        print(f"# run folder: {cfg.run_dir}   identity: {cfg.identity_hash()}   experiment: "
              f"{cfg.experiment_hash()}\n---")
    return 0


def format_pool_table(pool) -> str:
    """The pool table (:meth:`prunelens.runfolder.RunFolder.table`) as text. Sparsity three ways:
    of the pruned weights, of all parameters, and as Cassano et al.'s code counts it (``paper``:
    of the Conv2d and Linear weights, :func:`prunelens.pruning.store.paper_sparsity`).
    A pool trained with ``train.validate_every`` adds the minimum error of the periodic validation
    (Pellegrini & Biroli's level error), headed by its split."""
    from prunelens.pruning.store import paper_sparsity

    def pct(v):
        return "    -" if v is None or v != v else f"{v:6.1%}"
    cfg = pool.config
    paper = paper_sparsity(pool)
    rows = pool.table()
    periodic = any(r["min_validation_error"] == r["min_validation_error"] for r in rows)
    min_head = f"min err ({cfg.train.validate_split})" if periodic else ""
    head = (f"{pool.name}: {cfg.model.name} on {cfg.data.name}, {cfg.prune.scope} {cfg.prune.retrain}, "
            f"{pool.run_dir}" + ("" if pool.complete else "  [incomplete]"))
    lines = [head, f"{'level':>5} {'sparsity':>9} {'of all':>7} {'paper':>7} {'train':>7} {'val':>7} "
                   f"{'test':>7} {'epochs':>6} {'time':>7}" + (f" {min_head:>15}" if periodic else "")]
    for row in rows:
        lines.append(f"{row['level']:>5} {pct(row['sparsity']):>9} {pct(row['sparsity_all']):>7} "
                     f"{pct(paper.get(row['level'])):>7} "
                     f"{pct(row['train_acc']):>7} {pct(row['val_acc']):>7} {pct(row['test_acc']):>7} "
                     f"{row['epochs']:>6} {row['wall_time_s']:>6.0f}s"
                     + (f" {pct(row['min_validation_error']):>15}" if periodic else ""))
    return "\n".join(lines)


# commands that share their work among torchrun's ranks; the others run on rank 0 alone
DISTRIBUTED_COMMANDS = (cmd_prune, cmd_evaluate, cmd_run)


class _Terminated(Exception):
    """SIGTERM: torchrun stopping the ranks (one of them failed, or torchrun was interrupted)."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    from prunelens import distributed

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed, one line)
        return int(exc.code or 0)
    warnings.showwarning = _show_note
    from prunelens.runfolder import forget_hashes
    forget_hashes()
    prefix = "prunelens: error: "
    if distributed.launched():
        prefix = f"prunelens: error (rank {os.environ.get('RANK', '?')}): "
        if args.func not in DISTRIBUTED_COMMANDS and os.environ.get("RANK", "0") != "0":
            return 0
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = int(args.func(args) or 0)
        distributed.shutdown()  # after a failure the process just exits: a broken group may not close
        return code
    except BaseException as exc:
        if distributed.launched():  # torchrun's SIGTERM must not cut the message short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return _report(exc, prefix)


def _report(exc: BaseException, prefix: str) -> int:
    """Print what a user needs to know about ``exc``; return the exit code (or re-raise a bug)."""
    from prunelens import distributed

    if isinstance(exc, distributed.RemoteError):
        return 2  # rank 0 prints it
    if isinstance(exc, PrunelensError):
        print(f"{prefix}{_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, OSError) and (exc.errno in _ENVIRONMENT_FAULTS or exc.filename):
        print(f"{prefix}{_environment_fault(exc)}", file=sys.stderr)
        return 2
    if isinstance(exc, BrokenPipeError):  # output piped into head & co.
        return 0
    if isinstance(exc, KeyboardInterrupt):
        print("\nprunelens: interrupted; everything completed so far is kept — re-run the same "
              "command to resume", file=sys.stderr)
        return 130
    if isinstance(exc, _Terminated):
        print(f"{prefix}stopped by SIGTERM (torchrun stops every rank when one fails; its report "
              f"names the rank that failed first). {distributed.RESUME_HINT}", file=sys.stderr)
        return 143
    raise exc


#: what the machine can refuse a command, and what the user can do about it
_ENVIRONMENT_FAULTS = {
    errno.ENOSPC: "free some space (or point the command at another disk)",
    errno.EDQUOT: "free some space within your quota (or use another disk)",
    errno.EROFS: "the file system is read-only: copy the folder somewhere writable, or give an "
                 "output folder there (-o / output_dir)",
    errno.EACCES: "fix the permissions of the file or its folder, or use another folder",
    errno.EPERM: "fix the permissions of the file or its folder, or use another folder",
    errno.EFBIG: "the file is larger than this system allows: raise the file-size limit",
}


def _environment_fault(exc: OSError) -> str:
    """One line for an OSError the machine raised about a file: which file, what, and the fix."""
    where = f"{exc.filename}: " if exc.filename else ""
    fix = _ENVIRONMENT_FAULTS.get(exc.errno, "check the path (and that its folders exist and are "
                                             "folders)")
    return (f"{where}{exc.strerror or os.strerror(exc.errno or 0)}; {fix}. Everything written "
            "before is kept: re-run the same command to continue")


def _one_line(message: str) -> str:
    return re.sub(r"\s*\n\s*", " ", message.strip())


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each: ``prunelens: note: …``."""
    print(f"prunelens: note: {_one_line(str(message))}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
