"""The ``incop`` command line: a thin layer that builds a config and hands it to the library."""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from incop.config import (
    WHERE_FIELDS,
    Config,
    as_saved,
    choices,
    default_value,
    field_names,
    field_type,
    help_line,
    load_yaml,
    method_defaults,
    resolve,
)
from incop.core.registry import closest
from incop.engine.folders import MANIFEST_FILE
from incop.errors import StorageError, UserError
from incop.tools.study import TOLERANCE
from incop.tools.ticket.formats import FORMATS


def field_help(name: str) -> str:
    """A field's ``--help`` line: what it is, its default, its allowed values, and the value
    each method sets where that differs."""
    parts = [help_line(name), f"default: {_shown(default_value(name))}"]
    allowed = choices().get(name)
    if allowed:
        parts.append("allowed: " + ", ".join(allowed))
    per_method = method_defaults(name)
    if per_method:
        parts.append("methods set: " + ", ".join(f"{m} {_shown(v)}" for m, v in per_method.items()))
    # argparse formats help with %, so a literal one must be doubled.
    return "; ".join(parts).replace("%", "%%")


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _add_config_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    parser.add_argument("--config", help="YAML file of settings; flags override it")
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the interrupted run in DIR from its last epoch (only --data-dir and"
        " --download may be given with it: they say where, not what)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the earlier result in the --out folder"
    )
    for name in field_names():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        kind = field_type(name)
        if kind is bool:
            # --flag, --flag false (as YAML spells it) and --no-flag all work.
            parser.add_argument(
                flag, dest=name, nargs="?", const="true", metavar="BOOL", help=field_help(name)
            )
            parser.add_argument(
                "--no-" + flag[2:], dest=name, action="store_const", const="false",
                help=argparse.SUPPRESS,
            )  # fmt: skip
        else:
            # Strings here; the config coerces and validates with messages naming the field.
            metavar = "A,B" if kind is list else kind.__name__.upper()
            parser.add_argument(flag, dest=name, metavar=metavar, help=field_help(name))


def _add_analysis_flags(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--baseline",
        metavar="METHOD",
        help="the method every other is paired with, seed by seed, in the report's"
        f" statistics (default: {default or 'sap'})",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        metavar="POINTS",
        help="the report's cheapest point of each method is within this many points of the"
        f" dense validation accuracy (default: {default or TOLERANCE})",
    )


def _add_nproc_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="data-parallel on N processes of this machine: launches this command with"
        " torchrun --nproc_per_node N (gloo on CPU, NCCL on GPUs; the batch size stays global)",
    )


class _Parser(argparse.ArgumentParser):
    """No abbreviated options: ``--method`` must never silently mean ``--methods``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave: the YAML file, then the flags over it (unresolved)."""
    values = load_yaml(args.config) if args.config else {}
    if args.config and _in_run_folder(Path(args.config)):
        values = as_saved(values)
    flags = {name: getattr(args, name, None) for name in field_names()}
    return {**values, **{k: v for k, v in flags.items() if v is not None}}


