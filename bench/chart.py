"""A grouped bar chart (images per second, reference vs ours), drawn with matplotlib's Agg canvas."""

from __future__ import annotations

import textwrap

COLORS = {"reference": "#969696", "ours": "#1f77b4"}
OTHER_COLORS = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _label(value: float) -> str:
    """3 significant digits, without exponent notation for the values a benchmark shows."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def bar_chart(path, groups: list[str], series: dict[str, list[float]], title: str, unit: str,
              notes: list[str] | None = None) -> str:
    """`series` = {name: [value per group]}; writes a PNG to `path` (notes below the axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    notes = [line for note in (notes or []) for line in textwrap.wrap(str(note), 130) or [""]]
    title_lines = textwrap.wrap(title, 110) or [""]
    # the axes keep a fixed height in inches; the title gets the space above, the notes below them
    above, below = 0.25 + 0.22 * len(title_lines), 0.5 + (0.1 + 0.19 * len(notes) if notes else 0)
    figure = Figure(figsize=(10, 4.3 + above + below), dpi=100)
    FigureCanvasAgg(figure)
    height = figure.get_figheight()
    figure.subplots_adjust(left=0.09, right=0.98, top=1 - above / height, bottom=below / height)
    ax = figure.add_subplot()
    count = max(len(series), 1)
    width = 0.8 / count
    others = iter(OTHER_COLORS * (1 + count // len(OTHER_COLORS)))
    for s, (name, values) in enumerate(series.items()):
        offsets = [g - 0.4 + width * (s + 0.5) for g in range(len(groups))]
        bars = ax.bar(offsets, [float(v) for v in values], width * 0.92, label=name,
                      color=COLORS.get(name) or next(others))
        ax.bar_label(bars, labels=[_label(float(v)) for v in values], padding=2, fontsize=9)
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(unit)
    ax.margins(y=0.12)  # room for the value labels above the tallest bar
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    if series:
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0) if len(groups) > 8 else None)
    figure.suptitle("\n".join(title_lines), y=1 - 0.1 / height, va="top", fontsize=12)
    if notes:
        figure.text(0.01, 0.1 / height, "\n".join(notes), ha="left", va="bottom", fontsize=9, linespacing=1.35)
    figure.savefig(path, format="png", metadata={"Software": None})
    return str(path)
