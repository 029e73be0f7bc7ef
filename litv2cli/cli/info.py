"""`litv2 info`: parameters, FLOPs and stage layout of a LITv2 configuration, without building weights."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from litv2cli.cli.options import Alpha, JsonOutput, Resolution, Variant, Window, check_alpha, check_variant, \
    parse_resolution, parse_window
from litv2cli.defaults import PAPER_ALPHA

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer()


@app.command()
def info(
    variant: Variant = "s",
    res: Resolution = "224",
    alpha: Alpha = None,
    window: Window = None,
    json_output: JsonOutput = False,
) -> None:
    """Show params (M), GFLOPs (multiply-accumulates, as the paper counts them) and per-stage layout.

    [bold]--variant all[/bold] lists every variant (with --json: one object keyed by variant).
    """
    from litv2cli.recipe import VARIANT_NAMES

    resolution = parse_resolution(res)
    checked_alpha = check_alpha(alpha)
    local_ws = parse_window(window)
    names = list(VARIANT_NAMES) if variant.lower() == "all" else [check_variant(variant)]
    # After the checks, so bad input is refused without torch. `describe` (litv2cli.models.summary)
    # is taken from the package that re-exports it, the name callers and tests replace.
    from litv2cli.models import describe

    reports = {name: describe(name, resolution, PAPER_ALPHA if checked_alpha is None else checked_alpha, local_ws)
               for name in names}
    if json_output:
        typer.echo(json.dumps(reports[names[0]] if len(names) == 1 else reports))
        return
    from rich.console import Console

    console = Console()
    for report in reports.values():
        console.print(_table(report))


def _table(report: dict) -> Table:
    from rich.table import Table

    height, width = report["resolution"]
    origin = "" if report["from_paper"] else " (ours, not from the paper)"
    table = Table(
        title=f"LITv2-{report['variant'].upper()}{origin} at {height}x{width}, alpha {report['alpha']:g}",
        caption=f"{report['params_m']:.2f} M params, {report['gflops']:.3f} GFLOPs (MACs)",
    )
    for column in ("stage", "map", "channels", "depth", "heads Hi-Fi/Lo-Fi", "window", "mixer"):
        table.add_column(column, justify="left" if column == "mixer" else "right")
    for stage in report["stages"]:
        heads = f"{stage['hifi_heads']}/{stage['lofi_heads']}" if stage["window"] else "-"
        table.add_row(str(stage["stage"]), "x".join(map(str, stage["resolution"])), str(stage["channels"]),
                      str(stage["depth"]), heads, str(stage["window"] or "-"), stage["mixer"])
    return table
