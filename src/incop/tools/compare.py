"""Methods side by side (METHOD.md sections 7, 10.2): one shared dense warm-up per seed, every
method (and every point of a sweep) pruned from it, the mean / standard deviation over trials
and every run's numbers in ``comparison.json``.

Layout of a comparison folder::

    compare.yaml                    what was asked: settings, methods, seeds (for --resume)
    comparison.json                 aggregate (see :func:`aggregate`)
    manifest.json                   every file incop wrote here with its SHA-256: its own, and
                                    those of each finished run, recorded when it finished
    warmup/seed-<s>/                the shared dense warm-up of each seed as it trains (a run
                                    folder holding level 0 only, resumable epoch by epoch)
    warmup/seed-<s>.pt              the finished warm-up the methods of seed s start from (those
                                    with another dense phase, e.g. at init, train their own)
    <method>/seed-<s>/              each run folder exactly as ``incop run`` writes it
    <method>/<field>=<v>,.../seed-<s>/   the same for each point of a sweep (--sweep)
    plots/, report.md, report.html  written by :func:`incop.tools.report.write_report`
    frontier.json, frontier.png     the cost frontier, where a method has several points
    .incop.lock                     held (flock) by the one process writing the folder
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import platform
import re
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from incop.config import (
    COMPONENTS,
    MAX_SEED,
    METHODS,
    WHERE_FIELDS,
    Config,
    dense_phase,
    field_names,
    field_type,
    resolve,
    unused_by,
)
from incop.core.registry import closest
from incop.engine.folders import LOCK_FILE, MANIFEST_FILE, Layout, Manifest, OwnedFolder
from incop.errors import UserError
from incop.tools.study import TOLERANCE, analyse, binomial_se, matching, trained_dense
from incop.version import __version__
from incop.workload.data import Batches, load_dataset
from incop.workload.models import build_model

if TYPE_CHECKING:
    import torch

    from incop.core.world import World
    from incop.engine.phases import WarmUp


DEFAULT_METHODS = ("lth", "sap", "sap-acc", "incop-if", "incop-gf")
#: Methods every other one is compared against, when they are in the comparison.
BASELINES = ("sap", "lth")
#: Per-level fields averaged over trials.
LEVEL_FIELDS = (
    "remaining_fraction",
    "epochs",
    "val_accuracy",
    "test_accuracy",
    "train_seconds",
    "eval_seconds",
    "flow_seconds",
    "macs_fraction",
)


PLAN_FILE = "compare.yaml"
#: What a comparison writes again whenever it finishes or reports (``plots/`` too): a resume
#: may find them missing.
REWRITTEN = ("comparison.json", "report.md", "report.html", "frontier.json", "frontier.png")


#: Settings a sweep cannot vary: what names a run (--methods and --seeds do), where it reads
#: and writes, and the choice of a component (a method names its rule: compare methods).
NOT_SWEPT = ("method", "preset", "seed", "counts_from", *WHERE_FIELDS, *COMPONENTS)
#: How a swept value may look, as it names the point's folder.
POINT_VALUE = r"[\w.+-]+"
POINT = rf"{POINT_VALUE}={POINT_VALUE}(?:,{POINT_VALUE}={POINT_VALUE})*"


def value_text(value: Any) -> str:
    """A swept value as YAML spells it, in a point's name and folder."""
    if isinstance(value, bool):
        return str(value).lower()
    return "none" if value is None else str(value)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One point of a comparison: a method and the swept values it runs with (none when no
    swept field is one the method uses). ``name``: its key in ``comparison.json``;
    ``relative``: its folder, ``<method>`` or ``<method>/<field>=<value>,...``."""

    method: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return " ".join([self.method, *(f"{k}={value_text(v)}" for k, v in self.params)])

    @property
    def relative(self) -> str:
        point = ",".join(f"{k}={value_text(v)}" for k, v in self.params)
        return f"{self.method}/{point}" if point else self.method

    def overrides(self, base: dict[str, Any]) -> dict[str, Any]:
        return {**base, **dict(self.params)}


def run_folder(out: Path, variant: str | Variant, seed: int) -> Path:
    variant = Variant(variant) if isinstance(variant, str) else variant
    return out / variant.relative / f"seed-{seed}"


def sweep_key(key: str) -> tuple[str | None, str]:
    """``[METHOD:]FIELD`` -> (the one method it is for, or None for every one; the field)."""
    method, sep, name = key.rpartition(":")
    return (method if sep else None), name


def parse_sweep(texts: Sequence[str]) -> dict[str, list[str]]:
    """``--sweep [METHOD:]FIELD=V1,V2,...`` flags -> key -> the values as given (checked, per
    method, by :func:`check_sweep`); ``METHOD:`` sweeps the field for that method only.
    Refuses a malformed flag, an unknown or unsweepable field, a key given twice, and an
    empty or repeated value."""
    sweep: dict[str, list[str]] = {}
    names = field_names()
    for text in texts:
        key, sep, listed = text.partition("=")
        method, name = sweep_key(key.strip())
        name = name.replace("-", "_")
        where = f"--sweep {text}"
        values = [v.strip() for v in listed.split(",")]
        if not sep or not name:
            raise UserError(f"{where}: give FIELD=V1,V2,..., e.g. --sweep delta=0,0.01")
        if name not in names:
            raise UserError(f"{where}: unknown field {key.strip()!r}{closest(name, names)}")
        if name in NOT_SWEPT:
            raise UserError(
                f"{where}: {name} cannot be swept ({', '.join(NOT_SWEPT)} say what runs and"
                " where; compare methods with --methods, seeds with --seeds)"
            )
        if field_type(name) is list:
            raise UserError(f"{where}: {name} holds a list; a sweep varies one value")
        key = f"{method}:{name}" if method else name
        if key in sweep:
            raise UserError(f"{where}: {key} is swept twice; list its values once")
        if any(not v for v in values):
            raise UserError(f"{where}: an empty value; list values as V1,V2,...")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise UserError(f"{where}: {', '.join(repeated)} given more than once")
        sweep[key] = values
    return sweep


def _uses(method: str, name: str, value: Any, overrides: dict[str, Any]) -> bool:
    return _reaches(name, method) and name not in unused_by(method, {**overrides, name: value})


def check_sweep(
    sweep: dict[str, list[Any]], methods: Sequence[str], seed: int, overrides: dict[str, Any]
) -> dict[str, list[Any]]:
    """The sweep with each value as the config holds it (``"0"`` -> ``0.0`` for a float),
    every value checked as its flag would be, for every method that uses the field. Refused
    when no chosen method uses a field (or the one a ``METHOD:`` key names does not), when a
    method would get one field from two keys, or a field is also set outside the sweep."""
    checked: dict[str, list[Any]] = {}
    given = {k.replace("-", "_") for k in overrides}
    fields_of: dict[str, list[str]] = {}
    for key, values in sweep.items():
        only, name = sweep_key(key)
        if name in given:
            raise UserError(f"--sweep {key}: also set as --{name.replace('_', '-')} (or in"
                            " the config file); give its values in one place")  # fmt: skip
        if only is not None and only not in methods:
            raise UserError(f"--sweep {key}: {only!r} is not among the methods"
                            f" ({', '.join(methods)})")  # fmt: skip
        users = _users(key, values, methods, overrides)
        if not users:
            whom = (
                f"{only} does not use" if only else f"no chosen method ({', '.join(methods)}) uses"
            )
            raise UserError(f"--sweep {key}: would be ignored: {whom} it")
        for method in users:
            if name in fields_of.setdefault(method, []):
                raise UserError(f"--sweep {key}: {method} already sweeps {name}")
            fields_of[method].append(name)
        checked[key] = []
        for value in values:
            for method in users:
                try:
                    config = method_config({**overrides, name: value}, method, seed)
                except UserError as exc:
                    raise UserError(f"--sweep {key}={value}: {exc}") from None
            canonical = getattr(config, name)
            if not re.fullmatch(POINT_VALUE, value_text(canonical)):
                raise UserError(f"--sweep {key}={value}: a swept value may hold only letters,"
                                " digits and . + - _ (it names the point's folder)")  # fmt: skip
            checked[key].append(canonical)
        shown = [value_text(v) for v in checked[key]]
        if len(set(shown)) < len(shown):
            raise UserError(f"--sweep {key}: {', '.join(values)} name the same value twice")
    return checked


def _users(
    key: str, values: list[Any], methods: Sequence[str], overrides: dict[str, Any]
) -> list[str]:
    """The methods a sweep key reaches: every chosen one that uses its field, or the one it
    names (if that one uses it)."""
    only, name = sweep_key(key)
    chosen = [m for m in methods if m in METHODS and (only is None or m == only)]
    return [m for m in chosen if _uses(m, name, values[0], overrides)]


def plan_variants(
    methods: Sequence[str], sweep: dict[str, list[Any]], overrides: dict[str, Any]
) -> list[Variant]:
    """Every point of the comparison: each method over the grid of the swept fields it uses
    (method by method, in the order given; a method using none runs once)."""
    variants = []
    for method in methods:
        keys = [k for k, values in sweep.items() if method in _users(k, values, [method],
                                                                        overrides)]  # fmt: skip
        names = [sweep_key(k)[1] for k in keys]
        for combo in itertools.product(*(sweep[k] for k in keys)):
            variants.append(Variant(method, tuple(zip(names, combo, strict=True))))
    return variants


def open_comparison(out: str | Path, mode: str) -> OwnedFolder:
    """The comparison folder ``out``, checked (not yet opened) for ``mode``."""
    folder = OwnedFolder(out, compare_layout(), mode=mode, kind="comparison", marker=PLAN_FILE)
    folder.check()
    return folder


def take_up(folder: OwnedFolder) -> None:
    """After opening an existing comparison (``resume``, ``update``): check that its plan is
    the one incop wrote, or, for a folder written by an incop before manifests, adopt its own
    files and those of its finished runs (the trust that incop then had).

    Every file the manifest records must be the one incop wrote; it may be missing only where
    incop writes it again (``comparison.json``, the report and its plots)."""
    if not folder.legacy:
        folder.verify(PLAN_FILE)
        for relative in folder.files():
            rewritten = relative in REWRITTEN or relative.startswith("plots/")
            if (folder.root / relative).exists() or not rewritten:
                folder.verify(relative, needed_by="the comparison")
        return
    adopted = []
    for relative in compare_layout().files_below(folder.root):
        parts = relative.split("/")
        # An unfinished run takes itself up when it resumes (against its own state.pt).
        run = folder.root / parts[0] / parts[1] if len(parts) > 2 else None
        if run is None or parts[0] == "warmup" or (run / "summary.json").exists():
            adopted.append(relative)
    folder.adopt(adopted)


def record_run(folder: OwnedFolder, run: Path) -> None:
    """Record in the comparison's manifest every file of the finished run folder ``run`` as
    its own manifest holds it, after checking each one."""
    from incop.engine.outputs import RUN_LAYOUT

    prefix = run.relative_to(folder.root).as_posix()
    inner = Manifest.read(run)
    if inner is None:
        raise UserError(f"{run / MANIFEST_FILE} is missing: the run there cannot be checked")
    for relative, versions in inner.entries.items():
        if not inner.holds(relative, appended=RUN_LAYOUT.is_appended(relative)):
            raise UserError(
                f"{run / relative} is not the file incop wrote there (changed, truncated or"
                " swapped)"
            )
        folder.record(f"{prefix}/{relative}", versions)
    folder.flush()


def finished_summary(folder: OwnedFolder, run: Path) -> dict[str, Any]:
    """A finished run's ``summary.json``. Its files were checked against the comparison's
    record of them when the folder was taken up (:func:`take_up`); a run the comparison was
    killed too soon to record is checked against its own manifest and recorded now."""
    if run.relative_to(folder.root).as_posix() + "/summary.json" not in folder.files():
        record_run(folder, run)
    return json.loads((run / "summary.json").read_text())


def compare_layout() -> Layout:
    """What ``incop compare`` writes in its folder; ``--overwrite`` removes these only."""
    from incop.engine.outputs import RUN_LAYOUT

    methods = "|".join(re.escape(name) for name in METHODS.names())
    own = Layout(
        files=(
            r"compare\.yaml",
            r"comparison\.json",
            r"manifest\.json",
            r"report\.md",
            r"report\.html",
            r"frontier\.json",
            r"frontier\.png",
            r"plots/[\w.-]+\.(?:png|svg)",
            r"warmup/seed-\d+\.pt",
        ),  # fmt: skip
        dirs=(r"plots", r"warmup", f"(?:{methods})", f"(?:{methods})/{POINT}"),
    )
    runs = rf"(?:{methods})(?:/{POINT})?/seed-\d+"
    return own + RUN_LAYOUT.nested(r"warmup/seed-\d+") + RUN_LAYOUT.nested(runs)


#: Settings of a comparison that reach only some of its methods, so that one command compares
#: IMP with the methods that prune once: ``target_remaining`` reaches only those that prune
#: once (a preset of one level: at init, one-shot, dynamic sparse training, LOMP), the
#: number of ``levels`` only the others, ``warmup_epochs`` only those with a warm-up.
REACH = {
    "target_remaining": ("methods that prune once", lambda preset: preset.get("levels") == 1),
    "levels": ("IMP methods", lambda preset: preset.get("levels") != 1),
    "warmup_epochs": ("methods with a warm-up", lambda preset: preset.get("warmup_epochs") != 0),
}


def _reaches(key: str, method: str) -> bool:
    name = key.replace("-", "_")
    return name not in REACH or REACH[name][1](METHODS.get(method))


def method_config(overrides: dict[str, Any], method: str, seed: int, **extra: Any) -> Config:
    """The config of ``method`` at ``seed`` in a comparison of ``overrides``."""
    # The options of components this method does not choose (eps for sap) are the others'.
    unused = unused_by(method, overrides)
    own = {k: v for k, v in overrides.items() if _reaches(k, method) and k not in unused}
    return resolve({**own, "method": method, "seed": seed, **extra})


def check_plan(
    methods: Sequence[str], seeds: Sequence[int], overrides: dict[str, Any] | None = None
) -> None:
    """Refuse, before any work, an empty or repeated method or seed, an unknown method, or a
    setting in ``overrides`` that no method of the plan would use."""
    problems = []
    known = [m for m in methods if m in METHODS]
    for key in overrides or {}:
        name = key.replace("-", "_")
        if known and name in REACH and not any(_reaches(key, m) for m in known):
            problems.append(
                f"{key}: would be ignored: only {REACH[name][0]} use it, and the plan has"
                f" none ({', '.join(known)})"
            )
    if known:
        idle = set.intersection(*(unused_by(m, overrides or {}) for m in known))
        problems += [
            f"{key}: would be ignored: no method of the plan ({', '.join(known)}) has a"
            " component that uses it"
            for key in overrides or {}
            if key in idle
        ]
    if not methods:
        problems.append("methods: none given; name at least one, e.g. sap,incop-gf")
    for method in methods:
        if method not in METHODS:
            try:
                METHODS.get(method)
            except UserError as exc:
                problems.append(f"methods: {exc}")
    for name, values in (("methods", list(methods)), ("seeds", list(seeds))):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            problems.append(f"{name}: {', '.join(repeated)} given more than once")
    if not seeds:
        problems.append("seeds: none given")
    problems += [f"seeds: {s} is not allowed; must be in 0..{MAX_SEED}"
                 for s in seeds if not 0 <= s <= MAX_SEED]  # fmt: skip
    if problems:
        raise UserError("\n".join(problems))


def run_comparison(
    overrides: dict[str, Any],
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] = (0,),
    *,
    out: str | Path,
    sweep: dict[str, list[Any]] | None = None,
    baseline: str = "sap",
    tolerance: float = TOLERANCE,
    progress: bool = False,
    mode: str = "new",
) -> dict[str, Any]:
    """Run every method (each point of ``sweep`` it uses) for every seed on the config
    ``overrides`` describe; write ``out``.

    ``overrides`` are config settings as a user gives them (file and flags, not
    yet resolved), so each method's preset applies under them. ``sweep``: field -> values
    (:func:`parse_sweep`), a grid of runs for every method that uses the field.
    ``baseline``, ``tolerance``: of the statistics (:func:`incop.tools.study.analyse`). ``mode``:
    ``new`` (refuses a folder holding a comparison), ``overwrite``, or ``resume`` (finished
    runs are kept, interrupted ones go on from their last epoch). Returns the content of
    ``comparison.json``.
    """
    from incop.core.masks import prunable_parameters
    from incop.engine.counts import frozen_counts, reference_levels
    from incop.engine.distributed import current_world

    out = Path(out)
    world = current_world()
    # Everything is checked and loaded before the folder is made: a refused or failed start
    # leaves nothing behind.
    check_plan(methods, seeds, overrides)
    check_analysis(methods, baseline, tolerance)
    sweep = check_sweep(sweep or {}, methods, seeds[0], overrides)
    variants = plan_variants(methods, sweep, overrides)
    first = method_config(overrides, methods[0], seeds[0])
    for variant in variants:
        for seed in seeds:
            method_config(variant.overrides(overrides), variant.method, seed)
    # The one rank that writes (data parallel: the others only read) checks the folder.
    folder = open_comparison(out, mode) if world.is_main else None
    dataset = load_dataset(first.dataset, first.data_dir, first.download)
    info = dataset.info
    model = build_model(first.model, info.channels, info.image_size, info.num_classes)
    if first.prune_counts == "frozen":
        params = prunable_parameters(model, first.include, first.exclude)
        frozen_counts(reference_levels(first), params)
    if folder is not None:
        folder.open()
    world.barrier()
    plan = Plan(overrides, methods, seeds, sweep, variants, baseline, tolerance)
    if folder is None:
        return _compare(out, None, plan, first, dataset, False, mode, world)
    failed = True
    try:
        if mode == "resume":
            take_up(folder)
        else:
            # The resolved (absolute) data folder, so --resume works from anywhere.
            settings = {**overrides, "data_dir": first.data_dir} if first.data_dir else overrides
            saved = {"settings": settings, "methods": list(methods), "seeds": list(seeds)}
            if sweep:
                saved["sweep"] = sweep
            saved["analysis"] = {"baseline": baseline, "tolerance": tolerance}
            folder.write_bytes(PLAN_FILE, yaml.safe_dump(saved, sort_keys=False).encode())
        comparison = _compare(out, folder, plan, first, dataset, progress, mode, world)
        failed = False
    finally:
        # Nothing trained yet (the warm-ups discard their own folders): leave nothing behind.
        leftover = [p for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE]
        nothing_trained = all(p in (out / PLAN_FILE, out / MANIFEST_FILE) for p in leftover)
        folder.close(discard=failed and mode != "resume" and nothing_trained)
    return comparison


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a comparison runs: ``overrides`` (the user's settings), the methods and seeds,
    the checked ``sweep`` and the ``variants`` it makes, and what the statistics pair with
    (``baseline``) and tolerate."""

    overrides: dict[str, Any]
    methods: Sequence[str]
    seeds: Sequence[int]
    sweep: dict[str, list[Any]]
    variants: list[Variant]
    baseline: str
    tolerance: float


