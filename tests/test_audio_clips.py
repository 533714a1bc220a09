"""audio.hls (segment order, playlists, Orcasound URL defaults), audio.timeline (segments read as one
recording, gaps, bad inputs) and audio.clips (the original's clip rule, mp3 at the source's rate and channels),
on the real HLS segment of sample_data/orcasound_audio/ and on files made here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import av

from audio_files import SEGMENT, split_segment, write_wav  # noqa: E402
from audio.clips import Clip, Missing, Tail, clip_count, cut, encode_mp3, write_mp3  # noqa: E402
from audio.decode import decode  # noqa: E402
from audio.hls import (PlaylistError, location_of_node, natural_key, orcasound_defaults,  # noqa: E402
                       parse_playlist, resolve, segment_order)
from audio.timeline import Chunk, Gap, Input, Timeline  # noqa: E402

RATE = 48_000
SEGMENT_SAMPLES = 470_016  # 459 AAC frames of 1024: 9.792 s


# ------------------------------------------------------------------------------------------ helpers

def read(paths) -> tuple[list, list, Timeline]:
    problems = []
    timeline = Timeline([Input(str(p)) for p in paths], problems.append)
    return list(timeline), problems, timeline


def audio_of(items) -> np.ndarray:
    return np.concatenate([c.samples for c in items if isinstance(c, Chunk)], axis=1)


@pytest.fixture(scope="module")
def whole():
    items, problems, timeline = read([SEGMENT])
    assert problems == [] and (timeline.format.rate, timeline.format.channels) == (RATE, 1)
    return audio_of(items)


# ------------------------------------------------------------------------------------------ hls

def test_segments_are_ordered_by_their_numbers_not_as_text():
    names = ["live10.ts", "live9.ts", "live100.ts", "live000.ts", "live011.ts", "live1000.ts", "live999.ts"]
    assert segment_order(names) == ["live000.ts", "live9.ts", "live10.ts", "live011.ts", "live100.ts",
                                    "live999.ts", "live1000.ts"]
    assert sorted(names) != segment_order(names)  # what a plain sort (or os.listdir) would get wrong
    assert natural_key("live01.ts") != natural_key("live1.ts")  # a total order: no two names tie


def test_a_media_playlist_lists_its_segments_in_order_and_a_master_playlist_is_refused():
    text = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:11\n"
            "#EXTINF:10.0,\nlive011.ts\n#EXTINF:10.0,\nlive012.ts\n\n#EXTINF:9.8,\nsub/live013.ts\n")
    assert parse_playlist(text) == ["live011.ts", "live012.ts", "sub/live013.ts"]
    with pytest.raises(PlaylistError, match="master playlist"):
        parse_playlist("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=128000\nlow/live.m3u8\n", "x.m3u8")
    with pytest.raises(PlaylistError, match="x.m3u8: not an HLS playlist"):
        parse_playlist("live000.ts\n", "x.m3u8")


def test_playlist_entries_resolve_beside_the_playlist():
    base = "s3://streaming-orcasound-net/rpi_orcasound_lab/hls/1594150218/live.m3u8"
    assert resolve(base, "live003.ts") == "s3://streaming-orcasound-net/rpi_orcasound_lab/hls/1594150218/live003.ts"
    assert resolve(base, "../1594150219/live000.ts").endswith("/hls/1594150219/live000.ts")
    assert resolve(base, "s3://other/x.ts") == "s3://other/x.ts"
    assert resolve("/data/hls/live.m3u8", "live1.ts") == "/data/hls/live1.ts"
    assert resolve("hls/live.m3u8", "/abs/live1.ts") == "/abs/live1.ts"


def test_an_orcasound_url_gives_the_location_and_the_starting_timestamp():
    assert orcasound_defaults("s3://streaming-orcasound-net/rpi_orcasound_lab/hls/1594150218/") == (
        "orcasoundlab", 1594150218)
    assert orcasound_defaults("s3://streaming-orcasound-net/rpi_bush_point/hls/1594150218/live.m3u8") == (
        "bush_point", 1594150218)
    assert orcasound_defaults("/tmp/x/rpi_port_townsend/hls/1600000000/live001.ts") == ("port_townsend", 1600000000)
    assert orcasound_defaults("testdata") == (None, None)
    assert orcasound_defaults("s3://bucket/segments/") == (None, None)
    assert location_of_node("some_node") == "some_node"


# ------------------------------------------------------------------------------------------ timeline

def test_segments_of_one_stream_read_as_the_whole_stream(tmp_path, whole):
    """Three consecutive pieces of the real stream, named so that a text sort misorders them, read in
    numeric order through one decoder: exactly the samples of the whole segment."""
    assert whole.shape == (1, SEGMENT_SAMPLES)
    parts = split_segment(SEGMENT, ["live8.ts", "live9.ts", "live10.ts"], tmp_path)
    items, problems, _ = read(segment_order(map(str, parts)))
    assert problems == [] and not any(isinstance(i, Gap) for i in items)
    np.testing.assert_array_equal(audio_of(items), whole)
    items, _, _ = read(sorted(map(str, parts)))  # live10, live8, live9: not the recording
    assert not np.array_equal(audio_of(items), whole)


def test_a_missing_segment_leaves_a_gap_of_its_length(tmp_path, whole):
    parts = split_segment(SEGMENT, ["live0.ts", "live1.ts", "live2.ts"], tmp_path, keep={0, 2})
    items, problems, timeline = read(parts)
    gaps = [i for i in items if isinstance(i, Gap)]
    assert problems == [] and len(gaps) == 1
    assert (gaps[0].start, gaps[0].end) == (153 * 1024, 306 * 1024)  # the 153 AAC frames of live1.ts
    assert "before live2.ts" in gaps[0].reason
    assert timeline.end == SEGMENT_SAMPLES  # what follows keeps its time
    last = [c for c in items if isinstance(c, Chunk) and c.start >= gaps[0].end]
    tail = audio_of(last)
    # the same audio at the same place: the decoder restarted after the gap, so its noise substitution
    # (AAC's PNS, random) differs, but the signal lines up to the sample, and one frame off it does not
    end = whole[0, -100_000:]
    assert np.corrcoef(tail[0, -100_000:], end)[0, 1] > 0.99
    assert np.corrcoef(tail[0, -101_024:-1024], end)[0, 1] < 0.5


def test_bad_inputs_are_reported_by_name_and_the_rest_is_read(tmp_path, whole):
    parts = split_segment(SEGMENT, ["live0.ts", "live1.ts", "live2.ts"], tmp_path)
    garbage = tmp_path / "garbage.ts"
    garbage.write_bytes(np.random.default_rng(0).bytes(20_000))
    text = tmp_path / "notes.ts"
    text.write_text("these are my notes, not audio\n" * 50)
    items, problems, timeline = read([parts[0], garbage, text, tmp_path / "absent.ts", parts[1], parts[2]])
    by_name = {Path(p.name).name: p for p in problems}
    assert set(by_name) == {"garbage.ts", "notes.ts", "absent.ts"}
    assert "not an audio file" in by_name["garbage.ts"].reason and by_name["garbage.ts"].lost
    assert "not an audio file" in by_name["notes.ts"].reason
    assert "no such file" in by_name["absent.ts"].reason
    np.testing.assert_array_equal(audio_of(items), whole)  # the good segments, back to back
    assert timeline.end == SEGMENT_SAMPLES


def test_a_truncated_segment_is_reported_and_its_missing_part_is_a_gap(tmp_path, whole):
    parts = split_segment(SEGMENT, ["live0.ts", "live1.ts", "live2.ts"], tmp_path)
    data = parts[1].read_bytes()
    parts[1].write_bytes(data[: len(data) // 2 + 77])  # cut inside a TS packet, half of it gone
    items, problems, timeline = read(parts)
    assert [Path(p.name).name for p in problems] == ["live1.ts"]
    assert "truncated" in problems[0].reason and not problems[0].lost
    gaps = [i for i in items if isinstance(i, Gap)]
    assert len(gaps) == 1 and gaps[0].start > 153 * 1024 and gaps[0].end == 306 * 1024
    assert timeline.end == SEGMENT_SAMPLES


def test_another_rate_is_refused_with_a_reason(tmp_path):
    a = write_wav(tmp_path / "a.wav", np.full((1, 8000), 0.25, np.float32), 16_000)
    b = write_wav(tmp_path / "b.wav", np.full((2, 8000), 0.25, np.float32), 8000)
    items, problems, timeline = read([a, b, a])
    assert [Path(p.name).name for p in problems] == ["b.wav"]
    assert "8000 Hz stereo, unlike the 16000 Hz mono" in problems[0].reason
    assert timeline.end == 16_000 and audio_of(items).shape == (1, 16_000)
    np.testing.assert_array_equal(audio_of(items), np.full((1, 16_000), 0.25, np.float32))  # 8192/32768 exactly


# ------------------------------------------------------------------------------------------ clips

def chunks(lengths_and_gaps, rate=10, channels=1):
    """Chunk/Gap items of a synthetic timeline: ints are chunk lengths, ('gap', n) a gap of n samples.
    Sample i of the timeline has the value i (so cuts can be checked)."""
    pos = 0
    for entry in lengths_and_gaps:
        if isinstance(entry, tuple):
            yield Gap(pos, pos + entry[1], f"gap at {pos}")
            pos += entry[1]
        else:
            values = np.arange(pos, pos + entry, dtype=np.float32)[None].repeat(channels, 0)
            yield Chunk(pos, values, rate)
            pos += entry


@pytest.mark.parametrize("total, partial, starts", [
    (98, True, [0, 3, 6]),  # 9.8 s: the original's range(0, int(9.8), 3); the last 0.8 s are in no clip
    (100, True, [0, 3, 6, 9]),  # 10 s: a 1 s trailing clip
    (100, False, [0, 3, 6]),
    (90, True, [0, 3, 6]),
    (29, True, [0]),  # 2.9 s: one partial clip of 2.9 s
    (29, False, []),
    (9, True, []),  # 0.9 s: no clip at all
])
def test_the_clips_follow_the_original_rule(total, partial, starts):
    items = list(cut(chunks([7, 13, total - 20] if total > 20 else [total]), 3, partial))
    clips = [i for i in items if isinstance(i, Clip)]
    assert [c.index * 3 for c in clips] == starts
    assert len(clips) == clip_count(total, 10, 3, partial)
    for c in clips:  # exact cuts: clip k holds timeline samples [30k, 30k + n)
        np.testing.assert_array_equal(c.samples[0], np.arange(c.start, c.start + c.length, dtype=np.float32))
        assert c.length == min(30, total - c.start)
    tail = items[-1]
    assert isinstance(tail, Tail) and tail.total == total
    assert tail.dropped == total - sum(c.length for c in clips)


def test_clips_across_a_gap_are_reported_not_filled():
    # 0-40 audio, gap 40-130, audio 130-200 (10 samples per second, 3 s clips of 30)
    items = list(cut(chunks([40, ("gap", 90), 70]), 3))
    kinds = [(type(i).__name__, getattr(i, "index", getattr(i, "first", None))) for i in items]
    assert kinds == [("Clip", 0), ("Clip", 1), ("Missing", 2), ("Clip", 4), ("Clip", 5), ("Clip", 6), ("Tail", None)]
    assert items[0].samples is not None and items[1].samples is None and "gap at 40" in items[1].reason
    assert (items[2].first, items[2].last) == (2, 3)  # 60-120 lie wholly inside the gap
    assert items[3].samples is None  # 120-150: the gap ends inside it
    np.testing.assert_array_equal(items[4].samples[0], np.arange(150, 180, dtype=np.float32))
    assert items[5].length == 20  # the trailing 2 s clip


def test_an_mp3_clip_has_the_source_rate_channels_and_length(tmp_path, whole):
    clip = whole[:, :3 * RATE]
    path = tmp_path / "clip.mp3"
    write_mp3(clip, RATE, str(path))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.channels) in {("mp3float", RATE, 1), ("mp3", RATE, 1)}
        assert stream.bit_rate == 128_000
    back = decode(str(path))
    assert (back.rate, back.channels, back.frames) == (RATE, 1, 3 * RATE)  # no encoder delay or padding left
    # a faithful encode: the decoded clip follows the source (mp3 at 128 kb/s is lossy, so not equal)
    correlation = np.corrcoef(back.samples[0], clip[0])[0, 1]
    assert correlation > 0.95
    with pytest.raises(FileExistsError):  # never over an existing clip
        write_mp3(np.zeros_like(clip), RATE, str(path))
    assert decode(str(path)).frames == 3 * RATE
    assert [f for f in os.listdir(tmp_path) if f != "clip.mp3"] == []  # no temporary left behind
    stereo = tmp_path / "stereo.mp3"
    encode_mp3(np.stack([clip[0], -clip[0]]), RATE, str(stereo))
    back = decode(str(stereo))
    assert (back.channels, back.frames) == (2, 3 * RATE)


def test_mp3_refuses_a_rate_it_does_not_have(tmp_path):
    from audio.clips import ClipError

    with pytest.raises(ClipError, match="no 96000 Hz"):
        encode_mp3(np.zeros((1, 96_000), np.float32), 96_000, str(tmp_path / "x.mp3"))
    with pytest.raises(ClipError, match="1 or 2 channels"):
        encode_mp3(np.zeros((4, 48_000), np.float32), 48_000, str(tmp_path / "x.mp3"))


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 70), st.tuples(st.just("gap"), st.integers(1, 90))), min_size=1,
                max_size=8).filter(lambda e: not isinstance(e[0], tuple) and not isinstance(e[-1], tuple)),
       st.integers(1, 4), st.booleans())
def test_cut_agrees_with_cutting_the_whole_timeline(entries, duration, partial):
    """Against the obvious reference: the whole timeline as one array, gaps as NaN, sliced clip by clip.
    (A timeline starts and ends with audio: a gap is only ever found before a chunk.)"""
    rate = 10
    total = sum(e[1] if isinstance(e, tuple) else e for e in entries)
    whole = np.full(total, np.nan, np.float32)
    for item in chunks(entries, rate):
        if isinstance(item, Chunk):
            whole[item.start:item.end] = item.samples[0]
    length = duration * rate
    starts = range(0, total // rate, duration) if partial else range(0, (total // length) * duration, duration)
    expected = {}
    for s in starts:
        part = whole[s * rate:min((s + duration) * rate, total)]
        expected[s // duration] = ("missing" if np.isnan(part).all() else "gap" if np.isnan(part).any()
                                   else part)
    got = {}
    items = list(cut(chunks(entries, rate), duration, partial))
    assert isinstance(items[-1], Tail) and items[-1].total == total
    for item in items[:-1]:
        if isinstance(item, Missing):
            got.update({k: "missing" for k in range(item.first, item.last + 1)})
        else:
            assert item.index not in got
            got[item.index] = "gap" if item.samples is None else item.samples[0]
    assert list(got) == sorted(got)  # in order
    assert set(got) == set(expected), (entries, duration, partial)
    for k, value in expected.items():
        if isinstance(value, str):
            assert isinstance(got[k], str) and got[k] == value, (k, entries)
        else:
            np.testing.assert_array_equal(got[k], value)
    spans = sum(min((s + duration) * rate, total) - s * rate for s in starts)
    assert items[-1].dropped == total - spans
