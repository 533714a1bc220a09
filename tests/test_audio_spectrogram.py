"""The 2020 spectrogram pictures, pixel for pixel, from the real clips (sample_data/orcasound_audio, and the
larger set in ../shared when there is one), and audio.spectrogram's API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audio import spectrogram
from audio.decode import AudioError, decode
from repo_data import AUDIO_DIR, REPO

SAMPLE_MP3S = sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))
SHARED = REPO.parent / "shared" / "data" / "orcasound_audio"


def _png_of(mp3: Path) -> Path:
    return mp3.parent.parent.parent / "png" / mp3.parent.name / (mp3.stem + ".png")


def _rgba(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


def test_the_sample_data_holds_four_real_pairs():
    assert len(SAMPLE_MP3S) == 4 and all(_png_of(p).is_file() for p in SAMPLE_MP3S)
    assert (AUDIO_DIR / "LICENSE").is_file() and "Orcasound" in (AUDIO_DIR / "LICENSE").read_text()


@pytest.mark.parametrize("mp3", SAMPLE_MP3S, ids=[p.stem for p in SAMPLE_MP3S])
def test_the_png_written_for_each_sample_clip_is_the_2020_png_pixel_for_pixel(mp3, tmp_path):
    out = spectrogram.spectrogram_png(mp3, tmp_path / f"{mp3.stem}.png")
    got, want = _rgba(out), _rgba(_png_of(mp3))
    assert want.shape == (607, 617, 4)
    differing = int((got != want).any(-1).sum())
    assert differing == 0, f"{differing} pixels differ"


def _shared_pairs():
    if not SHARED.is_dir():
        return []
    return [p for p in sorted(SHARED.glob("mp3/*/*.mp3")) if _png_of(p).is_file()]


@pytest.mark.skipif(not _shared_pairs(), reason=f"no real pairs under {SHARED} (a clone outside the project has no "
                                                "../shared; the sample_data test covers the 4 shipped pairs)")
def test_every_real_pair_in_shared_renders_pixel_identical():
    pairs = _shared_pairs()
    bad = [p.name for p in pairs if not np.array_equal(spectrogram.pixels_from_file(p), _rgba(_png_of(p)))]
    assert bad == [], f"{len(bad)} of {len(pairs)} differ: {bad[:10]}"


def test_render_batch_equals_one_clip_at_a_time_and_takes_mono_or_channels():
    decoded = [decode(p) for p in SAMPLE_MP3S[:3]]
    stereo = torch.from_numpy(np.stack([d.samples for d in decoded]))
    batch = spectrogram.render_batch(stereo, 48000)
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (3, 607, 617, 4)
    for i, p in enumerate(SAMPLE_MP3S[:3]):
        assert np.array_equal(batch[i].numpy(), _rgba(_png_of(p)))
    mono = (stereo[:, 0] + stereo[:, 1]) / 2
    assert torch.equal(spectrogram.render_batch(mono, 48000), batch)


def test_int16_samples_are_scaled_as_audioread_did():
    d = decode(SAMPLE_MP3S[0])
    ints = np.round(d.samples.astype(np.float64) * 32768).astype(np.int16)
    assert np.array_equal(spectrogram.pixels_from_samples(ints, 48000), _rgba(_png_of(SAMPLE_MP3S[0])))


def test_stages_expose_the_intermediates_with_the_2020_shapes_and_dtypes():
    d = decode(SAMPLE_MP3S[1])
    s = spectrogram.stages(d.samples, d.rate)
    assert s["mono"].dtype == s["resampled"].dtype == torch.float32
    assert tuple(s["resampled"].shape) == (1, 66150)
    for key in ("mel", "pcen", "denoised"):
        assert s[key].dtype == torch.float64 and tuple(s[key].shape) == (1, 128, 130)
    assert int(s["index"].min()) == 0 and int(s["index"].max()) == 255


def test_other_rates_and_channel_counts_render_a_3_second_clip():
    rng = np.random.default_rng(4)
    for rate, channels in ((44100, 1), (16000, 3), (22050, 2)):
        x = (rng.standard_normal((channels, 3 * rate)) * 0.05).astype(np.float32)
        px = spectrogram.pixels_from_samples(x, rate)
        assert px.shape == (607, 617, 4) and len(np.unique(px[:603, 5:, :3].reshape(-1, 3), axis=0)) > 100


def test_a_clip_that_is_not_3_seconds_or_is_silent_is_a_clear_error(tmp_path):
    short = np.zeros((2, 48000), np.float32) + np.float32(0.01) * np.sin(np.arange(48000, dtype=np.float32))
    with pytest.raises(spectrogram.SpectrogramError, match=r"give 44 spectrogram frames; the 2020 picture has 130"):
        spectrogram.pixels_from_samples(short, 48000)
    with pytest.raises(spectrogram.SpectrogramError, match="silence"):
        spectrogram.pixels_from_samples(np.zeros((1, 66150), np.float32), 22050)
    import wave

    path = tmp_path / "one_second.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes((np.sin(np.arange(22050) / 5) * 3000).astype("<i2").tobytes())
    with pytest.raises(AudioError) as info:
        spectrogram.pixels_from_file(path)
    assert info.value.path == str(path) and "spectrogram frames" in info.value.reason


def test_write_png_is_atomic_and_never_overwrites_unless_asked(tmp_path):
    px = _rgba(_png_of(SAMPLE_MP3S[0]))
    target = tmp_path / "sub" / "x.png"
    assert spectrogram.write_png(px, target) == target
    assert np.array_equal(_rgba(target), px)
    before = target.read_bytes()
    with pytest.raises(FileExistsError):
        spectrogram.write_png(np.zeros_like(px), target)
    assert target.read_bytes() == before
    spectrogram.write_png(np.zeros_like(px), target, overwrite=True)
    assert _rgba(target).max() == 0
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.png"]  # no temporary file left
    with pytest.raises(ValueError):
        spectrogram.write_png(px[..., :3], tmp_path / "rgb.png")
    assert not (tmp_path / "rgb.png").exists()


def test_the_renderer_key_names_the_settings():
    key = spectrogram.renderer_key()
    assert len(key) == 16 and key == spectrogram.renderer_key()
    assert spectrogram.RENDERER["mel"]["n_fft"] == 2048 and spectrogram.RENDERER["version"] == 1
    changed = dict(spectrogram.RENDERER, version=2)
    import hashlib
    import json

    assert hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:16] != key


def test_the_audio_package_imports_no_service_code_and_no_reference_library():
    import ast

    for path in sorted((REPO / "audio").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"service", "flask", "librosa", "resampy", "skimage", "scipy", "training",
                            "scoring"}, (path.name, names)
        # numba, a serving dependency for the resampling loops, in their module only
        assert "numba" not in names or path.name == "_resample_kernels.py", (path.name, names)


def test_one_clip_draws_on_its_own_thread_only_and_leaves_other_threads_theirs():
    """pixels_from_samples runs torch on one OpenMP thread of the calling thread; the thread's own count,
    the main thread's and a new thread's are what they were (torch.set_num_threads is untouched)."""
    import threading
    from unittest import mock

    if torch.get_num_threads() < 2:
        pytest.skip("torch runs on one thread here: nothing to switch")
    decoded = decode(SAMPLE_MP3S[0])
    main_before, seen = torch.get_num_threads(), {}
    real_pixels = spectrogram._pixels

    def pixels(*args, **kwargs):
        seen.setdefault("inside", torch.get_num_threads())
        return real_pixels(*args, **kwargs)

    def draw():
        seen["before"] = torch.get_num_threads()
        seen["pixels"] = spectrogram.pixels_from_samples(decoded.samples, decoded.rate)
        seen["after"] = torch.get_num_threads()

    with mock.patch.object(spectrogram, "_pixels", pixels):
        worker = threading.Thread(target=draw)
        worker.start()
        worker.join()
    fresh = {}
    later = threading.Thread(target=lambda: fresh.setdefault("n", torch.get_num_threads()))
    later.start()
    later.join()
    assert seen["inside"] == 1 and seen["before"] == seen["after"] == main_before >= 2
    assert torch.get_num_threads() == main_before and fresh["n"] == main_before
    assert np.array_equal(seen["pixels"], _rgba(_png_of(SAMPLE_MP3S[0])))


def test_pixels_from_files_draws_batches_in_order_and_a_bad_clip_costs_only_itself(tmp_path):
    """Batches of 4 on 2 threads, and of 9 on one, over 10 files: the real clips twice over (drawn together, so with
    resample's batch kernel once 8 share a batch), a silent one and a non-audio file among them; results
    in the input order, each the one-clip path's pixels, each bad file its AudioError."""
    from audio_files import write_wav

    silent = write_wav(tmp_path / "silent.wav", np.zeros((2, 144000), np.float32), 48000)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio at all")
    paths = SAMPLE_MP3S[:2] + [silent] + SAMPLE_MP3S[2:] + [junk] + SAMPLE_MP3S * 1
    want = {p: spectrogram.pixels_from_file(p) for p in SAMPLE_MP3S}
    for batch, workers in ((4, 2), (9, 1)):
        got = list(spectrogram.pixels_from_files(iter(paths), batch=batch, workers=workers))
        assert [p for p, _ in got] == paths
        for path, pixels in got:
            if path == silent:
                assert isinstance(pixels, AudioError) and "silence" in str(pixels) and str(silent) in str(pixels)
            elif path == junk:
                assert isinstance(pixels, AudioError) and str(junk) in str(pixels)
            else:
                assert np.array_equal(pixels, want[path]), path


def test_pixels_from_files_runs_then_on_the_drawing_threads_and_yields_what_it_raises(tmp_path):
    import threading

    seen = []

    def then(path, pixels):
        seen.append(threading.current_thread().name)
        if path == SAMPLE_MP3S[1]:
            raise OSError(f"{path}: disk full")
        return pixels.shape

    got = dict(spectrogram.pixels_from_files(SAMPLE_MP3S, batch=2, workers=2, then=then))
    assert got[SAMPLE_MP3S[0]] == (607, 617, 4) and isinstance(got[SAMPLE_MP3S[1]], OSError)
    assert len(seen) == 4 and all(name.startswith("orca-spectrogram") for name in seen)