def _compare(
    out: Path, folder: OwnedFolder | None, plan: Plan, first, dataset, progress, mode, world
) -> dict[str, Any]:  # fmt: skip
    """The comparison itself; ``folder``: the open comparison folder at ``out`` (None on the
    ranks that do not write)."""

    # What is on disk is rank 0's to judge (it may be writing it): every "exists" is its answer.
    import torch
    from tqdm.auto import tqdm

    from incop.engine.experiment import build_batches
    from incop.engine.imp import IMP, resolve_device
    from incop.engine.outputs import run_writer, to_json

    def on_disk(path: Path) -> bool:
        return world.from_main(path.exists())

    info = dataset.info
    started = time.perf_counter()
    variants, seeds = plan.variants, plan.seeds
    summaries: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    warmup_seconds = []
    sizes: dict[str, int] = {}
    bar = tqdm(total=len(seeds) * len(variants), desc="compare", unit="run", disable=not progress)
    try:
        for seed in seeds:

            def fresh_model(seed: int = seed) -> torch.nn.Module:
                torch.manual_seed(seed)
                return build_model(first.model, info.channels, info.image_size, info.num_classes)

            splits = build_batches(method_config(plan.overrides, variants[0].method, seed),
                                   dataset, fresh_model(), world)  # fmt: skip
            train, val = splits.train, splits.val
            sizes = {"val": len(val.y), "test": len(splits.test.y)}

            configs = {
                v: method_config(v.overrides(plan.overrides), v.method, seed) for v in variants
            }
            phases = [dense_phase(config) for config in configs.values()]
            # The dense phase most points share is trained once (the first point with it
            # trains it); a point with another (pruning at init: none) trains its own.
            common = max(phases, key=phases.count)
            sharer = variants[phases.index(common)]
            warmup = shared_warmup(out, seed, sharer.overrides(plan.overrides), sharer.method,
                                   fresh_model, train, val, progress, world, folder)  # fmt: skip
            warmup_seconds.append(sum(warmup.seconds.values()))
            for variant in variants:
                run = run_folder(out, variant, seed)
                bar.set_postfix(seed=seed, method=variant.name)
                if mode == "resume" and on_disk(run / "summary.json"):
                    if folder is not None:
                        summaries[variant.name].append(finished_summary(folder, run))
                    else:
                        summary = json.loads((run / "summary.json").read_text())
                        summaries[variant.name].append(summary)
                else:
                    config = method_config(variant.overrides(plan.overrides), variant.method,
                                           seed, out=str(run))  # fmt: skip
                    going_on = mode == "resume" and on_disk(run / "config.yaml")
                    writer = run_writer(
                        run, mode="resume" if going_on else "new", main=world.is_main
                    )
                    imp = IMP(config, fresh_model(), train, val, writer=writer, progress=progress,
                              test_data=splits.test, world=world)  # fmt: skip
                    own = dense_phase(configs[variant]) != common
                    result = imp.run(None if own else warmup, resume=going_on)
                    summaries[variant.name].append(result.summary())
                    if folder is not None:
                        record_run(folder, run)
                bar.update(1)
    finally:
        # Closed before an error is printed, so the error stays the last line.
        bar.close()
    comparison = aggregate(summaries, variants)
    comparison.update(
        seeds=list(seeds),
        sweep=plan.sweep,
        runs=[
            run_entry(v, seed, summary, sizes)
            for v in variants
            for seed, summary in zip(seeds, summaries[v.name], strict=True)
        ],
        split_sizes=sizes,
        config=first.to_dict(),
        warmup_seconds=mean_std(warmup_seconds),
        total_seconds=time.perf_counter() - started,
        hardware=hardware(resolve_device(first.device)),
        incop=provenance(),
    )
    comparison["analysis"] = analyse(comparison, plan.baseline, plan.tolerance)
    if folder is not None:
        folder.write_bytes("comparison.json", to_json(comparison, indent=2).encode())
    return comparison


