"""The report of a comparison folder, built by hand (no training)."""

import json
import re

import pytest
import yaml

from incop.config import resolve, to_yaml
from incop.errors import UserError
from incop.tools.compare import aggregate, run_folder
from incop.tools.report import _styles, sparsity_figure, write_report

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ("accuracy", "sparsity", "epochs", "time", "distance")
#: The summary table's promise: header -> (key in totals, scale, decimals shown).
SUMMARY = {
    "epochs (fine-tune incl.)": ("epochs", 1, 1),
    "cost (dense epochs)": ("cost_dense_epochs", 1, 1),
    "remaining (%)": ("final_remaining_fraction", 100, 2),
    "val acc (%)": ("final_accuracy", 100, 2),
    "test acc (%)": ("final_test_accuracy", 100, 2),
    "wall (s)": ("wall_seconds", 1, 1),
}
#: The time table's.
TIME = {
    "retraining epochs": ("retrain_epochs", 1, 1),
    "fine-tune epochs": ("finetune_epochs", 1, 1),
    "train (s)": ("train_seconds", 1, 2),
    "eval (s)": ("eval_seconds", 1, 2),
    "flow (s)": ("flow_seconds", 1, 2),
    "wall (s)": ("wall_seconds", 1, 2),
}
RATIOS = {"epochs / sap": "epochs_vs_sap", "cost / sap": "cost_vs_sap", "wall / sap": "wall_vs_sap"}


