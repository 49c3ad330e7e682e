"""The ``incop`` command line: a thin layer that builds a config and hands it to the library."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from incop.config import FIELD_NAMES, Config, field_type, load_yaml, resolve
from incop.errors import UserError

# Flags named in the docs first; every other config field gets a flag of its own name too.
_HELP = {
    "method": "lth, random, sap, sap-acc, incop-if, incop-gf",
    "model": "a registered model name (see `incop list`)",
    "dataset": "digits (embedded), mnist, fashion-mnist, cifar10",
    "data_dir": "folder with the dataset files (env INCOP_DATA_DIR)",
    "levels": "pruning rounds after the dense warm-up",
    "max_epochs": "cap E on retraining epochs per level",
    "warmup_epochs": "dense training epochs before the first prune",
    "out": "run folder (default runs/<time>-<method>-<dataset>-<model>)",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of settings; flags override it")
    for name in FIELD_NAMES:
        flag = "--" + name.replace("_", "-")
        kind = field_type(name)
        help_text = _HELP.get(name, f"default: {Config.__dataclass_fields__[name].default!r}")
        if kind is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            # Strings here; the config coerces and validates with messages naming the field.
            metavar = "A,B" if kind is list else kind.__name__.upper()
            parser.add_argument(flag, dest=name, metavar=metavar, help=help_text)


def config_from_args(args: argparse.Namespace) -> Config:
    file_values = load_yaml(args.config) if args.config else {}
    flag_values = {name: getattr(args, name) for name in FIELD_NAMES}
    return resolve(file_values, flag_values)


def default_out(config: Config) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{stamp}-{config.method}-{config.dataset}-{config.model}")


def cmd_run(args: argparse.Namespace) -> int:
    from incop.experiment import run_experiment

    config = config_from_args(args)
    if config.out is None:
        config.out = default_out(config)
    result = run_experiment(config, progress=True)
    print(result.table())
    print(f"\nresults in {config.out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from incop.config import METHODS
    from incop.data import DATASETS
    from incop.models import MODELS

    for title, names in (
        ("methods", METHODS.names()),
        ("models", MODELS.names()),
        ("datasets", DATASETS.names()),
    ):
        print(f"{title}: {', '.join(names)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="incop",
        description="Iterative magnitude pruning, fast: LTH, SAP and InCoP stopping rules.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run one IMP experiment")
    _add_config_flags(run)
    run.set_defaults(handler=cmd_run)
    listing = commands.add_parser("list", help="list methods, models and datasets")
    listing.set_defaults(handler=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"incop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("incop: interrupted", file=sys.stderr)
        return 130


def entry(argv: Any = None) -> None:
    sys.exit(main(argv))