def check_analysis(
    methods: Sequence[str], baseline: str = "sap", tolerance: float = TOLERANCE
) -> None:
    """Refuse a baseline that is not among ``methods`` (unless the default, sap, which then
    pairs nothing) and a tolerance that is not a number of points in [0, 100]."""
    if baseline != "sap" and baseline not in methods:
        raise UserError(f"baseline: {baseline!r} is not among the methods ({', '.join(methods)})")
    if not (isinstance(tolerance, int | float) and 0 <= tolerance <= 100):
        raise UserError(f"tolerance: {tolerance!r} is not allowed; must be in 0..100 (points)")


def run_entry(
    variant: Variant, seed: int, summary: dict[str, Any], sizes: dict[str, int]
) -> dict[str, Any]:
    """One run of a comparison, as ``comparison.json`` lists it: the final ticket's numbers
    (fine-tuned, if there is a fine-tune) and what finding it cost."""
    totals = run_totals(summary)
    return {
        "method": variant.method,
        "params": dict(variant.params),
        "seed": seed,
        "folder": run_folder(Path(), variant, seed).as_posix(),
        "cost": summary.get("cost"),
        "dense_epoch": summary.get("dense_epoch"),
        "cost_dense_epochs": totals["cost_dense_epochs"],
        "epochs": totals["epochs"],
        "remaining_fraction": totals["final_remaining_fraction"],
        "val_accuracy": totals["final_accuracy"],
        "test_accuracy": totals["final_test_accuracy"],
        "dense_val_accuracy": totals["dense_accuracy"],
        "dense_test_accuracy": totals["dense_test_accuracy"],
        "val_se": binomial_se(totals["final_accuracy"], sizes.get("val")),
        "test_se": binomial_se(totals["final_test_accuracy"], sizes.get("test")),
    }


