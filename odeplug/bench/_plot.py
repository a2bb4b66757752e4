"""``odeplug bench TASK --plot FILE.png``: the figures the papers draw, from any task's rows.

Three panels, each drawn only when the rows carry its column:

- **time per step against width**, one line per rule, both axes logarithmic, the bars from each
  timed column's min to its max (``step_s``, else ``epoch_s``, else ``bwd_s``); with one width,
  one bar per rule;
- **backward NFE per rule** (``nfe_backward`` or ``nfe_bwd``);
- **peak memory per rule** (``peak_MB``).

A row is named by its ``rule`` (or ``route``) column, which picks its colour in every panel; the
setting columns that vary between rows (``width``, ``outputs``, ``tol``, ``batch``, ``problem``)
are the line styles and the groups of bars. Turning rows into
panels (:func:`panels`) needs no matplotlib, so it is tested everywhere; drawing them
(:func:`draw`) needs the ``plot`` extra, ``pip install 'odeplug[plot]'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

__all__ = ["Panel", "Series", "MissingMatplotlibError", "panels", "draw", "check_can_draw"]

NAME_COLUMNS = ("rule", "route")
TIME_COLUMNS = ("step_s", "epoch_s", "bwd_s")
BACKWARD_NFE_COLUMNS = ("nfe_backward", "nfe_bwd")
MEMORY_COLUMNS = ("peak_MB",)
SETTING_COLUMNS = ("width", "outputs", "tol", "batch", "problem")

_TIME_LABELS = {"step_s": "seconds per training step", "epoch_s": "seconds per epoch",
                "bwd_s": "seconds per backward pass"}
_INSTALL = "pip install 'odeplug[plot]'"


class MissingMatplotlibError(ImportError):
    """--plot was asked for where matplotlib is not installed."""


@attrs.frozen
class Series:
    """One rule's line or bars: ``ys[i]`` at ``xs[i]`` (a width, or a setting's label), with the
    spread ``low[i]``–``high[i]`` where the column is timed; None where the row has no value.
    ``name`` is the rule (or route), which picks the colour in every panel; ``setting`` tells
    apart the lines of one rule in different settings (the other columns that vary)."""

    name: str
    xs: tuple[Any, ...]
    ys: tuple[float | None, ...]
    low: tuple[float | None, ...] | None = None
    high: tuple[float | None, ...] | None = None
    setting: str = ""


@attrs.frozen
class Panel:
    """One subplot: ``lines`` (x a width, log–log) or ``bars`` (a group of bars, one per rule,
    for each setting; one group when the rows vary in nothing but the rule)."""

    title: str
    kind: str  # "lines" | "bars"
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]
    log_y: bool = False


def _first_present(rows: Sequence[dict[str, Any]], candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` some row has a number for."""
    for column in candidates:
        if any(_number(row.get(column)) is not None for row in rows):
            return column
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _varying(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    return [c for c in columns if len({repr(row.get(c)) for row in rows}) > 1]


def _setting_label(row: dict[str, Any], columns: Sequence[str]) -> str:
    short = {"width": "W", "outputs": "outputs", "tol": "tol", "batch": "batch", "problem": ""}
    parts = []
    for c in columns:
        value = row.get(c)
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{short[c]}={text}" if short[c] else text)
    return ", ".join(parts)


def _spread(rows: Sequence[dict[str, Any]], column: str) -> tuple[tuple, tuple] | tuple[None, None]:
    if not any(f"{column}_min" in row for row in rows):
        return None, None
    return (tuple(_number(row.get(f"{column}_min")) for row in rows),
            tuple(_number(row.get(f"{column}_max")) for row in rows))


def _bars(rows: Sequence[dict[str, Any]], name: str, column: str, settings: Sequence[str],
          title: str, ylabel: str, log_y: bool | None = None) -> Panel:
    """A group of bars per setting (in the order the rows come), one bar per rule."""
    with_column = [row for row in rows if column in row]
    labels = tuple(dict.fromkeys(_setting_label(row, settings) for row in with_column))
    by_rule: dict[str, dict[str, dict[str, Any]]] = {}
    for row in with_column:
        by_rule.setdefault(str(row[name]), {})[_setting_label(row, settings)] = row
    series = []
    for rule, by_setting in by_rule.items():
        ordered = [by_setting.get(label, {}) for label in labels]
        low, high = _spread(ordered, column)
        values = tuple(_number(r.get(column)) for r in ordered)
        series.append(Series(rule, labels, values, low, high))
    if log_y is None:  # logarithmic when the values span more than a factor of 30
        values = [y for s in series for y in s.ys if y is not None and y > 0]
        log_y = bool(values) and max(values) / min(values) > 30
    xlabel = ", ".join(settings) if settings else name
    return Panel(title, "bars", xlabel, ylabel, tuple(series), log_y=log_y)


def _lines(rows: Sequence[dict[str, Any]], name: str, column: str, settings: Sequence[str]
           ) -> Panel:
    """``column`` against width, one line per rule and setting of the other varying columns."""
    others = [c for c in settings if c != "width"]
    lines: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        lines.setdefault((str(row[name]), _setting_label(row, others)), []).append(row)
    series = []
    for (rule, setting), line in lines.items():
        line = sorted(line, key=lambda r: r["width"])
        low, high = _spread(line, column)
        series.append(Series(rule, tuple(r["width"] for r in line),
                             tuple(_number(r[column]) for r in line), low, high, setting))
    return Panel(f"{_TIME_LABELS[column]} against width", "lines", "hidden width W",
                 f"{column} (s)", tuple(series), log_y=True)


def panels(rows: Sequence[dict[str, Any]]) -> list[Panel]:
    """The panels ``rows`` can fill (time against width, backward NFE, peak memory), in that
    order; none when the rows name no rule or route."""
    name = next((c for c in NAME_COLUMNS if any(c in row for row in rows)), None)
    if name is None:
        return []
    rows = [row for row in rows if name in row]
    settings = _varying(rows, [c for c in SETTING_COLUMNS if any(c in row for row in rows)])
    result = []
    time_column = _first_present(rows, TIME_COLUMNS)
    if time_column is not None:
        timed = [row for row in rows if _number(row.get(time_column)) is not None]
        if "width" in settings:
            result.append(_lines(timed, name, time_column, settings))
        else:
            result.append(_bars(timed, name, time_column, settings, _TIME_LABELS[time_column],
                                f"{time_column} (s)", log_y=True))
    nfe_column = _first_present(rows, BACKWARD_NFE_COLUMNS)
    if nfe_column is not None:
        result.append(_bars(rows, name, nfe_column, settings, "backward NFE per rule",
                            f"{nfe_column} (evaluations)", log_y=False))
    memory_column = _first_present(rows, MEMORY_COLUMNS)
    if memory_column is not None:
        result.append(_bars(rows, name, memory_column, settings, "peak memory per rule",
                            f"{memory_column} (MiB)"))
    return result


def check_can_draw(path: str) -> None:
    """Raise :class:`MissingMatplotlibError` (or ValueError for a file type matplotlib cannot
    write) before a task runs, so a long run does not end without its figure."""
    try:  # a Figure of its own, no pyplot: no GUI backend, no global state touched
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingMatplotlibError(f"--plot needs matplotlib: {_INSTALL}") from None

    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    supported = Figure().canvas.get_supported_filetypes()
    if suffix not in supported:
        raise ValueError(f"--plot {path!r}: the file name must end in a type matplotlib writes "
                         f"({', '.join('.' + s for s in sorted(supported))})")


def draw(figure_panels: Sequence[Panel], path: str, title: str, subtitle: str = "") -> None:
    """Draw ``figure_panels`` side by side into ``path`` (its suffix picks the format), each rule
    in the same colour in every panel, one legend of the rules below them."""
    check_can_draw(path)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    names = list(dict.fromkeys(s.name for panel in figure_panels for s in panel.series))
    palette = _palette(len(names))
    colours = dict(zip(names, palette))
    figure = Figure(figsize=(5.6 * len(figure_panels), 5.0), layout="constrained")
    axes = figure.subplots(1, len(figure_panels), squeeze=False)[0]
    for ax, panel in zip(axes, figure_panels):
        (_draw_lines if panel.kind == "lines" else _draw_bars)(ax, panel, colours)
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, which="both", axis="y", alpha=0.25)
        if panel.log_y:
            _readable_log_y(ax)
    handles = [Line2D([], [], color=colours[n], marker=_MARKERS[i % len(_MARKERS)], label=n)
               for i, n in enumerate(names)]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(names), 8),
                  fontsize=9, frameon=False)
    figure.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    figure.savefig(path, dpi=110)


