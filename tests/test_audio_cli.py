"""`orca spectrogram AUDIO... --out DIR`: the 2020 PNGs, folders walked, bad files reported, PNGs kept."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from orca.cli import main
from repo_data import AUDIO_DIR


def _rgba(path):
    return np.asarray(Image.open(path).convert("RGBA"))


def test_spectrogram_writes_the_2020_png_of_every_clip_under_a_folder_and_reports_bad_files(tmp_path, capsys):
    clips = tmp_path / "clips"
    shutil.copytree(AUDIO_DIR / "mp3", clips)
    (clips / "notes.txt").write_text("not audio")  # not an audio suffix: not picked up
    bad = clips / "broken.mp3"
    bad.write_bytes(b"\xff\xfb" + b"\x00" * 50)
    out = tmp_path / "png"
    assert main(["spectrogram", str(clips), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}:" in err and "4 written, 0 kept (already there), 1 failed" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.stem + ".png" for p in AUDIO_DIR.glob("mp3/*/*.mp3"))
    for png in AUDIO_DIR.glob("png/*/*.png"):
        assert np.array_equal(_rgba(out / png.name), _rgba(png)), png.name


def test_spectrogram_keeps_existing_pngs_and_exits_0_when_all_went_well(tmp_path, capsys):
    mp3 = sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))[0]
    out = tmp_path / "png"
    out.mkdir()
    (out / f"{mp3.stem}.png").write_bytes(b"mine")
    assert main(["spectrogram", str(mp3), "--out", str(out)]) == 0
    assert (out / f"{mp3.stem}.png").read_bytes() == b"mine"
    assert "0 written, 1 kept (already there), 0 failed" in capsys.readouterr().err


def test_spectrogram_refuses_two_inputs_with_the_same_stem(tmp_path, capsys):
    mp3 = sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))[0]
    (tmp_path / "a").mkdir()
    shutil.copy(mp3, tmp_path / "a" / mp3.name)
    assert main(["spectrogram", str(mp3), str(tmp_path / "a" / mp3.name), "--out", str(tmp_path / "o")]) == 1
    assert "writes the same" in capsys.readouterr().err
    assert len(list((tmp_path / "o").iterdir())) == 1


def test_spectrogram_draws_batches_on_threads_with_the_same_pngs_and_refuses_a_zero_batch(tmp_path, capsys):
    """--batch 3 --workers 2 over 9 files (8 copies of the clips and a broken one among them): batches
    that hold the broken file, clips of several batches at once; every PNG the 2020 one."""
    import pytest

    clips = tmp_path / "clips"
    clips.mkdir()
    real = sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))
    for i in range(8):
        shutil.copy(real[i % 4], clips / f"{i}_{real[i % 4].name}")
    (clips / "4_broken.mp3").write_bytes(b"\xff\xfb" + b"\x00" * 50)
    out = tmp_path / "png"
    assert main(["spectrogram", str(clips), "--out", str(out), "--batch", "3", "--workers", "2"]) == 1
    assert "8 written, 0 kept (already there), 1 failed" in capsys.readouterr().err
    want = {p.stem: _rgba(p) for p in AUDIO_DIR.glob("png/*/*.png")}
    for png in out.iterdir():
        assert np.array_equal(_rgba(png), want[png.stem.split("_", 1)[1]]), png.name
    with pytest.raises(SystemExit):
        main(["spectrogram", str(clips), "--out", str(out), "--batch", "0"])
    assert "must be at least 1" in capsys.readouterr().err
