"""Pareto front, pick rules, and the files that report them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from litv2cli.errors import UserError
from litv2cli.search.objectives import parse_bytes, parse_objectives
from litv2cli.search.pareto import (
    Row, check_pick_rule, pareto_front, pick, plot_front, plot_front_html, write_json, write_table,
)

THROUGHPUT_TOP1 = parse_objectives("throughput,top1")


def row(label: str, throughput: float, top1: float, status: str = "ok") -> Row:
    return Row(label=label, alpha=0.5, alphas=[0.5], window=[0, 0, 2, 1], lofi_heads=[2, None],
               values={"throughput": throughput, "top1": top1}, status=status)


ROWS = [
    row("fast", 100.0, 0.1),
    row("balanced", 80.0, 0.8),
    row("accurate", 10.0, 0.9),
    row("dominated", 70.0, 0.7),
    row("filtered-but-best", 1000.0, 1.0, status="filtered"),
]


def test_front_keeps_exactly_the_non_dominated_points_that_passed_the_constraints():
    assert [r.label for r in pareto_front(ROWS, THROUGHPUT_TOP1)] == ["fast", "balanced", "accurate"]


def test_equal_points_both_stay_on_the_front():
    twins = [row("a", 10.0, 0.5), row("b", 10.0, 0.5), row("c", 5.0, 0.4)]
    assert [r.label for r in pareto_front(twins, THROUGHPUT_TOP1)] == ["a", "b"]


def test_minimised_objectives_are_compared_the_other_way():
    objectives = parse_objectives("latency,params")
    rows = [Row("x", 0.1, [0.1], [0, 0, 2, 1], [1, None], values={"latency": 5.0, "params": 10.0}),
            Row("y", 0.2, [0.2], [0, 0, 2, 1], [1, None], values={"latency": 4.0, "params": 9.0})]
    assert [r.label for r in pareto_front(rows, objectives)] == ["y"]


def test_pick_rules_choose_knee_best_accuracy_or_fastest():
    front = pareto_front(ROWS, THROUGHPUT_TOP1)
    assert pick(front, THROUGHPUT_TOP1, "knee").label == "balanced"
    assert pick(front, THROUGHPUT_TOP1, "max-top1").label == "accurate"
    assert pick(front, THROUGHPUT_TOP1, "max-throughput").label == "fast"


def test_max_top1_lets_speed_decide_between_equally_accurate_points():
    front = [row("slow", 10.0, 0.9), row("quick", 50.0, 0.9)]
    assert pick(front, THROUGHPUT_TOP1, "max-top1").label == "quick"


def test_pick_refuses_an_empty_front_and_rules_without_their_objective():
    with pytest.raises(UserError, match="no point is left"):
        pick([], THROUGHPUT_TOP1, "knee")
    with pytest.raises(UserError, match="needs top1"):
        check_pick_rule("max-top1", parse_objectives("throughput,params"))
    with pytest.raises(UserError, match="choose one of"):
        check_pick_rule("best", THROUGHPUT_TOP1)


def test_objective_and_size_parsing():
    assert [o.direction for o in parse_objectives("throughput,latency,memory,top1,params,flops")] == \
        ["maximize", "minimize", "minimize", "maximize", "minimize", "minimize"]
    with pytest.raises(UserError, match="unknown objective 'speed'"):
        parse_objectives("speed")
    with pytest.raises(UserError, match="twice"):
        parse_objectives("top1,top1")
    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1000") == 1000
    with pytest.raises(UserError):
        parse_bytes("lots")


def test_table_json_and_png_are_written(tmp_path):
    front = pareto_front(ROWS, THROUGHPUT_TOP1)
    chosen = pick(front, THROUGHPUT_TOP1, "knee")
    table = write_table(ROWS, tmp_path / "points.csv")
    with table.open() as handle:
        records = list(csv.DictReader(handle))
    assert [r["label"] for r in records] == [r.label for r in ROWS]
    assert float(records[0]["throughput"]) == 100.0 and records[4]["status"] == "filtered"
    summary = write_json({"chosen": chosen.as_dict()}, tmp_path / "search.json")
    assert json.loads(summary.read_text())["chosen"]["label"] == "balanced"
    png = plot_front(ROWS, front, chosen, THROUGHPUT_TOP1, tmp_path / "pareto.png", paper_label="accurate",
                     title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_html_marks_the_chosen_point_and_the_paper_default_when_plotly_is_there(tmp_path, monkeypatch):
    import sys
    import types

    traces: list[dict] = []

    class Figure:
        def add_trace(self, trace):
            traces.append(trace)

        def update_layout(self, **kwargs):
            pass

        def write_html(self, path):
            Path(path).write_text("<html></html>")

    graph_objects = types.ModuleType("plotly.graph_objects")
    graph_objects.Figure, graph_objects.Scatter = Figure, lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "plotly", types.ModuleType("plotly"))
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", graph_objects)
    front = pareto_front(ROWS, THROUGHPUT_TOP1)
    chosen = pick(front, THROUGHPUT_TOP1, "knee")
    html = plot_front_html(ROWS, front, chosen, THROUGHPUT_TOP1, tmp_path / "pareto.html", title="t",
                           paper_label="accurate")
    assert html is not None and html.is_file()
    named = {t["name"]: t for t in traces}
    assert named["chosen: balanced"]["text"] == ["balanced"]
    assert named["paper default (alpha 0.9, window 2)"]["x"] == [10.0]