def shared_warmup(
    out: Path,
    seed: int,
    overrides: dict[str, Any],
    method: str,
    fresh_model: Callable[[], torch.nn.Module],
    train: Batches,
    val: Batches,
    progress: bool = False,
    world: World | None = None,
    owner: OwnedFolder | None = None,
) -> WarmUp:
    """The dense warm-up of ``seed``: trained once, kept in ``warmup/seed-<s>.pt``, written
    through ``owner`` (the comparison folder, open; None on ranks that do not write).

    While it trains, ``warmup/seed-<s>/`` is its run folder, saved after every epoch, so a
    comparison killed during a warm-up goes on from its last epoch."""
    from incop.core.world import World
    from incop.engine.imp import IMP
    from incop.engine.outputs import read_metrics, run_writer, torch_file

    world = world or World()
    relative = f"warmup/seed-{seed}.pt"
    path = out / relative
    if world.from_main(path.exists()):
        if owner is not None:
            owner.verify(relative, needed_by="the comparison")
        return _read_warmup(path)
    folder = out / "warmup" / f"seed-{seed}"
    going_on = world.from_main((folder / "config.yaml").exists())
    config = method_config(overrides, method, seed, out=str(folder))
    writer = run_writer(folder, mode="resume" if going_on else "new", main=world.is_main)
    imp = IMP(config, fresh_model(), train, val, writer=writer, progress=progress, world=world)
    warmup = imp.warm_up(resume=going_on)
    if world.is_main:
        # Every epoch's record, those trained before a resume too, for each method's metrics
        # (only rank 0 writes them).
        warmup.records = read_metrics(folder / "metrics.jsonl")
    if owner is not None:
        owner.write(relative, torch_file(dataclasses.asdict(warmup)))
    return warmup