_MARKERS = "osD^v<>phX*"


def _palette(count: int) -> list[Any]:
    from matplotlib import colormaps

    colours = colormaps["tab10" if count <= 10 else "tab20"].colors
    return [colours[i % len(colours)] for i in range(count)]


def _readable_log_y(ax: Any) -> None:
    """Label a log axis at 1, 2 and 5 times each power of ten, as plain numbers (a default log
    axis over less than a decade shows a single label)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


def _error_bars(series: Series, ys: Sequence[float | None]) -> list[list[float]] | None:
    if series.low is None or series.high is None:
        return None
    return [[y - lo if y is not None and lo is not None else 0.0 for y, lo in zip(ys, series.low)],
            [hi - y if y is not None and hi is not None else 0.0 for y, hi in zip(ys, series.high)]]


def _draw_lines(ax: Any, panel: Panel, colours: dict[str, Any]) -> None:
    names = list(dict.fromkeys(s.name for s in panel.series))
    settings = list(dict.fromkeys(s.setting for s in panel.series))
    styles = ["-", "--", ":", "-."]
    for series in panel.series:
        keep = [i for i, y in enumerate(series.ys) if y is not None]
        errors = _error_bars(series, series.ys)
        ax.errorbar([series.xs[i] for i in keep], [series.ys[i] for i in keep],
                    yerr=None if errors is None else [[errors[0][i] for i in keep],
                                                      [errors[1][i] for i in keep]],
                    color=colours[series.name], capsize=3,
                    marker=_MARKERS[names.index(series.name) % len(_MARKERS)],
                    linestyle=styles[settings.index(series.setting) % len(styles)])
    ax.set_xscale("log")
    widths = sorted({x for s in panel.series for x in s.xs})
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()  # the widths are the ticks; log minor ticks would label 9×10⁰
    if len(settings) > 1:  # the line style tells the other settings apart
        from matplotlib.lines import Line2D

        ax.legend(handles=[Line2D([], [], color="0.3", linestyle=styles[i % len(styles)],
                                  label=setting) for i, setting in enumerate(settings)],
                  fontsize=8)


def _draw_bars(ax: Any, panel: Panel, colours: dict[str, Any]) -> None:
    groups = list(dict.fromkeys(x for s in panel.series for x in s.xs))
    count = len(panel.series)
    width = 0.8 / count
    positions = []
    for i, series in enumerate(panel.series):
        offsets = [groups.index(x) - 0.4 + width * (i + 0.5) for x in series.xs]
        positions += [(offset, series.name) for offset in offsets]
        heights = [math.nan if y is None else y for y in series.ys]
        ax.bar(offsets, heights, width, yerr=_error_bars(series, series.ys), capsize=2,
               color=colours[series.name])
        for x, y in zip(offsets, series.ys):
            if y is None:  # the rule has no such figure (e.g. no backward solve): say so
                ax.annotate("none", (x, 0.01), xycoords=("data", "axes fraction"), ha="center",
                            va="bottom", fontsize=7, color="0.4", rotation=90)
    if panel.log_y:  # bars start at 0, which a log axis cannot show: fit the axis to the data
        tops = [v for s in panel.series for v in (s.high or s.ys) if v is not None and v > 0]
        bottoms = [v for s in panel.series for v in (s.low or s.ys) if v is not None and v > 0]
        if tops:
            ax.set_yscale("log")
            ax.set_ylim(min(bottoms) / 1.5, max(tops) * 1.3)
    if groups == [""]:  # nothing varies but the rule: name each bar
        positions.sort()
        ax.set_xticks([p for p, _ in positions], [n for _, n in positions], rotation=35,
                      ha="right", fontsize=8)
    else:
        ax.set_xticks(range(len(groups)), [g.replace(", ", "\n") for g in groups], fontsize=8)
