"""The spectrogram renderer on CUDA against the CPU and the 2020 PNGs (docs/audio.md, "CUDA"). Marked
`cuda`: skipped with a reason on a machine without one; bench/audio_gpu.py reports the same counts with
the throughput (bench/gpu_check.sh runs both)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from audio.decode import decode
from audio.spectrogram import stages
from repo_data import AUDIO_DIR
from scoring.clips import ClipDecoder

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")]

CLIPS = sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))
# The FFT, matrix products, exp/log and reductions on the device may differ from the CPU's in the last
# bits, which can move a cell across a colour boundary: allowed in at most this share of the pixels.
MAX_DIFFERING = 0.01


@pytest.fixture(scope="module")
def samples():
    decoded = [decode(p) for p in CLIPS]
    return torch.from_numpy(np.stack([d.samples for d in decoded])), decoded[0].rate


@pytest.fixture(scope="module")
def both(samples):
    x, rate = samples
    return stages(x, rate), stages(x, rate, device="cuda")


def test_the_resampled_samples_on_cuda_are_the_cpus_bit_for_bit(both):
    cpu, cuda = both
    assert torch.equal(cuda["mono"].cpu(), cpu["mono"])
    assert torch.equal(cuda["resampled"].cpu(), cpu["resampled"])  # gathers, exact products, separate adds


def test_the_pictures_on_cuda_are_the_2020_pngs_but_for_rare_cells(both):
    _, cuda = both
    pixels = cuda["pixels"].cpu().numpy()
    for clip, picture in zip(CLIPS, pixels):
        png = np.asarray(Image.open(AUDIO_DIR / "png" / clip.parent.name / f"{clip.stem}.png").convert("RGBA"))
        differing = int((picture != png).any(-1).sum())
        print(f"{clip.name}: {differing} of {png.shape[0] * png.shape[1]} pixels differ from the 2020 PNG")
        assert differing <= MAX_DIFFERING * png.shape[0] * png.shape[1], clip.name


def test_the_batched_cuda_decoder_gives_the_cpu_decoders_model_input_but_for_rare_cells(samples):
    rows, cols = 607, 617
    decoder = ClipDecoder(device=torch.device("cuda"))
    decoded = [decoder.samples(str(p)) for p in CLIPS]
    on_cuda = decoder.render(decoded, rows, cols)
    for clip, got in zip(CLIPS, on_cuda):
        assert got.device.type == "cuda" and got.dtype == torch.uint8 and tuple(got.shape) == (rows, cols, 3)
        want = ClipDecoder()(str(clip), rows, cols)  # the CPU path, one clip at a time
        differing = int((got.cpu().numpy() != want).any(-1).sum())
        assert differing <= MAX_DIFFERING * rows * cols, clip.name