def _read_warmup(path: Path) -> WarmUp:
    """A saved warm-up, loaded without running anything and checked field by field."""
    from incop.engine.outputs import load_tensors
    from incop.engine.phases import WarmUp

    saved = load_tensors(path)
    fields = {f.name: f for f in dataclasses.fields(WarmUp)}
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
    types = {"snapshots": dict, "best": dict, "seconds": dict, "records": list,
             "epoch_counter": int, "epochs": int, "diverged": bool, "reason": str,
             "cost": dict}  # fmt: skip
    problem = None
    if not isinstance(saved, dict):
        problem = f"holds a {type(saved).__name__}, not a warm-up"
    elif set(saved) - set(fields) or set(required) - set(saved):
        problem = "does not hold a warm-up's fields"
    else:
        wrong = [k for k, v in saved.items() if not isinstance(v, types[k])]
        if wrong:
            problem = f"holds a value of the wrong type under {wrong[0]!r}"
    if problem:
        raise UserError(f"{path} {problem}; delete it to train this warm-up again")
    return WarmUp(**saved)


def format_table(comparison: dict[str, Any]) -> str:
    """The comparison table printed at the end of ``incop compare``: mean ± std over trials;
    ``cost``: what finding and training the ticket cost, in dense training epochs."""
    width = max(10, *(len(name) for name in comparison["methods"]))
    head = (
        f"{'method':<{width}} {'epochs':>13} {'fine-tune':>9} {'cost':>13} {'val acc':>15}"
        f" {'test acc':>15} {'remaining':>9}"
        f" {'wall s':>13} {'epochs/sap':>10} {'wall/sap':>8}"
    )
    rows = [head, "-" * len(head)]
    for method, entry in comparison["methods"].items():
        t = entry["totals"]
        ratio = comparison["ratios"][method]
        rows.append(
            f"{method:<{width}} {t['epochs']['mean']:>6.1f} ± {t['epochs']['std']:<4.1f}"
            f" {t['finetune_epochs']['mean']:>9.1f} {_cost_cell(t['cost_dense_epochs'])}"
            f" {_pm(t['final_accuracy'])} {_pm(t['final_test_accuracy'])}"
            f" {t['final_remaining_fraction']['mean']:>9.2%}"
            f" {t['wall_seconds']['mean']:>6.1f} ± {t['wall_seconds']['std']:<4.1f}"
            f" {_ratio_cell(ratio.get('epochs_vs_sap'), 10)}"
            f" {_ratio_cell(ratio.get('wall_vs_sap'), 8)}"
        )
    return "\n".join(rows)


