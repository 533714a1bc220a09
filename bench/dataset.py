"""The benchmark's datasets: N spectrograms derived from the bundled Orcasound sample PNGs; and N clips
cycled from the 4 real Orcasound clips, as audio and as the PNGs `orca spectrogram` draws from them.

Each file is one of the real 640x480 RGBA spectrograms in `sample_data/orcasound/` (cycled
through in sorted order) with a small deterministic perturbation (a few hundred pixels nudged by
±1 in R, G and B; alpha kept), so every file is different but still looks like a spectrogram.

Layout (the original endpoint's):
- unlabeled: `<root>/unlabeled/spectrograms/orcasoundlab_<unix seconds>.png`, 3 s apart;
- labeled: `<root>/labeled/{train,validation}/{calls,nocalls}/<name>.png`, 3/4 train and 1/4
  validation, classes alternating, derived from the samples of the same class.
- audio (`make_audio_dataset`): `<root>/mp3/orcasoundlab_<unix seconds>.mp3`, 3 s apart, the real clips of
  `sample_data/orcasound_audio/mp3/` in sorted order, each copy with an ID3v1 tag naming its stem appended:
  every file has other bytes (another ETag, so no cache takes one for another) and the same audio (FFmpeg
  and librosa skip the tag). `spectrogram_copies` lays the same clips out as
  `<root>/spectrograms/<stem>.png`: the PNG `orca spectrogram` writes for the clip, with a text chunk naming
  the stem (other bytes, the same pixels).
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "orcasound"
SAMPLE_CLIPS = Path(__file__).resolve().parent.parent / "sample_data" / "orcasound_audio" / "mp3"
T0 = 1594154118
CLASSES = ("calls", "nocalls")
PERTURBED_PIXELS = 400


def sample_pngs(cls: str | None = None) -> list[Path]:
    pattern = f"*/{cls}/*.png" if cls else "*/*/*.png"
    found = sorted(SAMPLE.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no sample spectrograms under {SAMPLE}")
    return found


def perturbed(source: Path, seed: int) -> Image.Image:
    """`source` as RGBA with PERTURBED_PIXELS pixels' RGB nudged by ±1 (deterministic in `seed`)."""
    with Image.open(source) as img:
        pixels = np.array(img.convert("RGBA"), dtype=np.int16)
    rng = np.random.default_rng(seed)
    h, w = pixels.shape[:2]
    ys = rng.integers(0, h, PERTURBED_PIXELS)
    xs = rng.integers(0, w, PERTURBED_PIXELS)
    delta = rng.choice(np.array([-1, 1], dtype=np.int16), size=(PERTURBED_PIXELS, 3))
    pixels[ys, xs, :3] = np.clip(pixels[ys, xs, :3] + delta, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGBA")


def _write(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", compress_level=1)


def split_counts(labeled: int) -> dict[tuple[str, str], int]:
    """Files per (split, class): 3/4 train, the rest validation, each split with both classes."""
    if labeled < 4:
        raise ValueError("--labeled must be at least 4 (train and validation, both classes)")
    validation = max(2, labeled // 4)
    train = labeled - validation
    counts = {}
    for split, n in (("train", train), ("validation", validation)):
        counts[(split, "calls")] = (n + 1) // 2
        counts[(split, "nocalls")] = n // 2
    return counts


def make_dataset(root: str | os.PathLike, unlabeled: int, labeled: int, progress=None) -> dict:
    """Write the dataset under `root`; returns {"unlabeled": [paths], "labeled": {(split, cls): [paths]}}.

    Files are written by a thread per core (PIL releases the GIL while it encodes); each file's
    content depends only on its source and seed, so the result is the same whatever the thread count.
    """
    root = Path(root)
    sources = sample_pngs()
    jobs = []  # (source, seed, path)
    out_unlabeled = []
    for i in range(unlabeled):
        path = root / "unlabeled" / "spectrograms" / f"orcasoundlab_{T0 + 3 * i}.png"
        jobs.append((sources[i % len(sources)], i, path))
        out_unlabeled.append(path)
    out_labeled: dict = {}
    seed = 1_000_000
    for (split, cls), n in split_counts(labeled).items():
        by_class = sample_pngs(cls)
        files = []
        for i in range(n):
            source = by_class[i % len(by_class)]
            path = root / "labeled" / split / cls / f"{source.stem.split('.')[0]}_{i:05d}.png"
            jobs.append((source, seed, path))
            seed += 1
            files.append(path)
        out_labeled[(split, cls)] = files
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for done, _ in enumerate(pool.map(lambda job: _write(perturbed(job[0], seed=job[1]), job[2]), jobs), 1):
            if progress and (done % 256 == 0 or done == len(jobs)):
                progress(f"{done}/{len(jobs)} files")
    if progress:
        progress(f"labeled {labeled} ({', '.join(f'{s}/{c}={len(v)}' for (s, c), v in out_labeled.items())})")
    return {"unlabeled": out_unlabeled, "labeled": out_labeled}


def sample_clips() -> list[Path]:
    found = sorted(SAMPLE_CLIPS.glob("*/*.mp3"))
    if not found:
        raise FileNotFoundError(f"no sample clips under {SAMPLE_CLIPS}")
    return found


def id3v1_tagged(mp3: bytes, title: str) -> bytes:
    """`mp3` with a 128-byte ID3v1 tag (title only) appended: other bytes, the same audio."""
    return mp3 + b"TAG" + title.encode("ascii")[:30].ljust(30, b"\0") + bytes(125 - 30)


def png_with_text(png: bytes, text: str) -> bytes:
    """`png` with a tEXt chunk ("Comment", `text`) right after its IHDR: other bytes, the same pixels."""
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, 13 bytes of data and CRC
    data = b"tEXt" + b"Comment\0" + text.encode("ascii")
    chunk = struct.pack(">I", len(data) - 4) + data + struct.pack(">I", zlib.crc32(data))
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def make_audio_dataset(root: str | os.PathLike, clips: int) -> dict:
    """`clips` audio clips under `root/mp3/` (see the module); returns {"clips": [paths], "sources": [the
    sample clip each one is a copy of]}."""
    folder = Path(root) / "mp3"
    folder.mkdir(parents=True, exist_ok=True)
    samples = sample_clips()
    paths, sources = [], []
    for i in range(clips):
        source = samples[i % len(samples)]
        path = folder / f"orcasoundlab_{T0 + 3 * i}.mp3"
        path.write_bytes(id3v1_tagged(source.read_bytes(), path.stem))
        paths.append(path)
        sources.append(source)
    return {"clips": paths, "sources": sources}


def spectrogram_copies(dataset: dict, root: str | os.PathLike) -> list[Path]:
    """`root/spectrograms/<stem>.png` for each clip of `make_audio_dataset`'s `dataset`: the PNG `orca
    spectrogram` writes for it (`audio.spectrogram.spectrogram_png`, on one torch thread as that command
    runs), drawn once per sample clip, each copy with a text chunk naming its stem."""
    import tempfile

    import torch

    from audio.spectrogram import spectrogram_png

    folder = Path(root) / "spectrograms"
    folder.mkdir(parents=True, exist_ok=True)
    drawn: dict[Path, bytes] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="orca-bench-png-") as tmp:
            for source in sorted(set(dataset["sources"])):
                drawn[source] = spectrogram_png(source, Path(tmp) / f"{source.stem}.png").read_bytes()
    finally:
        torch.set_num_threads(threads)
    paths = []
    for clip, source in zip(dataset["clips"], dataset["sources"]):
        path = folder / f"{clip.stem}.png"
        path.write_bytes(png_with_text(drawn[source], clip.stem))
        paths.append(path)
    return paths
