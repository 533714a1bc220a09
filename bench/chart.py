"""A grouped bar chart (images per second, reference vs ours) drawn with PIL (no matplotlib needed)."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

COLORS = {"reference": (150, 150, 150), "ours": (31, 119, 180)}


def bar_chart(path, groups: list[str], series: dict[str, list[float]], title: str, unit: str,
              notes: list[str] | None = None) -> str:
    """`series` = {name: [value per group]}; writes a PNG to `path`."""
    width, height = 900, 520
    left, right, top, bottom = 80, 30, 60, 110
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 20), title, fill="black", font=font)
    top_value = max([v for values in series.values() for v in values] + [1e-9]) * 1.15
    plot_h = height - top - bottom
    draw.line((left, top, left, height - bottom), fill="black")
    draw.line((left, height - bottom, width - right, height - bottom), fill="black")
    for k in range(6):  # y ticks
        value = top_value * k / 5
        y = height - bottom - plot_h * k / 5
        draw.line((left - 5, y, left, y), fill="black")
        draw.text((5, y - 6), f"{value:.3g}", fill="black", font=font)
    draw.text((5, top - 20), unit, fill="black", font=font)
    group_w = (width - left - right) / max(len(groups), 1)
    bar_w = group_w * 0.7 / max(len(series), 1)
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.15
        for s, (name, values) in enumerate(series.items()):
            value = values[g]
            x = x0 + s * bar_w
            y = height - bottom - plot_h * (value / top_value)
            draw.rectangle((x, y, x + bar_w - 4, height - bottom), fill=COLORS.get(name, (200, 100, 50)))
            draw.text((x + 2, y - 14), f"{value:.3g}", fill="black", font=font)
        draw.text((x0, height - bottom + 8), group, fill="black", font=font)
    legend_x = width - right - 160
    for s, name in enumerate(series):
        y = top + s * 18
        draw.rectangle((legend_x, y, legend_x + 12, y + 12), fill=COLORS.get(name, (200, 100, 50)))
        draw.text((legend_x + 18, y), name, fill="black", font=font)
    for n, line in enumerate(notes or []):
        draw.text((left, height - bottom + 30 + 14 * n), line, fill="black", font=font)
    image.save(path)
    return str(path)
