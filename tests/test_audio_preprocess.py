"""`orca preprocess` on the real HLS segment of sample_data/orcasound_audio/: the original's layout and names,
clips of the right length, each PNG what `audio.spectrogram` (`orca spectrogram`) draws from its mp3; segments in
numeric order, local and on S3 (moto); resumable; bad inputs reported by name while the rest is written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import av
from audio import spectrogram

from audio.decode import decode  # noqa: E402
from orca.cli import main  # noqa: E402
from audio_files import SEGMENT, split_segment, write_video_only_ts, write_wav  # noqa: E402

T = 1594150218  # orcaal's README example: preprocess_unlabeled.py testdata unlabeled_test -l orcasoundlab -s 1594150218
STEMS = [f"orcasoundlab_{T + s}" for s in (0, 3, 6)]  # 9.79 s: clips at 0, 3, 6 s (the last 0.79 s in none)


def run(capsys, *argv) -> tuple[int, dict, str]:
    status = main(["preprocess", *map(str, argv)])
    captured = capsys.readouterr()
    return status, json.loads(captured.out), captured.err


def layout(out: Path) -> dict[str, list[str]]:
    return {d: sorted(os.listdir(out / d)) for d in ("mp3", "spectrograms")}


def contents(out: Path) -> dict[str, bytes]:
    return {f"{d}/{f}": (out / d / f).read_bytes() for d in ("mp3", "spectrograms") for f in os.listdir(out / d)}


def png_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One run on the real segment, shared by the tests that only read it: (output folder, summary, stderr)."""
    folder = tmp_path_factory.mktemp("hls")
    shutil.copy(SEGMENT, folder / "live000.ts")
    out = tmp_path_factory.mktemp("out")
    import io
    from contextlib import redirect_stderr, redirect_stdout

    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        status = main(["preprocess", str(folder), str(out), "-l", "orcasoundlab", "-s", str(T)])
    assert status == 0, stderr.getvalue()
    return out, json.loads(stdout.getvalue()), stderr.getvalue()


def test_the_real_segment_gives_the_original_layout_and_names(reference):
    out, summary, err = reference
    assert layout(out) == {"mp3": [s + ".mp3" for s in STEMS], "spectrograms": [s + ".png" for s in STEMS]}
    assert (summary["written"], summary["kept"], summary["failed"]) == (3, 0, 0)
    assert summary["rate"] == 48_000 and summary["channels"] == 1
    assert summary["seconds"] == pytest.approx(9.792) and summary["dropped_seconds"] == pytest.approx(0.792)
    assert "3 written, 0 completed, 0 kept, 0 failed" in err


def test_each_clip_is_3_seconds_of_the_segment_at_its_rate_and_channels(reference):
    out, _, _ = reference
    source = decode(str(SEGMENT)).samples
    for i, stem in enumerate(STEMS):
        clip = decode(str(out / "mp3" / f"{stem}.mp3"))
        assert (clip.rate, clip.channels, clip.frames, clip.decoder) == (48_000, 1, 144_000, "mp3")
        with av.open(str(out / "mp3" / f"{stem}.mp3")) as container:
            assert container.streams.audio[0].bit_rate == 128_000
        part = source[0, i * 144_000:(i + 1) * 144_000]
        assert np.corrcoef(clip.samples[0], part)[0, 1] > 0.95  # this clip's audio, lined up to the sample
        assert np.corrcoef(clip.samples[0, 1024:], part[:-1024])[0, 1] < 0.5


def test_each_png_is_the_spectrogram_of_its_written_mp3(reference, tmp_path):
    out, _, _ = reference
    for stem in STEMS:
        png = out / "spectrograms" / f"{stem}.png"
        drawn = png_pixels(png)
        assert drawn.shape == (607, 617, 4)
        np.testing.assert_array_equal(drawn, spectrogram.pixels_from_file(str(out / "mp3" / f"{stem}.mp3")))
    # the same as `orca spectrogram` of the clips, file for file
    try:
        status = main(["spectrogram", *[str(out / "mp3" / f"{s}.mp3") for s in STEMS], "--out", str(tmp_path)])
    except SystemExit as exc:  # no `orca spectrogram` in this checkout yet
        pytest.skip(f"orca spectrogram: {exc}")
    assert status == 0
    for stem in STEMS:
        np.testing.assert_array_equal(png_pixels(tmp_path / f"{stem}.png"),
                                      png_pixels(out / "spectrograms" / f"{stem}.png"))


