"""How PNG decoding (`scoring.images.decode_image`, the /predict and /train preprocessing) scales
with threads on this machine: images per second for 1, 2, 4, … threads up to the core count.

`python -m bench.decode_threads [--images 512 --rows 607 --cols 617 --malloc default|kept]` prints a
table. On a many-core GPU machine this tells whether /predict is bound by decoding and whether threads
still help there (PIL releases the GIL while it inflates, converts and resizes; the rest holds it).
`--malloc kept` first sets glibc as the service does (`service.allocator.keep_freed_blocks`: one
arena for every thread), so two runs show what that costs the decoding threads; mallopt settings last
for the process, hence one run per setting.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scoring.images import decode_image

from .dataset import make_dataset


def thread_counts(cores: int) -> list[int]:
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_threads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rows", type=int, default=607)
    parser.add_argument("--cols", type=int, default=617)
    parser.add_argument("--malloc", choices=("default", "kept"), default="default",
                        help="glibc's defaults, or the service's keep_freed_blocks() (ORCA_TUNE_MALLOC=1)")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    malloc = "glibc's defaults"
    if args.malloc == "kept":
        from service.allocator import keep_freed_blocks

        malloc = ("glibc keeping freed blocks, one arena" if keep_freed_blocks()
                  else "glibc's defaults (keep_freed_blocks() is a no-op here)")
    with tempfile.TemporaryDirectory(prefix="orca-decode-") as tmp:
        paths = make_dataset(Path(tmp), args.images, 4)["unlabeled"]
        for path in paths:  # warm the page cache: time decoding, not the disk
            path.read_bytes()
        print(f"{args.images} spectrograms (640x480 RGBA PNG) -> {args.rows}x{args.cols} RGB, {cores} cores, {malloc}")
        print(f"{'threads':>8} {'images/s':>10} {'ms/image/thread':>16}")
        for threads in thread_counts(cores):
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda p: decode_image(p, args.rows, args.cols), paths[:threads]))  # warm-up
                started = time.perf_counter()
                list(pool.map(lambda p: decode_image(p, args.rows, args.cols), paths))
                seconds = time.perf_counter() - started
            print(f"{threads:>8} {args.images / seconds:>10.1f} {1000 * seconds * threads / args.images:>16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
