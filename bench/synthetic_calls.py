"""A synthetic labeled set of spectrogram-like PNGs for the active-learning simulation.

`calls`: one to three frequency-modulated harmonic contours (the shape of an orca call) at a random
time, pitch and slope; `nocalls`: the same background with broadband clicks and a low-frequency band
(what boats and snapping shrimp leave). Each image's signal-to-noise ratio is drawn from a wide range,
so some calls are faint and some clicks loud: the set has easy and hard examples, which is what makes
the choice of query strategy matter. Colour-mapped with viridis into RGB like the Orcasound images.
Seeded: the same arguments write the same files.

    python -m bench.synthetic_calls --out /tmp/synthetic --train 200 --validation 60
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def _background(rng, rows: int, cols: int) -> np.ndarray:
    noise = rng.gamma(2.0, 0.08, size=(rows, cols))
    tilt = np.linspace(0.15, 0.0, rows)[:, None]  # more energy at low frequencies (bottom rows)
    return noise + tilt[::-1]


def _call(rng, image: np.ndarray, strength: float) -> None:
    rows, cols = image.shape
    t = np.arange(cols)
    start, length = rng.integers(0, cols // 2), rng.integers(cols // 4, cols // 2)
    base = rng.uniform(0.55, 0.85) * rows
    slope = rng.uniform(-0.4, 0.4) * rows / cols
    bend = rng.uniform(-0.3, 0.3) * rows
    span = (t >= start) & (t < start + length)
    phase = (t - start) / max(1, length)
    for harmonic in range(1, rng.integers(2, 4) + 1):
        centre = rows - (rows - base) * harmonic - slope * (t - start) - bend * np.sin(np.pi * phase)
        for row_offset in (-1, 0, 1):
            r = np.clip(np.round(centre + row_offset).astype(int), 0, rows - 1)
            image[r[span], t[span]] += strength / (harmonic * (1 + abs(row_offset)))


def _distractors(rng, image: np.ndarray, strength: float) -> None:
    rows, cols = image.shape
    for col in rng.integers(0, cols, size=rng.integers(1, 5)):
        image[:, col] += strength * rng.uniform(0.3, 1.0)
    low = rng.integers(int(rows * 0.8), rows - 2)
    image[low:low + 2, :] += strength * 0.5


def spectrogram(rng, rows: int, cols: int, call: bool) -> np.ndarray:
    """uint8 RGB (rows, cols, 3)."""
    from matplotlib import colormaps

    image = _background(rng, rows, cols)
    strength = rng.uniform(0.15, 0.9)
    if call:
        _call(rng, image, strength)
        if rng.random() < 0.3:
            _distractors(rng, image, rng.uniform(0.05, 0.5))
    else:
        _distractors(rng, image, strength)
    image = np.clip(image / 1.2, 0.0, 1.0)
    return (colormaps["viridis"](image)[..., :3] * 255).astype(np.uint8)


def write_set(out: str | Path, train: int, validation: int, rows: int = 96, cols: int = 128,
              seed: int = 0) -> Path:
    """`out/{train,validation}/{calls,nocalls}/synthetic_<n>.png`, `train`/`validation` images per split."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("validation", validation)):
        for cls in ("calls", "nocalls"):
            (out / split / cls).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            cls = "calls" if n % 2 == 0 else "nocalls"
            pixels = spectrogram(rng, rows, cols, call=cls == "calls")
            Image.fromarray(pixels).save(out / split / cls / f"synthetic_{n:05d}.png")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=200, help="training (pool) images, half of them calls")
    parser.add_argument("--validation", type=int, default=60)
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--cols", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_set(args.out, args.train, args.validation, args.rows, args.cols, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