def test_numbered_segments_are_read_in_numeric_order_as_one_stream(reference, tmp_path, capsys):
    """live8, live9, live10 (a text sort puts live10 first): the same clips, byte for byte, as the whole."""
    out, _, _ = reference
    folder = tmp_path / "rpi_orcasound_lab" / "hls" / str(T)
    split_segment(SEGMENT, ["live8.ts", "live9.ts", "live10.ts"], folder)
    (folder / "live.m3u8").write_text("#EXTM3U\n#EXTINF:3.26,\nlive9.ts\n")  # a live playlist: not read
    status, summary, err = run(capsys, folder, tmp_path / "split")
    assert status == 0, err
    assert contents(tmp_path / "split") == contents(out)  # names from the URL: orcasoundlab_<folder time + start>
    assert "1 file(s) of INPUT are not read: live.m3u8" in err


def test_a_playlist_is_read_in_its_order(tmp_path, capsys):
    folder = tmp_path / "hls"
    split_segment(SEGMENT, ["a.ts", "b.ts", "c.ts"], folder)
    (folder / "live.m3u8").write_text("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:3.26,\nb.ts\n#EXTINF:3.26,\nc.ts\n"
                                      "#EXT-X-ENDLIST\n")
    status, summary, err = run(capsys, folder / "live.m3u8", tmp_path / "out", "-l", "x", "-s", "100")
    assert status == 0, err
    assert layout(tmp_path / "out")["mp3"] == ["x_100.mp3", "x_103.mp3"]  # 6.53 s: clips 0-3 and 3-6
    assert decode(str(tmp_path / "out" / "mp3" / "x_103.mp3")).frames == 144_000
    assert summary["dropped_seconds"] == pytest.approx((306 * 1024 - 288_000) / 48_000, abs=1e-3)


def test_drop_partial_writes_full_clips_only(tmp_path, capsys):
    wav = write_wav(tmp_path / "rec.wav", np.random.default_rng(1).normal(0, 0.1, (2, 16_000 * 7 + 500))
                    .astype(np.float32), 16_000)  # 7.03 s stereo at 16 kHz
    status, summary, err = run(capsys, wav, tmp_path / "all", "-l", "n", "-s", "0")
    assert status == 0, err
    assert layout(tmp_path / "all")["mp3"] == ["n_0.mp3", "n_3.mp3", "n_6.mp3"]
    last = decode(str(tmp_path / "all" / "mp3" / "n_6.mp3"))
    assert (last.rate, last.channels, last.frames) == (16_000, 2, 16_500)  # the trailing 1.03 s, as the original
    # ... as mp3 only: the 2020 picture is the spectrogram of a 3-second clip, and no other is drawn
    assert layout(tmp_path / "all")["spectrograms"] == ["n_0.png", "n_3.png"]
    assert (summary["written"], summary["mp3_only"], summary["failed"]) == (2, 1, 0)
    assert "1 as mp3 only" in err
    for stem in ("n_0", "n_3"):
        np.testing.assert_array_equal(png_pixels(tmp_path / "all" / "spectrograms" / f"{stem}.png"),
                                      spectrogram.pixels_from_file(str(tmp_path / "all" / "mp3" / f"{stem}.mp3")))
    status, summary, err = run(capsys, wav, tmp_path / "all", "-l", "n", "-s", "0")  # a rerun: all kept
    assert status == 0 and (summary["written"], summary["kept"], summary["mp3_only"]) == (0, 2, 1)
    status, summary, err = run(capsys, wav, tmp_path / "full", "-l", "n", "--drop-partial")
    assert status == 0 and layout(tmp_path / "full")["mp3"] == ["n_0.mp3", "n_3.mp3"]
    assert summary["dropped_seconds"] == pytest.approx(16_500 / 16_000, abs=1e-3)


def test_a_rerun_keeps_what_is_there_and_completes_what_is_missing(reference, tmp_path, capsys):
    src, _, _ = reference
    out = tmp_path / "out"
    shutil.copytree(src, out)
    before = contents(out)
    folder = tmp_path / "hls"
    folder.mkdir()
    shutil.copy(SEGMENT, folder / "live000.ts")
    args = (folder, out, "-l", "orcasoundlab", "-s", T)
    status, summary, _ = run(capsys, *args)
    assert status == 0 and (summary["written"], summary["kept"]) == (0, 3)
    assert contents(out) == before
    mtimes = {p: os.stat(out / p).st_mtime_ns for p in before}
    os.unlink(out / "spectrograms" / f"{STEMS[1]}.png")  # a run stopped between the mp3 and its PNG
    os.unlink(out / "mp3" / f"{STEMS[2]}.mp3")  # ... or lost an mp3
    status, summary, _ = run(capsys, *args)
    assert status == 0 and (summary["written"], summary["completed"], summary["kept"]) == (0, 2, 1)
    assert contents(out) == before  # the PNG drawn again from the kept mp3, the mp3 encoded again the same
    for path, mtime in mtimes.items():
        if path not in (f"spectrograms/{STEMS[1]}.png", f"mp3/{STEMS[2]}.mp3"):
            assert os.stat(out / path).st_mtime_ns == mtime, path  # untouched
    assert not [f for d in ("mp3", "spectrograms") for f in os.listdir(out / d) if f.startswith(".")]


