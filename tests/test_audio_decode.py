"""audio.decode: the fixed-point mp3 decoder's 16-bit samples, other containers and codecs at any rate and
channel count, and AudioError (file + reason) for what gives no audio."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest

import av

from audio.decode import AudioError, decode  # noqa: E402
from audio_files import encode  # noqa: E402
from repo_data import AUDIO_DIR  # noqa: E402

MP3S = sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))


def test_the_sample_clips_decode_with_the_fixed_point_mp3_decoder_to_16_bit_steps():
    assert len(MP3S) == 4
    for path in MP3S:
        d = decode(path)
        assert (d.decoder, d.sample_format, d.container) == ("mp3", "s16p", "mp3")
        assert (d.rate, d.channels, d.frames) == (48000, 2, 144000)  # 3.0 s, no encoder delay trimmed
        assert d.samples.dtype == np.float32
        steps = d.samples.astype(np.float64) * 32768
        assert np.array_equal(steps, np.round(steps)) and np.abs(steps).max() > 100


def test_the_fixed_point_decoder_differs_from_pyavs_default_float_decoder():
    """The reason the fixed decoder is chosen: mp3float's samples are not the 16-bit ones of 2020."""
    d = decode(MP3S[0])
    with av.open(str(MP3S[0])) as c:
        assert c.streams.audio[0].codec_context.name == "mp3float"
        flt = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    assert flt.shape == d.samples.shape
    diff = np.abs(flt - d.samples)
    assert diff.max() < 1e-3 and (diff > 0).mean() > 0.5


def test_bytes_and_file_objects_decode_like_the_path():
    ref = decode(MP3S[1])
    data = MP3S[1].read_bytes()
    for src in (data, io.BytesIO(data)):
        d = decode(src, name="clip.mp3")
        assert d.path == "clip.mp3" and np.array_equal(d.samples, ref.samples)


def test_aac_in_mpeg_ts_decodes():
    d = decode(AUDIO_DIR / "hls" / "live000.ts")
    assert (d.decoder, d.container, d.rate, d.channels) == ("aac", "mpegts", 48000, 1)
    assert 9.7 < d.duration < 9.9 and np.abs(d.samples).max() > 0.01


@pytest.mark.parametrize("fmt,codec,sample_format,rate,channels", [
    ("wav", "pcm_s16le", "s16", 44100, 1),
    ("wav", "pcm_s16le", "s16", 22050, 2),
    ("wav", "pcm_s24le", "s32", 16000, 2),
    ("wav", "pcm_f32le", "flt", 96000, 1),
    ("flac", "flac", "s16", 32000, 6),
    ("wav", "pcm_u8", "u8", 8000, 2),
])
def test_lossless_files_give_back_their_samples_at_any_rate_and_channel_count(tmp_path, fmt, codec, sample_format,
                                                                               rate, channels):
    rng = np.random.default_rng(rate + channels)
    k = rng.integers(-32768, 32768, size=(channels, 4001))
    if sample_format == "s16":
        raw, want = k.astype(np.int16), k / 32768.0
    elif sample_format == "s32":
        raw, want = (k.astype(np.int32) << 16), k / 32768.0  # 24-bit file: the top 16 bits survive
    elif sample_format == "u8":
        raw = (k // 256 + 128).astype(np.uint8)
        want = (raw.astype(np.float64) - 128) / 128
    else:
        raw = (k / 32768.0).astype(np.float32)
        want = raw.astype(np.float64)
    path = encode(tmp_path / f"x.{fmt}", fmt, codec, raw, rate, sample_format)
    d = decode(path)
    assert (d.rate, d.channels, d.frames) == (rate, channels, 4001)
    assert np.array_equal(d.samples.astype(np.float64), want.astype(np.float32).astype(np.float64))


def test_missing_empty_folder_and_non_audio_inputs_raise_audio_error_naming_file_and_reason(tmp_path):
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("not audio at all\n" * 50)
    png = next(AUDIO_DIR.glob("png/*/*.png"))
    cases = [(tmp_path / "missing.wav", "no such file"), (empty, "empty file"), (tmp_path, "folder"),
             (text, "not an audio file"), (png, "no audio stream")]
    for path, reason in cases:
        with pytest.raises(AudioError) as info:
            decode(path)
        assert isinstance(info.value, ValueError)
        assert str(path) in str(info.value) and reason in info.value.reason, str(info.value)


def test_a_truncated_mp3_is_an_error_unless_lenient(tmp_path):
    data = MP3S[0].read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="truncated"):
        decode(cut)
    d = decode(cut, strict=False)
    assert 1.3 < d.duration < 1.6 and any("truncated" in s for s in d.skipped)
    ref = decode(MP3S[0])
    assert np.array_equal(d.samples[:, :60000], ref.samples[:, :60000])  # what is there is the same


def test_corrupt_packets_are_an_error_unless_lenient(tmp_path):
    data = bytearray((AUDIO_DIR / "hls" / "live000.ts").read_bytes())
    data[30000:38000] = np.random.default_rng(1).integers(0, 256, 8000, dtype=np.uint8).tobytes()
    bad = tmp_path / "live001.ts"
    bad.write_bytes(bytes(data))
    with pytest.raises(AudioError, match=r"corrupt or truncated audio: packet at \d+\.\d+ s") as info:
        decode(bad)
    assert info.value.path == str(bad)
    d = decode(bad, strict=False)
    assert d.skipped and 8.0 < d.duration < 9.8


def test_a_file_with_a_header_and_no_samples_is_an_error(tmp_path):
    path = tmp_path / "nothing.wav"
    with wave.open(str(path), "wb") as w:  # a header, a data chunk of 0 bytes
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"")
    with pytest.raises(AudioError, match="no audio samples"):
        decode(path)


def test_16_bit_samples_become_k_over_32768_exactly_through_the_float32_route():
    """decode scales int16 in float32 (exact: every int16 is a float32, 2^-15 a power of two): the same bits
    as audioread/librosa's float64 route, for all 65,536 values, planar and packed alike."""
    from audio.decode import _to_float

    k = np.arange(-32768, 32768, dtype=np.int16).reshape(2, -1)
    want = (k.astype(np.float64) / 32768.0).astype(np.float32)
    for name in ("s16", "s16p"):
        got = _to_float(k, name)
        assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), want.view(np.int32))
