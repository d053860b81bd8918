"""The ``prunelens`` command.

Every error a user can cause is printed as one line, ``prunelens: error: …``, with exit code 2
and no traceback; Ctrl-C leaves everything written so far in place (re-run to resume).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prunelens.errors import PrunelensError


def _config_args(p: argparse.ArgumentParser, optional: bool) -> None:
    if optional:
        p.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    else:
        p.add_argument("config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set prune.rate=0.3 (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="if a run folder was made by a different config, move it aside and start over")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunelens", description=(
        "Prune vision models into a pool of checkpoints and measure what pruning does to them."))
    parser.add_argument("--version", action="version", version=f"prunelens {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="prune → evaluate → report, on a config or the embedded demo")
    _config_args(p, optional=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("prune", help="build (or resume) the pool of checkpoints of a config")
    _config_args(p, optional=False)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("pool", help="inspect a pool")
    pool_sub = p.add_subparsers(dest="pool_command", required=True, metavar="ACTION")
    show = pool_sub.add_parser("show", help="print the levels of a run folder")
    show.add_argument("run_dir")
    show.add_argument("--layers", action="store_true", help="also print per-layer sparsity")
    show.set_defaults(func=cmd_pool_show)

    p = sub.add_parser("config", help="print the resolved config (defaults filled in)")
    p.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config)
    return parser


def _version() -> str:
    import prunelens
    return prunelens.__version__


def cmd_prune(args) -> int:
    from prunelens.config import load_configs
    from prunelens.pruning import prune_run

    for cfg in load_configs(args.config, args.overrides):
        pool = prune_run(cfg, force=args.force)
        print(format_pool_table(pool))
    return 0


def cmd_run(args) -> int:
    from prunelens.config import load_configs
    from prunelens.pruning import prune_run

    configs = load_configs(args.config, args.overrides)
    pools = [prune_run(cfg, force=args.force) for cfg in configs]
    for pool in pools:
        print(format_pool_table(pool))
    return 0


def cmd_pool_show(args) -> int:
    from prunelens.pool import Pool

    pool = Pool(args.run_dir)
    print(format_pool_table(pool))
    if args.layers:
        for level in pool.levels:
            print(f"\nlevel {level.index}:")
            for name, s in level.layer_sparsity.items():
                print(f"  {name:<60} {s:7.2%}")
    return 0


def cmd_config(args) -> int:
    import yaml

    from prunelens.config import load_configs

    for cfg in load_configs(args.config, args.overrides):
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
        print(f"# run folder: {cfg.run_dir}   pool hash: {cfg.pool_hash()}\n---")
    return 0


def format_pool_table(pool) -> str:
    def pct(v):
        return "    -" if v is None or v != v else f"{v:6.1%}"
    cfg = pool.config
    head = (f"{pool.name}: {cfg.model.name} on {cfg.data.name}, {cfg.prune.scope} {cfg.prune.retrain}, "
            f"{pool.run_dir}" + ("" if pool.complete else "  [incomplete]"))
    lines = [head, f"{'level':>5} {'sparsity':>9} {'train':>7} {'val':>7} {'test':>7} {'epochs':>6} {'time':>7}"]
    for lv in pool.levels:
        m = lv.metrics
        lines.append(f"{lv.index:>5} {pct(lv.sparsity):>9} {pct(m.get('train_acc')):>7} "
                     f"{pct(m.get('val_acc')):>7} {pct(m.get('test_acc')):>7} {lv.info['epochs']:>6} "
                     f"{lv.info['wall_time_s']:>6.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PrunelensError as exc:
        print(f"prunelens: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nprunelens: interrupted; everything completed so far is kept — re-run the same "
              "command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