def _cost_cell(stat: dict[str, float | None]) -> str:
    """Search cost in dense training epochs, mean ± std (``-`` where not counted)."""
    if stat["mean"] is None:
        return f"{'-':>13}"
    return f"{stat['mean']:>6.1f} ± {stat['std']:<4.1f}"


def _pm(stat: dict[str, float | None]) -> str:
    """``mean ± std`` as percentages, or a dash where there is no value."""
    if stat["mean"] is None:
        return f"{'-':>15}"
    return f"{stat['mean']:>7.2%} ± {stat['std']:<5.2%}"


def _ratio_cell(value: float | None, width: int) -> str:
    return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"


def mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation (0 for a single trial); both None if any value is
    missing (a run without test data)."""
    if any(v is None for v in values):
        return {"mean": None, "std": None}
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std}


def run_totals(summary: dict[str, Any]) -> dict[str, float]:
    """One run's totals. Retraining = levels 1..K (the dense warm-up is shared, so left out);
    the final fine-tune, if any, counts in ``epochs`` and the seconds and is also shown
    apart; the final accuracies are the fine-tuned ticket's. Flow seconds include level 0,
    where the dense reference flow is measured. ``cost_dense_epochs``: :func:`search_cost`."""
    levels = summary["levels"]
    retrain = levels[1:]
    final = summary.get("final") or {}
    last = final or levels[-1]
    dense = trained_dense(summary)
    totals = {
        "epochs": sum(lv["epochs"] for lv in retrain) + final.get("epochs", 0),
        "retrain_epochs": sum(lv["epochs"] for lv in retrain),
        "finetune_epochs": final.get("epochs", 0),
        "final_remaining_fraction": levels[-1]["remaining_fraction"],
        "final_accuracy": last["val_accuracy"],
        "final_test_accuracy": last.get("test_accuracy"),
        # None for a run that trained no dense network (trained_dense): nothing to compare with.
        "dense_accuracy": summary["dense_accuracy"] if dense else None,
        "dense_test_accuracy": levels[0].get("test_accuracy") if dense else None,
        "train_seconds": sum(lv["train_seconds"] for lv in retrain) + final.get("train_seconds", 0),
        "eval_seconds": sum(lv["eval_seconds"] for lv in retrain) + final.get("eval_seconds", 0),
        "flow_seconds": sum(lv["flow_seconds"] for lv in levels),
        "finetune_seconds": final.get("train_seconds", 0) + final.get("eval_seconds", 0),
    }
    totals["wall_seconds"] = (
        totals["train_seconds"] + totals["eval_seconds"] + totals["flow_seconds"]
    )
    totals["cost_dense_epochs"] = search_cost(summary)
    return totals


def search_cost(summary: dict[str, Any]) -> float | None:
    """What finding and training the ticket cost (``cost.search``: the warm-up included), in
    dense training epochs; None for a run of an incop that did not count it."""
    cost, dense = summary.get("cost"), summary.get("dense_epoch")
    return cost["search"] / dense if cost and dense else None


def aggregate(
    summaries: dict[str, list[dict[str, Any]]], variants: Sequence[Variant] | None = None
) -> dict[str, Any]:
    """Mean and standard deviation over trials per point, per level, and ratios to baselines.

    ``summaries``: point name -> one ``summary.json`` content per trial; ``variants``: the
    points (default: every name a method, unswept). Returns ``{"methods": {name: {"method",
    "params", "trials", "totals": {field: {mean, std}}, "levels": [{field: {mean, std}}]}},
    "ratios": {name: {"epochs_vs_sap", "wall_vs_sap", ...}}}``; a swept point's ratio is to
    the baseline's point with the same values of the fields both sweep
    (:func:`baseline_for`).
    """
    variants = list(variants or [Variant(name) for name in summaries])
    methods: dict[str, Any] = {}
    for variant in variants:
        runs = summaries[variant.name]
        totals = [run_totals(run) for run in runs]
        n_levels = min(len(run["levels"]) for run in runs)
        methods[variant.name] = {
            "method": variant.method,
            "params": dict(variant.params),
            "trials": len(runs),
            "totals": {key: mean_std([t[key] for t in totals]) for key in totals[0]},
            # Why retraining levels ended, over every seed: what decided, in counts.
            "stopped_by": _count(lv["stop_reason"] for run in runs for lv in run["levels"][1:]),
            "levels": [
                {
                    "level": k,
                    **{
                        f: mean_std([run["levels"][k].get(f) for run in runs]) for f in LEVEL_FIELDS
                    },
                    "stop_reasons": _count(run["levels"][k]["stop_reason"] for run in runs),
                }
                for k in range(n_levels)
            ],
        }
    ratios: dict[str, dict[str, float | None]] = {}
    for variant in variants:
        entry = methods[variant.name]
        ratios[variant.name] = {}
        for base in BASELINES:
            matched = baseline_for(variant, variants, base)
            if matched is None:
                continue
            for key, name in (("epochs", "epochs"), ("wall_seconds", "wall"),
                              ("cost_dense_epochs", "cost")):  # fmt: skip
                denominator = methods[matched.name]["totals"][key]["mean"]
                value = entry["totals"][key]["mean"]
                value = value / denominator if denominator and value is not None else None
                ratios[variant.name][f"{name}_vs_{base}"] = value
    return {"methods": methods, "ratios": ratios}


def baseline_for(variant: Variant, variants: Sequence[Variant], base: str) -> Variant | None:
    """The point of method ``base`` that ``variant`` is compared with (:func:`matching`);
    None where ``base`` was not run or no point matches."""
    candidates = [v for v in variants if v.method == base]
    found = matching(dict(variant.params), [dict(v.params) for v in candidates])
    return None if found is None else candidates[found]


def _count(reasons: Iterable[str]) -> dict[str, int]:
    """Reason -> how often, most frequent first."""
    return dict(Counter(reasons).most_common())


def provenance() -> dict[str, str | None]:
    """Which incop made a result: its version and, in a git checkout, the commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:  # no git on this machine
        commit = ""
    return {"version": __version__, "commit": commit or None}


def hardware(device: torch.device) -> dict[str, Any]:
    """What the comparison ran on, for the report."""
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_comparison(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "comparison.json").read_text())