def test_bad_segments_are_reported_and_the_rest_is_written(reference, tmp_path, capsys):
    """live1 is random bytes, live3 a text file, live2 cut in half (inside a TS packet), live5 missing: each named
    with its reason; the clips their gaps cut into are reported, the others written; exit status 1."""
    src, _, _ = reference
    folder = tmp_path / "hls"
    split_segment(SEGMENT, [f"live{i}.ts" for i in range(6)], folder, keep={0, 2, 4})  # 6 parts of 1.63 s
    live2 = folder / "live2.ts"
    data = live2.read_bytes()
    live2.write_bytes(data[: len(data) // 2 + 77])
    (folder / "live1.ts").write_bytes(np.random.default_rng(2).bytes(30_000))
    (folder / "live3.ts").write_text("#EXTM3U\nnot a segment\n")
    out = tmp_path / "out"
    (out / "mp3").mkdir(parents=True)
    kept = out / "mp3" / f"{STEMS[1]}.mp3"
    kept.write_bytes(b"an earlier clip")  # never overwritten, even when its audio is missing now
    status, summary, err = run(capsys, folder, out, "-l", "orcasoundlab", "-s", T)
    assert status == 1
    for name, reason in (("live1.ts", "not an audio file"), ("live3.ts", "not an audio file"),
                         ("live2.ts", "truncated")):
        assert any(name in line and reason in line for line in err.splitlines()), (name, err)
    # audio: 0-1.63 s, then a gap to 3.26 (live1), half of live2, gap to 6.53 (live3), 6.53-8.16 (live4), end
    assert layout(out)["spectrograms"] == []  # every clip of this run has a gap in it ...
    assert summary["failed"] == 3 and summary["written"] == 0
    assert {c["name"] for c in summary["failed_clips"]} == set(STEMS)
    assert all("missing" in c["reason"] for c in summary["failed_clips"])
    assert kept.read_bytes() == b"an earlier clip"
    assert "0 written, 0 completed, 0 kept, 3 failed, 3 input(s) with problems" in err, err
    # one bad segment of three: the clip before its gap is written like the whole segment's
    folder2 = tmp_path / "hls2"
    split_segment(SEGMENT, ["live0.ts", "live1.ts", "live2.ts"], folder2)
    (folder2 / "live1.ts").write_bytes(b"\x47" + np.random.default_rng(3).bytes(10_000))
    status, summary, err = run(capsys, folder2, tmp_path / "out2", "-l", "orcasoundlab", "-s", T)
    assert status == 1 and (summary["written"], summary["failed"]) == (1, 2)
    assert contents(tmp_path / "out2") == {k: v for k, v in contents(src).items() if STEMS[0] in k}
    assert "live1.ts" in err


def test_silence_and_non_audio_files_among_recordings(tmp_path, capsys):
    rng = np.random.default_rng(4)
    folder = tmp_path / "recordings"
    folder.mkdir()
    write_wav(folder / "a.wav", rng.normal(0, 0.1, (1, 3 * 22_050)).astype(np.float32), 22_050)
    write_wav(folder / "b.wav", np.zeros((1, 3 * 22_050), np.float32), 22_050)  # a dead hydrophone
    (folder / "c.wav").write_text("RIFF? no: a text file with a .wav name\n")
    write_wav(folder / "d.wav", rng.normal(0, 0.1, (1, 3 * 22_050)).astype(np.float32), 22_050)
    (folder / "README.txt").write_text("not audio, not read\n")
    status, summary, err = run(capsys, folder, tmp_path / "out", "-l", "lab", "-s", "0")
    assert status == 1
    # a.wav 0-3 s, b.wav 3-6 s, d.wav 6-9 s back to back (c.wav, unreadable, holds no time)
    assert layout(tmp_path / "out")["mp3"] == ["lab_0.mp3", "lab_6.mp3"]
    assert [(c["name"], c["reason"].split(":")[0]) for c in summary["failed_clips"]] == [("lab_3", "silent")]
    assert any("c.wav" in line and "not an audio file" in line for line in err.splitlines()), err
    assert "README.txt" in err  # listed as not read
    silent = tmp_path / "silent.wav"
    write_wav(silent, np.zeros((1, 4 * 22_050), np.float32), 22_050)
    status, summary, err = run(capsys, silent, tmp_path / "out2", "-l", "lab")
    assert status == 1 and summary["failed"] == 2 and summary["written"] == 0
    assert all("silent" in c["reason"] for c in summary["failed_clips"])
    assert "clip lab_0: silent" in err
    assert layout(tmp_path / "out2") == {"mp3": [], "spectrograms": []}


def test_a_recording_too_short_for_a_clip_is_reported(tmp_path, capsys):
    short = write_wav(tmp_path / "short.wav", np.random.default_rng(5).normal(0, 0.1, (1, 1000))
                      .astype(np.float32), 22_050)  # 0.045 s: less than one spectrogram frame (2048 samples)
    status, summary, err = run(capsys, short, tmp_path / "out", "-l", "lab")
    assert status == 1
    assert "0.045 s of audio gives no clip" in err
    assert layout(tmp_path / "out") == {"mp3": [], "spectrograms": []}
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.ts").write_bytes(b"")
    status, summary, err = run(capsys, empty, tmp_path / "out3", "-l", "lab")
    assert status == 1 and "x.ts: empty file" in err


def test_a_segment_without_audio_and_an_output_that_cannot_be_made(tmp_path, capsys):
    folder = tmp_path / "hls"
    split_segment(SEGMENT, ["live0.ts", "live2.ts"], folder)  # two halves of the real segment ...
    write_video_only_ts(folder / "live1.ts")  # ... and between them a segment with video only
    status, summary, err = run(capsys, folder, tmp_path / "out", "-l", "lab", "-s", "0")
    assert status == 1
    assert any("live1.ts: no audio stream (streams: video)" in line for line in err.splitlines()), err
    assert summary["written"] == 3 and summary["failed"] == 0  # no time lost: the halves follow each other
    (tmp_path / "file").write_text("a file where OUTPUT's folder should be")
    with pytest.raises(SystemExit, match="error: .*file"):
        main(["preprocess", str(folder), str(tmp_path / "file"), "-l", "lab"])


def test_an_orcasound_prefix_on_s3(aws_env, reference, tmp_path, capsys):
    import boto3
    from moto import mock_aws

    src, _, _ = reference
    parts = split_segment(SEGMENT, ["live8.ts", "live9.ts", "live10.ts"], tmp_path / "parts")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="streaming-orcasound-net")
        prefix = f"rpi_orcasound_lab/hls/{T}/"
        for part in parts:
            s3.upload_file(str(part), "streaming-orcasound-net", prefix + part.name)
        s3.put_object(Bucket="streaming-orcasound-net", Key=prefix + "live.m3u8",
                      Body=b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:9\n#EXTINF:3.26,\nlive9.ts\n#EXTINF:3.26,\nlive10.ts\n")
        s3.put_object(Bucket="streaming-orcasound-net", Key=prefix + "deeper/live0.ts", Body=b"not read")
        status, summary, err = run(capsys, f"s3://streaming-orcasound-net/{prefix}", tmp_path / "out")
        assert status == 0, err
        assert contents(tmp_path / "out") == contents(src)  # the node and folder time named the clips
        status, summary, err = run(capsys, f"s3://streaming-orcasound-net/{prefix}live.m3u8", tmp_path / "out2")
        assert status == 0, err
        assert layout(tmp_path / "out2")["mp3"] == [f"orcasoundlab_{T}.mp3", f"orcasoundlab_{T + 3}.mp3"]
        assert "starts at segment 9" in err
        with pytest.raises(SystemExit, match="no .ts segments or audio files"):
            main(["preprocess", "s3://streaming-orcasound-net/rpi_bush_point/hls/1594150219/", str(tmp_path / "o3")])


def test_help_lists_preprocess(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "preprocess" in capsys.readouterr().out
    with pytest.raises(SystemExit) as raised:
        main(["preprocess", "--help"])
    assert raised.value.code == 0
    text = capsys.readouterr().out
    for option in ("--duration", "--location", "--starting-timestamp", "--drop-partial"):
        assert option in text
