"""Where /predict's time goes on this machine: the scoring stream the service runs, taken apart.

`python -m bench.pipeline [--images 512 --rows 607 --cols 617 --batch 32]` times, on local files
(no S3, no HTTP), each with the service's own functions:
- decode only: `scoring.stream.stream_batches` (what feeds the scorer; PIL on the CPU, torchvision on
  CUDA, as the service decodes), nothing scored;
- score only: the scorer (ONNX Runtime on the CPU, torch on CUDA) on batches decoded beforehand;
- stream: both together, as `/predict` runs them.
If "stream" is close to the slower of the first two, the pipeline overlaps well and that part is
the bound; if it is much slower than both, the two get in each other's way (cores, the GIL).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from scoring.stream import stream_batches

from .dataset import make_dataset


def make_scorer(model_path: Path, device: str, cache_dir: str):
    """(score(pixels) -> list, decode, name): the scorer and the PNG decoder /predict uses for `device`."""
    if device == "cpu":
        from scoring.images import decode_image
        from scoring.onnx_scoring import OnnxScorer

        scorer = OnnxScorer(model_path, cache_dir=cache_dir)
        return scorer.score_pixels, decode_image, "onnxruntime"
    import torch

    from conversion.formats import load_trainable
    from scoring.torch_decode import decode_png_torch
    from scoring.torch_scoring import score_pixels

    module = load_trainable(model_path).to(device).eval()
    return (lambda pixels: score_pixels(module, pixels, torch.device(device))), decode_png_torch, f"torch on {device}"


def timed(label: str, images: int, run) -> float:
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    print(f"{label:<34} {seconds:>8.2f} s {images / seconds:>10.1f} images/s", flush=True)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rows", type=int, default=607)
    parser.add_argument("--cols", type=int, default=617)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--pil", action="store_true", help="decode with PIL on CUDA too (for comparison)")
    args = parser.parse_args(argv)
    from scoring.device import cuda_available

    device = args.device or ("cuda" if cuda_available() else "cpu")
    from models.srkw_cnn import write_fresh_h5

    with tempfile.TemporaryDirectory(prefix="orca-pipeline-") as tmp:
        paths = make_dataset(Path(tmp) / "data", args.images, 4)["unlabeled"]
        for path in paths:
            path.read_bytes()  # page cache: time decoding, not the disk
        model = write_fresh_h5(Path(tmp) / "srkw_cnn_0.h5", args.rows, args.cols, seed=0)
        score, decode, name = make_scorer(model, device, os.path.join(tmp, "onnx"))
        if args.pil:
            from scoring.images import decode_image as decode
        decoder = "PIL" if decode.__module__ == "scoring.images" else "torchvision"
        batch = min(args.batch, 16) if device == "cpu" else args.batch  # the service's ORT batch bound
        print(f"{args.images} images {args.rows}x{args.cols}, batch {batch}, {os.cpu_count()} cores, {name}, "
              f"{decoder} decoding")
        decoded = []

        def decode_only():
            for b in stream_batches(paths, None, args.rows, args.cols, batch, workers=8, decode=decode):
                decoded.append(b.pixels)

        def score_only():
            for pixels in decoded:
                score(pixels)

        def stream():
            for b in stream_batches(paths, None, args.rows, args.cols, batch, workers=8, decode=decode):
                score(b.pixels)

        first = next(iter(stream_batches(paths[:batch], None, args.rows, args.cols, batch, decode=decode)))
        score(first.pixels)  # warm-up: the decoder's imports, cuDNN's algorithm choice, ONNX Runtime's arena
        timed("decode only (stream_batches)", args.images, decode_only)
        timed(f"score only ({name})", args.images, score_only)
        timed("stream: decode + score", args.images, stream)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