def fake_run(folder, method, seed, epochs):
    """A run folder as ``incop run`` writes it; ``epochs[k-1]`` retraining epochs at level k."""
    config = resolve({"method": method, "seed": seed, "levels": len(epochs), "out": str(folder)})
    flow = config.stop in ("if", "gf")
    levels, records = [], []
    remaining = 1.0
    for level, n in enumerate([config.warmup_epochs, *epochs]):
        remaining *= 0.8 if level else 1.0
        accuracy = 0.9 - 0.01 * level + 0.003 * seed + (0.002 if flow else 0.0)
        levels.append(
            {
                "level": level,
                "remaining_fraction": remaining,
                "epochs": n,
                "val_accuracy": accuracy,
                "val_loss": 0.3,
                "train_seconds": 1.25 * n + 0.1 * seed,
                "eval_seconds": 0.05 * (n + 1),
                "flow_seconds": 0.2 * (n + 1) if flow else 0.0,
                "stop_reason": "flow" if flow else "max_epochs",
                "macs_fraction": remaining,
                "distance": 0.05 if flow and level else None,
                "test_accuracy": accuracy - 0.005,
            }
        )
        for epoch in range(n + 1) if level else range(1, n + 1):
            record = {"level": level, "epoch": epoch, "val_accuracy": accuracy}
            if flow and level:
                record["distance"] = 0.2 / (epoch + 1) + 0.01 * seed
            records.append(record)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(to_yaml(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # What the warm-up cost: nothing for a method that trains no dense network.
    cost = {"warmup": 1e9 * config.warmup_epochs}
    summary = {"levels": levels, "dense_accuracy": levels[0]["val_accuracy"], "cost": cost}
    (folder / "summary.json").write_text(json.dumps({**summary, "config": config.to_dict()}))
    return summary


def make_comparison(root, methods=("sap", "incop-if"), seeds=(0, 1)):
    """Two seeds per method; the flow method stops after fewer epochs, differing by seed."""
    schedules = {
        "sap": [[3, 3], [3, 3]],
        "incop-if": [[2, 1], [1, 2]],
        "lth": [[3, 3], [3, 3]],
        "synflow": [[5], [5]],
    }
    summaries = {
        m: [fake_run(run_folder(root, m, s), m, s, schedules[m][s]) for s in seeds] for m in methods
    }
    comparison = aggregate(summaries)
    comparison.update(
        seeds=list(seeds),
        config=resolve({"method": methods[0]}).to_dict(),
        warmup_seconds={"mean": 3.5, "std": 0.25},
        total_seconds=42.125,
        hardware={"device": "cpu", "cpu_threads": 2},
    )
    (root / "comparison.json").write_text(json.dumps(comparison, indent=2))
    plan = {"settings": {}, "methods": list(methods), "seeds": list(seeds)}
    (root / "compare.yaml").write_text(yaml.safe_dump(plan))
    return comparison


def table(markdown, head):
    """The first markdown table whose header row starts with ``head``, as row dicts."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {head} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    header, _, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    comparison = make_comparison(root)
    return root, comparison, write_report(root)


def test_writes_every_file(report):
    root, _, md = report
    assert md == root / "report.md"
    for stem in PLOTS:
        for fmt in ("png", "svg"):
            assert (root / "plots" / f"{stem}.{fmt}").stat().st_size > 0
        assert (root / "plots" / f"{stem}.png").read_bytes().startswith(PNG)
        assert f"](plots/{stem}.png)" in md.read_text()
    page = (root / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert not list(root.glob("**/*.tmp"))


def _expected(totals, key, scale, decimals):
    if totals.get(key, {}).get("mean") is None:  # e.g. no test data: a dash
        return "–"
    return f"{totals[key]['mean'] * scale:.{decimals}f} ± {totals[key]['std'] * scale:.{decimals}f}"


def test_summary_numbers_are_those_of_comparison_json(report):
    root, comparison, md = report
    text = md.read_text()
    rows = table(text, "method | trials")
    assert [row["method"] for row in rows] == list(comparison["methods"])
    for row in rows:
        totals = comparison["methods"][row["method"]]["totals"]
        for header, spec in SUMMARY.items():
            assert row[header] == _expected(totals, *spec), (row["method"], header)
        ratios = comparison["ratios"][row["method"]]
        for header, key in RATIOS.items():
            value = ratios.get(key)
            assert row[header] == (f"{value:.2f}" if value is not None else "–")
        assert "epochs / lth" not in row  # lth was not run: no column for it
    for row in table(text.split("## Time")[1], "method"):
        totals = comparison["methods"][row["method"]]["totals"]
        for header, spec in TIME.items():
            assert row[header] == _expected(totals, *spec), (row["method"], header)
    # Worked out by hand: sap trains 1.25 s x 6 epochs, plus 0.1 s a level at seed 1.
    assert table(text.split("## Time")[1], "method")[0]["train (s)"] == "7.60 ± 0.14"
    assert "<td>7.60 ± 0.14</td>" in (root / "report.html").read_text()


def test_results_come_before_the_collapsed_setup(report):
    root, _, md = report
    text = md.read_text()
    assert text.index("## Summary") < text.index("<details>") < text.index("```yaml")
    assert text.rstrip().endswith("</details>")
    page = (root / "report.html").read_text()
    assert page.index("<h2>Summary</h2>") < page.index("<details>") < page.index("<pre>")


def test_setup_and_level_tables(report):
    _, comparison, md = report
    text = md.read_text()
    varying = table(text.split("Settings that vary per point")[1], "method")
    assert {row["method"]: row["stop"] for row in varying} == {"sap": "fixed", "incop-if": "if"}
    assert "\nstop:" not in text.split("```yaml")[1].split("```")[0]
    assert "42.1 s" in text and "3.50 ± 0.25 s" in text
    levels = table(text.split("### incop-if")[1], "level")
    assert [row["level"] for row in levels] == ["0 (dense)", "1", "2"]
    assert levels[1]["epochs"] == "1.5 ± 0.7"


def test_one_seed_shows_no_spread(tmp_path):
    make_comparison(tmp_path, seeds=(0,))
    text = write_report(tmp_path).read_text()
    rows = table(text, "method | trials")
    assert rows[0]["val acc (%)"] == "88.00" and "±" not in "".join(rows[0].values())
    assert "± 0.00" not in text.split("<details>")[0]


def test_the_time_figure_leaves_room_for_the_tallest_label(report):
    from incop.tools.report import _time_figure

    _, comparison, _ = report
    figure = _time_figure(comparison, _styles(list(comparison["methods"])))
    (ax,) = figure.axes
    tallest = max(e["totals"]["wall_seconds"]["mean"] + e["totals"]["wall_seconds"]["std"]
                  for e in comparison["methods"].values())  # fmt: skip
    assert ax.get_ylim()[1] >= 1.15 * tallest


def test_the_accuracy_figure_shows_the_dense_network(report):
    from incop.tools.report import _accuracy_figure

    _, comparison, _ = report
    figure = _accuracy_figure(comparison, _styles(list(comparison["methods"])))
    (ax,) = figure.axes
    dense = comparison["methods"]["sap"]["levels"][0]["test_accuracy"]["mean"] * 100
    assert any(list(line.get_ydata()) == [dense, dense] for line in ax.get_lines())


def test_deterministic(report):
    root, _, md = report
    before = {p: p.read_bytes() for p in [md, root / "report.html", *root.glob("plots/*")]}
    write_report(root)
    assert {p: p.read_bytes() for p in before} == before


def test_no_flow_method_no_distance_figure(tmp_path):
    make_comparison(tmp_path, methods=("lth", "sap"))
    text = write_report(tmp_path).read_text()
    assert not (tmp_path / "plots" / "distance.png").exists()
    assert "Flow distance" not in text
    assert "Flow distance" not in (tmp_path / "report.html").read_text()
    assert table(text.split("Settings that vary per point")[1], "method")[0]["pruner"] == "lth"


def test_missing_comparison_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="comparison.json"):
        write_report(tmp_path)


def test_missing_run_file_is_a_user_error(tmp_path):
    make_comparison(tmp_path)
    (run_folder(tmp_path, "sap", 1) / "metrics.jsonl").unlink()
    with pytest.raises(UserError, match="metrics.jsonl"):
        write_report(tmp_path)


def test_the_frontier_shows_every_trained_ticket_and_no_untrained_network(tmp_path):
    comparison = make_comparison(tmp_path, methods=("sap", "synflow"))
    figure = sparsity_figure(comparison, _styles(comparison["methods"]))
    (ax,) = figure.axes
    assert ax.get_xscale() == "log"
    drawn = {bars.get_label(): bars.lines[0] for bars in ax.containers}
    # sap: the dense network and both levels; synflow: its one trained ticket, not the
    # untrained network it was pruned from (level 0, no warm-up).
    sap = comparison["methods"]["sap"]["levels"]
    assert list(drawn["sap"].get_xdata()) == pytest.approx(
        [lv["remaining_fraction"]["mean"] * 100 for lv in sap]
    )
    assert list(drawn["sap"].get_ydata()) == pytest.approx(
        [lv["test_accuracy"]["mean"] * 100 for lv in sap]
    )
    assert list(drawn["synflow"].get_xdata()) == pytest.approx([80.0])


def test_the_dense_accuracy_is_that_of_the_methods_that_trained_one(tmp_path):
    # synflow prunes the untrained network: its "dense accuracy" is no reference, listed first
    # or not, and the text says it trained sparse from initialisation.
    comparison = make_comparison(tmp_path, methods=("synflow", "sap"))
    totals = {m: e["totals"]["dense_accuracy"]["mean"] for m, e in comparison["methods"].items()}
    assert totals == {"synflow": None, "sap": pytest.approx(0.9015)}
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert (
        "every method that trains a dense network of a seed is pruned from the same dense" in text
    )
    assert "(validation accuracy 90.15 ± 0.21 %); synflow train sparse from initialisation" in text
