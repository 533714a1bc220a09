"""Write the matplotlib 3.2.2 reference pictures of tests/test_audio_picture.py (run once, by hand).

usage:  DEST/venv/bin/python tests/data/make_mpl322_pictures.py tests/data
(DEST: the 2020 environment that ../shared/tools/spectrogram-reference/setup.sh DEST builds.)

Draws three synthetic 128 x 130 arrays with the 2020 figure calls (imshow, axes hidden, 10 x 9.8 in,
dpi 80, bbox_inches="tight", pad_inches=0) and writes mpl322_<name>.png. The arrays come from
`pictures()`, which tests/test_audio_picture.py imports and rebuilds bit for bit (numpy's PCG64
`random()` stream and exact arithmetic only):
  even / odd: random cells, frame 0 holding every even / odd colour index (the left spine is blended
              with frame 0's colour: together they give that blend for all 256 colours);
  edges:      values on and next to the 256 colour boundaries of a narrow range far from zero, where
              matplotlib's scaling (to 0.1..0.9 and back, then Normalize) and a direct
              int(256 (D - min) / (max - min)) can disagree.
"""
from __future__ import annotations

import sys

import numpy as np


def pictures() -> dict[str, np.ndarray]:
    out = {}
    for name, parity in (("even", 0), ("odd", 1)):
        rng = np.random.Generator(np.random.PCG64(322 + parity))
        d = rng.random((128, 130))
        d[:, 0] = (2 * np.arange(128) + parity + 0.5) / 256  # frame 0: colour index 2i + parity
        d[5, 50], d[7, 60] = 0.0, 1.0  # the range is exactly 0..1
        out[name] = d
    rng = np.random.Generator(np.random.PCG64(3222))
    lo, hi = 2.75, 2.75 + 3e-3
    k = rng.integers(0, 257, size=(128, 130))
    d = lo + (hi - lo) * (k / 256.0)  # on a boundary (rounded), then nudged by 0 or +-1 ulp
    nudge = rng.integers(-1, 2, size=d.shape)
    d = np.where(nudge > 0, np.nextafter(d, np.inf), np.where(nudge < 0, np.nextafter(d, -np.inf), d))
    d[0, 0], d[-1, -1] = lo, hi
    out["edges"] = np.clip(d, lo, hi)
    return out


def main(folder: str) -> None:
    import os

    import matplotlib

    assert matplotlib.__version__ == "3.2.2", matplotlib.__version__
    matplotlib.use("Agg")
    matplotlib.rcdefaults()
    import matplotlib.pyplot as plt

    for name, d in pictures().items():
        fig, ax = plt.subplots()
        ax.imshow(d)
        ax.get_xaxis().set_visible(False)
        ax.get_yaxis().set_visible(False)
        fig.set_size_inches(10, 9.8)
        fig.savefig(os.path.join(folder, f"mpl322_{name}.png"), dpi=80, bbox_inches="tight", pad_inches=0.0)
        plt.close(fig)
        print(f"mpl322_{name}.png")


if __name__ == "__main__":
    main(sys.argv[1])