def default_out(what: str, config: Config) -> str:
    """``runs/<time>-<token>-<what>-<dataset>-<model>``: a new folder per run, distinct even
    for runs started in the same second (the token is random)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    token = secrets.token_hex(3)
    return str(Path("runs") / f"{stamp}-{token}-{what}-{config.dataset}-{config.model}")


def _mode(args: argparse.Namespace) -> str:
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    return "resume" if args.resume else "overwrite" if args.overwrite else "new"


def _in_run_folder(path: Path) -> bool:
    """Whether ``path`` is the ``config.yaml`` of a folder incop wrote (its manifest beside)."""
    return path.name == "config.yaml" and (path.parent / MANIFEST_FILE).is_file()


#: What a run's config.yaml has held since the first incop: without them it is not one.
RUN_CORE = ("method", "model", "dataset", "seed", "levels", "warmup_epochs", "max_epochs")


def _saved(args: argparse.Namespace, file: str) -> dict[str, Any]:
    """The settings saved in a run folder, for --resume, with the flags that say where the
    data is (``--data-dir``, ``--download``) over them; any other setting is refused."""
    given = overrides_from_args(args)
    refused = [name for name in given if name not in WHERE_FIELDS or name == "out"]
    if refused:
        raise UserError(
            f"resume: continues the run as it was configured; remove {', '.join(refused)}"
            " (only --data-dir and --download may change on resume)"
        )
    path = Path(args.resume) / file
    if not path.exists():
        raise UserError(f"resume: {args.resume!r} holds no {file}, so no run to continue")
    saved = load_yaml(path)
    # A setting added by a later incop is absent from an older run's config and ran as its
    # default (resume checks the settings so); these every run's config has always held.
    expected = RUN_CORE if file == "config.yaml" else ["settings", "methods", "seeds"]
    missing = [name for name in expected if name not in saved]
    if missing:
        raise UserError(
            f"resume: {path} is incomplete or corrupt (it lacks {', '.join(missing)});"
            " this run cannot be resumed"
        )
    if file == "config.yaml":
        return {**as_saved(saved), **given}
    return {**saved, "settings": {**saved["settings"], **given}}


def cmd_run(args: argparse.Namespace) -> int:
    mode = _mode(args)
    if mode == "resume":
        config = resolve({**_saved(args, "config.yaml"), "out": args.resume})
    else:
        config = resolve(overrides_from_args(args))
    # Only now, the config checked: a refusal of bad input never waits for torch.
    from incop.engine.distributed import current_world, launch
    from incop.engine.experiment import run_experiment

    if config.out is None:
        config.out = default_out(config.method, config)
    if args.nproc is not None:  # checked above, before any process starts
        return launch(args.nproc, [*_without_nproc(args.argv), *_out_flag(args, mode, config.out)])
    world = current_world()
    # Under torchrun every rank drew its own default name: rank 0's is the folder.
    config.out = world.from_main(config.out)
    result = run_experiment(config, progress=True, mode=mode)
    if not world.is_main:
        return 0
    print(result.table())
    print(f"\nfinal ticket, per layer:\n{result.sparsity.format()}")
    print(f"\nresults in {config.out}")
    return 0


def _out_flag(args: argparse.Namespace, mode: str, out: str) -> list[str]:
    """``--out`` for the ranks when the user gave none: one folder, named once, here."""
    return [] if mode == "resume" or args.out else ["--out", str(out)]


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` (or ``--nproc=N``): what each rank runs."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--nproc":
            skip = True
        elif not token.startswith("--nproc="):
            kept.append(token)
    return kept


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seeds is not None:
        try:
            return [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise UserError(
                f"seeds: {args.seeds!r} is not a comma-separated list of integers"
            ) from None
    if args.trials < 1:
        raise UserError(f"trials: {args.trials} is not allowed; must be >= 1")
    return list(range(args.trials))


def cmd_compare(args: argparse.Namespace) -> int:
    from incop.tools.compare import (
        check_analysis,
        check_plan,
        check_sweep,
        format_table,
        method_config,
        parse_sweep,
        run_comparison,
    )

    mode = _mode(args)
    if mode == "resume":
        if args.sweep:
            raise UserError("resume: continues the sweep as it was planned; remove --sweep")
        plan = _saved(args, "compare.yaml")
        overrides, methods, seeds, out = (
            plan["settings"],
            plan["methods"],
            plan["seeds"],
            args.resume,
        )
        sweep = plan.get("sweep") or {}
        analysis = {**plan.get("analysis", {}), **_analysis_flags(args)}
    else:
        overrides = overrides_from_args(args)
        overrides.pop("method", None)
        methods = [m.strip() for m in args.methods.split(",")]
        if any(not m for m in methods):
            raise UserError(
                f"methods: {args.methods!r} has an empty name; give comma-separated methods,"
                " e.g. sap,incop-gf"
            )
        seeds = _seeds(args)
        check_plan(methods, seeds, overrides)
        sweep = parse_sweep(args.sweep)
        check_sweep(sweep, methods, seeds[0], overrides)
        analysis = _analysis_flags(args)
        first = method_config(overrides, methods[0], seeds[0])
        out = overrides.pop("out", None) or default_out("compare", first)
    check_analysis(methods, **analysis)
    # Only now, the plan checked: a refusal of bad input never waits for torch.
    from incop.engine.distributed import current_world, launch
    from incop.tools.report import write_report

    if args.nproc is not None:
        return launch(args.nproc, [*_without_nproc(args.argv), *_out_flag(args, mode, out)])
    world = current_world()
    # Under torchrun every rank drew its own default name: rank 0's is the folder.
    out = world.from_main(out)
    comparison = run_comparison(overrides, methods, seeds, out=out, sweep=sweep, progress=True,
                                mode=mode, **analysis)  # fmt: skip
    if not world.is_main:
        return 0
    print(format_table(comparison))
    print(f"\nreport: {write_report(out)}")
    return 0


def _analysis_flags(args: argparse.Namespace) -> dict[str, Any]:
    """``--baseline`` and ``--tolerance`` where given."""
    given = {"baseline": args.baseline, "tolerance": args.tolerance}
    return {k: v for k, v in given.items() if v is not None}


def cmd_report(args: argparse.Namespace) -> int:
    from incop.tools.report import write_report

    print(f"report: {write_report(args.folder, **_analysis_flags(args))}")
    return 0


def _number_or(value: str, word: str, name: str, kind: type = float) -> Any:
    """``value`` as a ``kind``, or None where it is ``word``."""
    if value == word:
        return None
    try:
        return kind(value)
    except ValueError:
        raise UserError(f"{name}: {value!r} is not allowed; give {word} or a number") from None


def cmd_limit(args: argparse.Namespace) -> int:
    from incop.config import max_threads
    from incop.tools.limit import LimitOptions, format_limit, measure_limit

    if args.threads is not None:
        if not 1 <= args.threads <= max_threads():
            raise UserError(
                f"threads: {args.threads} is not allowed; must be in 1..{max_threads()}"
            )
        import torch

        torch.set_num_threads(args.threads)
    options = LimitOptions(
        level=args.level, samples=args.samples, batch_size=args.batch_size,
        eps=_number_or(args.eps, "auto", "eps"), lanczos_iters=args.lanczos_iters,
        probes=args.probes, zero_rows=_number_or(args.zero_rows, "off", "zero_rows", int),
        density=args.density, grid=args.grid, seed=args.seed, actual=args.actual,
        tolerance=args.tolerance, strict=args.strict,
    )  # fmt: skip
    summary = measure_limit(args.run, options, model=args.model, dataset=args.dataset,
                            data_dir=args.data_dir, out=args.out, progress=True)  # fmt: skip
    print(format_limit(summary))
    print(f"\nlimit.json and limit.csv in {args.out or args.run}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from incop.tools.ticket import export_ticket

    out = export_ticket(args.run, args.format, args.out, level=args.level)
    print(f"{args.format}: {out} ({out.stat().st_size:,} bytes)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from incop.config import COMPONENTS, METHODS, PRESETS, SECTIONS, option_specs
    from incop.core.callbacks import LOGGERS
    from incop.workload.data import DATASETS
    from incop.workload.models import MODELS

    specs = option_specs()
    for title, registry in {"methods": METHODS, **COMPONENTS, "log": LOGGERS}.items():
        print(f"{title}:")
        width = max(map(len, registry.names()))
        for name in registry.names():
            print(f"  {name:<{width}}  {registry.help(name)}")
    for title, names in (
        ("presets", PRESETS.names()),
        ("models", MODELS.names()),
        ("datasets", DATASETS.names()),
        ("export formats", FORMATS.names()),
    ):
        print(f"{title}: {', '.join(names)}")
    print("settings (flags of `incop run`, keys of a config file), by section:")
    width = max(map(len, specs))
    owned: dict[str, list[str]] = {}
    for name, spec in specs.items():
        for kind, component in spec.owners:
            owned.setdefault(f"{kind} {component}", []).append(name)
    groups = {section: [s.name for s in _fields(options)] for section, options in SECTIONS.items()}
    for group, names in {**groups, **owned}.items():
        print(f"  [{group}]")
        for name in names:
            print(f"  {name:<{width}}  {specs[name].help}")
    return 0


def _fields(options: type) -> list[Any]:
    return [f for f in dataclasses.fields(options) if f.init]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="incop",
        description="Iterative magnitude pruning, fast: LTH, SAP and InCoP stopping rules.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = commands.add_parser("run", help="run one IMP experiment")
    _add_config_flags(run)
    _add_nproc_flag(run)
    run.set_defaults(handler=cmd_run)
    compare = commands.add_parser(
        "compare", help="run several methods on one config, several seeds; plots and a report"
    )
    # --methods, not --method: each method of the comparison sets its own.
    _add_config_flags(compare, skip=("method",))
    compare.add_argument(
        "--methods",
        default="lth,sap,sap-acc,incop-if,incop-gf",
        help="comma-separated methods (default: %(default)s)",
    )
    compare.add_argument("--trials", type=int, default=3, help="seeds 0..N-1 (default 3)")
    compare.add_argument("--seeds", help="comma-separated seeds, instead of --trials")
    compare.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="[METHOD:]FIELD=V1,V2",
        help="run every chosen method that uses FIELD (METHOD: that one only) once per listed"
        " value (repeatable: a grid); each point is its own run, seeds share their dense"
        " warm-up",
    )
    _add_analysis_flags(compare)
    _add_nproc_flag(compare)
    compare.set_defaults(handler=cmd_compare)
    report = commands.add_parser("report", help="rebuild plots and report of a comparison folder")
    report.add_argument("folder", help="a folder written by `incop compare`")
    _add_analysis_flags(report, default="the comparison's")
    report.set_defaults(handler=cmd_report)
    export = commands.add_parser(
        "export", help="write a run's ticket in a format other programs load"
    )
    export.add_argument("run", metavar="RUN_DIR", help="a run folder (or one of its checkpoints)")
    export.add_argument(
        "--format",
        required=True,
        help="the file format: "
        + "; ".join(f"{name}: {FORMATS.get(name).description}" for name in FORMATS.names()),
    )
    export.add_argument("--out", required=True, help="the file to write (must not exist)")
    export.add_argument(
        "--level", type=int, help="the level (default: the fine-tuned ticket, else the last)"
    )
    export.set_defaults(handler=cmd_export)
    limit = commands.add_parser(
        "limit", help="predict how far a trained network can be pruned (Zhang et al. 2024)"
    )
    limit.add_argument("run", metavar="RUN_DIR", help="a run folder, or a checkpoint with --model")
    limit.add_argument("--model", help="the model of a checkpoint file")
    limit.add_argument("--dataset", help="the dataset of a checkpoint file")
    limit.add_argument("--data-dir", help="where the dataset is")
    limit.add_argument(
        "--level",
        type=int,
        default=0,
        help="the level measured (default 0: theta*; the theory assumes a trained minimum)",
    )
    limit.add_argument(
        "--samples",
        type=int,
        help="training examples, a seeded subset (default: 8192, or the split)",
    )
    limit.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    limit.add_argument(
        "--eps",
        default="auto",
        help="the loss tolerance: auto (the std of the batch losses) or a number",
    )
    limit.add_argument("--lanczos-iters", type=int, default=128, help="default: %(default)s")
    limit.add_argument("--probes", type=int, default=1, help="Lanczos starts (default 1)")
    limit.add_argument(
        "--zero-rows",
        default="off",
        help="magnitude quantiles tested for zero Hessian rows: off or a count"
        " (the official code: 100)",
    )
    limit.add_argument(
        "--density",
        default="quadrature",
        help="quadrature, or official (the official code's grid and integer R,"
        " for reproduction only)",
    )
    limit.add_argument("--grid", type=int, default=1000, help="points of pi (default 1000)")
    limit.add_argument("--seed", type=int, default=0, help="default 0")
    limit.add_argument(
        "--actual",
        action="store_true",
        help="also prune once at every pi and find the actual threshold on the"
        " validation split (test accuracy reported apart)",
    )
    limit.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="--actual: accuracy may fall this far below the dense one",
    )
    limit.add_argument(
        "--strict",
        action="store_true",
        help="--actual: strictly above the dense accuracy (the official rule)",
    )
    limit.add_argument("--out", help="the folder for limit.json and limit.csv (default: the run)")
    limit.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    limit.set_defaults(handler=cmd_limit)
    listing = commands.add_parser("list", help="list methods, models and datasets")
    listing.set_defaults(handler=cmd_list)
    return parser


def _unknown_options(parser: argparse.ArgumentParser, command: str | None, extra: list[str]) -> str:
    """One line per unknown option, with the closest valid one of that command."""
    chosen = parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            chosen = action.choices[command]
    valid = [option for action in chosen._actions for option in action.option_strings]
    options = [token.split("=", 1)[0] for token in extra if token.startswith("-")]
    if not options:
        return f"unexpected argument {extra[0]!r} for incop {command or ''}".rstrip()
    where = f"incop {command}" if command else "incop"
    return "\n".join(f"unknown option {o} for {where}{closest(o, valid)}" for o in options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if extra:
        print(f"incop: error: {_unknown_options(parser, args.command, extra)}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"incop: error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"incop: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"incop: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("incop: interrupted", file=sys.stderr)
        return 130


def entry(argv: Any = None) -> None:
    sys.exit(main(argv))
