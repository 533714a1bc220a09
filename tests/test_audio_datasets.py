"""Audio datasets through every endpoint (issue 23 items 1, 2 and 5): a clip without its PNG is scored from
its mp3, the model's input from audio equals decoding the PNG `orca spectrogram` writes for it, so every
score and loss from audio equals the one from that PNG; bad audio is skipped with its reason.

The 4 real 3-second clips of sample_data/orcasound_audio (2 calls, 2 nocalls) are the data; each
spectrogram costs 0.1-0.2 s of CPU, so the sets stay at these 4 (copied under other stems where more are needed).
"""

from __future__ import annotations

import json
import shutil
import wave

import torch  # noqa: F401  (before anything that may import TensorFlow)

import numpy as np
import pytest

from repo_data import AUDIO_DIR, SRKW_COLS as COLS, SRKW_ROWS as ROWS, json_client
from service import create_app

CLIPS = sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))  # 2 calls, then 2 nocalls
TOL = 1e-6


def _wav(path, samples: np.ndarray, rate: int = 48000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


@pytest.fixture(scope="module")
def data(tmp_path_factory, srkw_h5):
    """A local root with the same 4 clips as PNG sets (the PNGs `orca spectrogram` writes) and as audio sets:
    unlabeled_png/ (spectrograms/ + mp3/), unlabeled_audio/ (mp3/ only), unlabeled_mixed/ (2 PNGs, 4 mp3s),
    labeled_png/ and labeled_audio/ (train: one call + one nocall, validation: the other two), models/."""
    from audio.spectrogram import spectrogram_png

    root = tmp_path_factory.mktemp("audio-data")
    pngs = {}
    for clip in CLIPS:
        pngs[clip] = spectrogram_png(clip, root / "png" / f"{clip.stem}.png")
    split = {CLIPS[0]: ("train", "calls"), CLIPS[1]: ("validation", "calls"),
             CLIPS[2]: ("train", "nocalls"), CLIPS[3]: ("validation", "nocalls")}
    for i, clip in enumerate(CLIPS):
        for folder in ("unlabeled_png", "unlabeled_audio", "unlabeled_mixed"):
            (root / folder / "mp3").mkdir(parents=True, exist_ok=True)
            shutil.copy(clip, root / folder / "mp3" / clip.name)
        (root / "unlabeled_png" / "spectrograms").mkdir(exist_ok=True)
        shutil.copy(pngs[clip], root / "unlabeled_png" / "spectrograms" / pngs[clip].name)
        if i % 2 == 0:
            (root / "unlabeled_mixed" / "spectrograms").mkdir(exist_ok=True)
            shutil.copy(pngs[clip], root / "unlabeled_mixed" / "spectrograms" / pngs[clip].name)
        s, cls = split[clip]
        for folder, source in (("labeled_png", pngs[clip]), ("labeled_audio", clip)):
            (root / folder / s / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / folder / s / cls / source.name)
    for name in ("png", "audio", "audio_bad"):
        (root / f"models_{name}").mkdir()
        shutil.copyfile(srkw_h5, root / f"models_{name}" / "srkw_cnn_0.h5")
    from models.srkw_cnn import write_fresh_h5

    (root / "models_other").mkdir()
    write_fresh_h5(root / "models_other" / "other_cnn_0.h5", ROWS, COLS, seed=1)
    return root


def bad_audio(folder, start: int = 1594154300) -> dict[str, str]:
    """Bad audio files in `folder` (name → what the skip reason must say): not audio, a cut mp3, silence,
    1 s of noise, an empty flac."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"orcasoundlab_{start + 3 * i}" for i in range(5)]
    (folder / f"{names[0]}.mp3").write_bytes(b"this is not audio at all" * 40)
    (folder / f"{names[1]}.mp3").write_bytes(CLIPS[0].read_bytes()[:20000])
    _wav(folder / f"{names[2]}.wav", np.zeros(144000))
    _wav(folder / f"{names[3]}.wav", rng.integers(-3000, 3000, 48000))
    (folder / f"{names[4]}.flac").write_bytes(b"")
    return {f"{names[0]}.mp3": "not an audio file", f"{names[1]}.mp3": "truncated",
            f"{names[2]}.wav": "silence", f"{names[3]}.wav": "spectrogram frames", f"{names[4]}.flac": "empty file"}


def _app(data, tmp_path, **config):
    return create_app({"LOCAL_ROOT": str(data), "DEVICE": "cpu", "CACHE_DIR": str(tmp_path / "cache"),
                       "STATE_DIR": str(tmp_path / "state"), **config})


def _predict(client, data, unlabeled, models="models_png", model="srkw_cnn_0.h5", path="/predict", **extra):
    response = client.get(path, query_string={"model_url": str(data / models / model),
                                              "unlabeled_url": f"{data / unlabeled}/", "img_width": ROWS,
                                              "img_height": COLS, **extra})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def _metric(app, name, **labels):
    return app.extensions["orca"].metrics.registry.get_sample_value(name, labels or None) or 0


def _same_items(from_audio, from_png, tol=TOL):
    assert [i["audio_url"] for i in from_audio] == [i["audio_url"] for i in from_png]
    for a, b in zip(from_audio, from_png):
        assert {k: v for k, v in a.items() if k != "predicted_value"} == \
               {k: v for k, v in b.items() if k != "predicted_value"}
        assert abs(a["predicted_value"] - b["predicted_value"]) <= tol, (a, b)


# ----------------------------------------------------------------------------- the pixels

@pytest.mark.parametrize("rows, cols", [(607, 617), (ROWS, COLS)])
def test_audio_input_pixels_equal_decoding_its_png(data, rows, cols):
    """srkw_cnn's real 607x617 (no resize) and the tests' 67x83 (NEAREST): audio → model input equals
    PIL's decode of the PNG `orca spectrogram` wrote, and of the real 2020 PNG; numpy and torch alike."""
    from audio.spectrogram import pixels_from_file
    from scoring.clips import ClipDecoder, input_pixels
    from scoring.images import decode_image

    decoder = ClipDecoder()
    for clip in CLIPS[:2] if (rows, cols) == (607, 617) else CLIPS:
        rgba = pixels_from_file(clip)
        expected = decode_image(data / "png" / f"{clip.stem}.png", rows, cols)
        assert np.array_equal(input_pixels(rgba, rows, cols), expected)
        assert np.array_equal(input_pixels(torch.from_numpy(rgba)[None], rows, cols)[0].numpy(), expected)
        assert np.array_equal(decode_image(AUDIO_DIR / "png" / clip.parent.name / f"{clip.stem}.png", rows, cols),
                              expected)
    assert np.array_equal(decoder(CLIPS[0], rows, cols), decode_image(data / "png" / f"{CLIPS[0].stem}.png", rows, cols))


def test_batched_render_equals_one_clip_at_a_time_and_skips_only_the_bad_clip(data, tmp_path):
    """The batched ClipDecoder (the default: decode on threads, render_batch per batch; CUDA's path too),
    on the CPU (device None or "cpu"): the same pixels, as numpy, as the per-clip path (batched=False); a
    silent clip in the batch is skipped alone, with its reason."""
    from scoring.clips import ClipDecoder
    from scoring.stream import stream_batches

    bad = bad_audio(tmp_path / "bad")
    silent = tmp_path / "bad" / next(name for name, why in bad.items() if why == "silence")
    items = [CLIPS[0], silent, CLIPS[2], CLIPS[3]]
    one = list(stream_batches(items, None, ROWS, COLS, 4, skip_unreadable=True, decode=ClipDecoder(batched=False)))
    for device in (None, "cpu"):
        batched = list(stream_batches(items, None, ROWS, COLS, 4, skip_unreadable=True,
                                      decode=ClipDecoder(device=device)))
        assert [b.items for b in batched] == [b.items for b in one] == [[CLIPS[0], CLIPS[2], CLIPS[3]]]
        assert [item for item, _ in batched[0].skipped] == [silent] and "silence" in batched[0].skipped[0][1]
        assert isinstance(batched[0].pixels, np.ndarray) and np.array_equal(batched[0].pixels, one[0].pixels)


def test_audio_drawn_on_the_cpu_decodes_on_half_the_decoding_threads(tmp_path):
    """On the CPU the drawing and the scoring need the cores: at most decode_workers // 2 clips decode at
    once (4 → 2), while images still decode on all 4; on another device, audio on all of them."""
    import threading
    import time

    from scoring.clips import ClipDecoder
    from scoring.images import decode_image
    from scoring.stream import stream_batches

    def counting(cls):
        class Counting(cls):
            active = peak = 0
            lock = threading.Lock()

            def _enter(self):
                with self.lock:
                    type(self).active += 1
                    type(self).peak = max(type(self).peak, type(self).active)
                time.sleep(0.05)
                with self.lock:
                    type(self).active -= 1

            def samples(self, path):
                self._enter()
                return super().samples(path)

        return Counting

    clips = [CLIPS[i % len(CLIPS)] for i in range(8)]
    cpu = counting(ClipDecoder)()
    batches = list(stream_batches(clips, None, ROWS, COLS, 8, decode_workers=4, decode=cpu))
    assert sum(len(b.items) for b in batches) == 8 and type(cpu).peak == 2

    elsewhere = counting(ClipDecoder)(device="meta", batched=True)
    elsewhere.render = lambda decoded, rows, cols: [np.zeros((rows, cols, 3), np.uint8) for _ in decoded]
    list(stream_batches(clips, None, ROWS, COLS, 8, decode_workers=4, decode=elsewhere))
    assert type(elsewhere).peak == 4

    active, peak, lock = [0], [0], threading.Lock()

    def slow_image(source, rows, cols):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return decode_image(source, rows, cols)

    pngs = []
    for i in range(8):
        pngs.append(tmp_path / f"{i}.png")
        shutil.copy(AUDIO_DIR / "png" / CLIPS[i % len(CLIPS)].parent.name / f"{CLIPS[i % len(CLIPS)].stem}.png",
                    pngs[-1])
    list(stream_batches(pngs, None, ROWS, COLS, 8, decode_workers=4, decode=ClipDecoder(slow_image)))
    assert peak[0] == 4


# ----------------------------------------------------------------------------- /predict

def test_predict_from_audio_equals_predict_from_png_and_counts_renders(data, tmp_path):
    app = _app(data, tmp_path)
    client = json_client(app)
    from_png = _predict(client, data, "unlabeled_png").get_json()
    assert _metric(app, "orca_spectrograms_rendered_total") == 0
    response = _predict(client, data, "unlabeled_audio")
    from_audio = response.get_json()
    assert response.headers["X-Skipped-Files"] == "0"
    assert len(from_audio) == 4 and from_audio[0]["audio_url"].endswith("/unlabeled_audio/mp3/orcasoundlab_1594154118.mp3")
    assert from_png[0]["audio_url"].endswith("/unlabeled_png/mp3/orcasoundlab_1594154118.mp3")
    _same_items(from_audio, [dict(i, audio_url=i["audio_url"].replace("unlabeled_png", "unlabeled_audio"))
                             for i in from_png])
    assert _metric(app, "orca_spectrograms_rendered_total") == 4
    # a new model: the pixels come from the pixel cache (keyed by the file and the renderer), nothing is drawn again
    other = _predict(client, data, "unlabeled_audio", models="models_other", model="other_cnn_0.h5").get_json()
    assert _metric(app, "orca_spectrograms_rendered_total") == 4
    assert [i["predicted_value"] for i in other] != [i["predicted_value"] for i in from_audio]
    # half the clips with their PNG, half from audio: the same list, in the same order
    mixed = _predict(client, data, "unlabeled_mixed").get_json()
    _same_items(mixed, [dict(i, audio_url=i["audio_url"].replace("unlabeled_png", "unlabeled_mixed"))
                        for i in from_png])
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").get_data(as_text=True)
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["orca_spectrograms_rendered_total"] == 4 + 2  # the mixed set's own 2 mp3 files


def test_pixel_cache_key_holds_the_renderer(data, monkeypatch):
    from scoring import clips

    before = clips.clip_identity(str(CLIPS[0]), 0, None)
    assert before[:2] == ("file", str(CLIPS[0].resolve())) and before[-1] == clips.spectrogram_key()
    png = data / "png" / f"{CLIPS[0].stem}.png"
    assert clips.clip_identity(str(png), 0, None)[-1] != clips.spectrogram_key()  # images: as before
    monkeypatch.setattr(clips, "spectrogram_key", lambda: "another-renderer")
    assert clips.clip_identity(str(CLIPS[0]), 0, None) != before


def test_unlabeled_listing_prefers_the_png_then_mp3_wav_flac(tmp_path):
    from service.predict import unlabeled_clips
    from service.storage import locate

    (tmp_path / "u" / "spectrograms").mkdir(parents=True)
    (tmp_path / "u" / "mp3").mkdir()
    for name in ("spectrograms/b_2.png", "mp3/b_2.mp3", "mp3/a_1.wav", "mp3/a_1.flac", "mp3/c_3.flac",
                 "mp3/a_1.txt", "mp3/.d_4.mp3", "spectrograms/e_5.jpg"):
        (tmp_path / "u" / name).write_bytes(b"x")
    (tmp_path / "u" / "mp3" / "nested").mkdir()
    (tmp_path / "u" / "mp3" / "nested" / "f_6.mp3").write_bytes(b"x")
    clips = unlabeled_clips(locate(str(tmp_path / "u") + "/", "unlabeled_url", local_root=str(tmp_path)))
    assert [name for name, _ in clips] == ["a_1.wav", "b_2.png", "c_3.flac", "e_5.jpg"]


def test_audio_url_names_the_wav_or_flac_scored_and_the_originals_mp3_for_a_png(data, tmp_path, srkw_h5):
    """A clip that is only `mp3/<stem>.wav` or `.flac` is answered with that file's URL, which plays back and
    fits the client's 100 characters from a deep folder; a clip with its PNG keeps the original's
    `mp3/<stem>.mp3`, even where only a wav is beside it; S3 the same."""
    from audio.decode import decode
    from audio_files import encode, write_wav
    from service.predict import CLIENT_AUDIO_URL_LIMIT, clip_item
    from service.storage import locate

    root = tmp_path / ("a-checkout-in-a-deep-home-folder-" * 3) / "root"
    mp3, spectrograms = root / "unlabeled" / "mp3", root / "unlabeled" / "spectrograms"
    mp3.mkdir(parents=True)
    spectrograms.mkdir()
    (root / "models").mkdir()
    shutil.copyfile(srkw_h5, root / "models" / "srkw_cnn_0.h5")
    samples = decode(CLIPS[0]).samples
    pcm = np.round(samples * 32768).astype(np.int16)
    write_wav(mp3 / "orcasoundlab_1594154400.wav", samples, 48000)  # a wav only
    encode(mp3 / "orcasoundlab_1594154403.flac", "flac", "flac", pcm, 48000, "s16")  # a flac only
    shutil.copy(CLIPS[1], mp3 / "orcasoundlab_1594154406.mp3")  # an mp3 and a wav: the mp3 is scored
    write_wav(mp3 / "orcasoundlab_1594154406.wav", samples, 48000)
    shutil.copy(data / "png" / f"{CLIPS[2].stem}.png", spectrograms / "orcasoundlab_1594154409.png")  # a PNG and
    write_wav(mp3 / "orcasoundlab_1594154409.wav", samples, 48000)  # only a wav beside it
    client = json_client(_app(root, tmp_path))
    items = _predict(client, root, "unlabeled", models="models").get_json()
    urls = [item["audio_url"] for item in items]
    assert [url.rsplit("/mp3/", 1)[1] for url in urls] == [
        "orcasoundlab_1594154400.wav", "orcasoundlab_1594154403.flac", "orcasoundlab_1594154406.mp3",
        "orcasoundlab_1594154409.mp3"]
    assert all(url.startswith("http://localhost/clips/unlabeled/mp3/") for url in urls)
    assert max(len(url) for url in urls) <= CLIENT_AUDIO_URL_LIMIT < len(str(mp3))
    for url, kind in zip(urls[:3], ("audio/wav", "audio/flac", "audio/mpeg")):  # each plays back
        played = client.get(url.removeprefix("http://localhost"))
        assert played.status_code == 200 and played.mimetype == kind
        assert played.data == (mp3 / url.rsplit("/", 1)[1]).read_bytes()
    assert abs(items[0]["predicted_value"] - items[1]["predicted_value"]) <= TOL  # the same samples
    s3 = locate("s3://orcagsoc/unlabeled_test/", "unlabeled_url", local_root="")
    assert clip_item(s3, "orcasoundlab_1594154400.flac")["audio_url"] == \
        "https://orcagsoc.s3.amazonaws.com/unlabeled_test/mp3/orcasoundlab_1594154400.flac"
    assert clip_item(s3, "orcasoundlab_1594154400.png")["audio_url"] == \
        "https://orcagsoc.s3.amazonaws.com/unlabeled_test/mp3/orcasoundlab_1594154400.mp3"


def test_bad_audio_is_skipped_with_its_reason_never_a_500(data, tmp_path):
    folder = tmp_path / "root"
    shutil.copytree(data / "unlabeled_audio", folder / "unlabeled")
    shutil.copytree(data / "models_png", folder / "models")
    bad = bad_audio(folder / "unlabeled" / "mp3")
    app = create_app({"LOCAL_ROOT": str(folder), "DEVICE": "cpu", "CACHE_DIR": str(tmp_path / "cache"),
                      "STATE_DIR": str(tmp_path / "state")})
    client = json_client(app)
    response = _predict(client, folder, "unlabeled", models="models")
    assert response.headers["X-Skipped-Files"] == str(len(bad))
    assert len(response.get_json()) == 4
    assert _metric(app, "orca_skipped_files_total", stage="predict") == len(bad)
    assert _metric(app, "orca_spectrograms_rendered_total") == 4
    # the job's result lists each skipped file with its reason, as for a corrupt PNG
    from service.params import PredictParams

    runtime = app.extensions["orca"]
    items = runtime.run_predict(runtime, PredictParams(str(folder / "models" / "srkw_cnn_0.h5"),
                                                       f"{folder / 'unlabeled'}/", ROWS, COLS))
    reasons = {entry["url"].rsplit("/", 1)[1]: entry["reason"] for entry in items.skipped}
    assert set(reasons) == set(bad)
    for name, why in bad.items():
        assert why in reasons[name] and name in reasons[name], (name, reasons[name])


# ----------------------------------------------------------------------------- /train

def test_train_on_audio_equals_train_on_pngs_and_skips_bad_audio_into_the_sidecar(data, tmp_path):
    app = _app(data, tmp_path)
    client = json_client(app)

    def train(models, labeled):
        response = client.get("/train", query_string={
            "model_url": str(data / models / "srkw_cnn_0.h5"), "labeled_url": f"{data / labeled}/",
            "img_width": ROWS, "img_height": COLS, "epochs": 2, "seed": 0})
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    from_png = train("models_png", "labeled_png")
    from_audio = train("models_audio", "labeled_audio")
    assert _metric(app, "orca_spectrograms_rendered_total") == 4
    for key in ("loss", "val_loss", "acc", "val_acc"):
        np.testing.assert_allclose(from_audio[key], from_png[key], rtol=0, atol=TOL)
    assert (from_audio["cm"], from_audio["labeled_files"]) == (from_png["cm"], from_png["labeled_files"]) == \
        (from_png["cm"], 2)
    assert abs(from_audio["model_loss"] - from_png["model_loss"]) <= TOL

    assert _metric(app, "orca_skipped_files_total", stage="train") == 0

    root = tmp_path / "bad"  # the audio set plus bad files in train/calls/ and validation/nocalls/
    shutil.copytree(data / "labeled_audio", root / "labeled")
    shutil.copytree(data / "models_audio_bad", root / "models")
    bad = {**bad_audio(root / "labeled" / "train" / "calls"),
           **bad_audio(root / "labeled" / "validation" / "nocalls", start=1594155000)}
    app = create_app({"LOCAL_ROOT": str(root), "DEVICE": "cpu", "CACHE_DIR": str(tmp_path / "cache"),
                      "STATE_DIR": str(tmp_path / "state2")})
    response = json_client(app).get("/train", query_string={
        "model_url": str(root / "models" / "srkw_cnn_0.h5"), "labeled_url": f"{root / 'labeled'}/",
        "img_width": ROWS, "img_height": COLS, "epochs": 2, "seed": 0})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["labeled_files"] == 2
    assert response.get_json()["loss"] == from_audio["loss"]  # the bad files changed nothing
    assert _metric(app, "orca_skipped_files_total", stage="train") == len(bad)
    assert _metric(app, "orca_spectrograms_rendered_total") == 4  # the good clips only
    sidecar = json.loads((root / "models" / "srkw_cnn_1.json").read_text())
    reasons = {entry["url"].rsplit("/", 1)[1]: entry for entry in sidecar["skipped_files"]}
    assert set(reasons) == set(bad)
    for name, why in bad.items():
        assert why in reasons[name]["reason"] and name in reasons[name]["reason"], reasons[name]
    assert {entry["split"] for entry in reasons.values()} == {"train", "validation"}


# ----------------------------------------------------------------------------- /embed, /query, orca predict

def test_embed_and_query_from_audio_equal_from_png(data, tmp_path):
    client = json_client(_app(data, tmp_path))
    png = _predict(client, data, "unlabeled_png", path="/embed").get_json()
    audio = _predict(client, data, "unlabeled_audio", path="/embed").get_json()
    assert len(audio) == 4
    for a, b in zip(audio, png):
        np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=0, atol=TOL)
        assert abs(a["predicted_value"] - b["predicted_value"]) <= TOL
    query = dict(strategy="coreset", k=2)
    png = _predict(client, data, "unlabeled_png", path="/query", labeled_url=f"{data / 'labeled_png'}/",
                   **query).get_json()
    audio = _predict(client, data, "unlabeled_audio", path="/query", labeled_url=f"{data / 'labeled_audio'}/",
                     **query).get_json()
    assert [(i["audio_url"].rsplit("/", 1)[1], i["rank"]) for i in audio] == \
        [(i["audio_url"].rsplit("/", 1)[1], i["rank"]) for i in png]
    for a, b in zip(audio, png):
        assert abs(a["score"] - b["score"]) <= TOL and abs(a["predicted_value"] - b["predicted_value"]) <= TOL


def test_orca_predict_from_audio_equals_from_png(data, tmp_path, capsys, monkeypatch):
    from orca.cli import main

    monkeypatch.setenv("ORCA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ORCA_DEVICE", "cpu")
    answers = []
    for unlabeled in ("unlabeled_png", "unlabeled_audio"):
        assert main(["predict", "--model_url", str(data / "models_png" / "srkw_cnn_0.h5"), "--unlabeled_url",
                     str(data / unlabeled), "--img_width", str(ROWS), "--img_height", str(COLS)]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    _same_items(answers[1], [dict(i, audio_url=i["audio_url"].replace("unlabeled_png", "unlabeled_audio"))
                             for i in answers[0]])


# ----------------------------------------------------------------------------- over S3 (moto)

@pytest.mark.slow
def test_predict_train_and_embed_on_audio_only_sets_over_s3(data, s3_env, tmp_path):
    s3, bucket = s3_env.client(), s3_env.bucket
    s3.upload_file(str(data / "models_png" / "srkw_cnn_0.h5"), bucket, "models/srkw_cnn_0.h5")
    for path in (data / "unlabeled_audio").rglob("*.mp3"):
        s3.upload_file(str(path), bucket, f"unlabeled/{path.relative_to(data / 'unlabeled_audio').as_posix()}")
    for path in (data / "labeled_audio").rglob("*.mp3"):
        s3.upload_file(str(path), bucket, f"labeled/{path.relative_to(data / 'labeled_audio').as_posix()}")
    s3.put_object(Bucket=bucket, Key="unlabeled/mp3/orcasoundlab_1594154400.mp3", Body=b"not audio" * 50)
    local = json_client(_app(data, tmp_path / "local"))
    from_png = _predict(local, data, "unlabeled_png").get_json()
    train_png = local.get("/train", query_string={
        "model_url": str(data / "models_png" / "srkw_cnn_0.h5"), "labeled_url": f"{data / 'labeled_png'}/",
        "img_width": ROWS, "img_height": COLS, "epochs": 1, "seed": 0}).get_json()

    app = create_app({"LOCAL_ROOT": "", "DEVICE": "cpu", "CACHE_DIR": str(tmp_path / "cache"),
                      "STATE_DIR": str(tmp_path / "state")})
    client = json_client(app)
    args = {"model_url": f"s3://{bucket}/models/srkw_cnn_0.h5", "unlabeled_url": f"s3://{bucket}/unlabeled/",
            "img_width": ROWS, "img_height": COLS}
    response = client.get("/predict", query_string=args)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["X-Skipped-Files"] == "1"
    items = response.get_json()
    assert items[0]["audio_url"] == f"https://{bucket}.s3.amazonaws.com/unlabeled/mp3/orcasoundlab_1594154118.mp3"
    _same_items(items, [dict(i, audio_url=f"https://{bucket}.s3.amazonaws.com/unlabeled/mp3/"
                                          + i["audio_url"].rsplit("/", 1)[1]) for i in from_png])
    embedded = client.get("/embed", query_string=args)
    assert embedded.status_code == 200 and len(embedded.get_json()) == 4
    assert _metric(app, "orca_spectrograms_rendered_total") == 4  # /embed read /predict's pixels
    trained = client.get("/train", query_string={**args, "labeled_url": f"s3://{bucket}/labeled/", "epochs": 1,
                                                 "seed": 0})
    assert trained.status_code == 200, trained.get_data(as_text=True)
    np.testing.assert_allclose(trained.get_json()["loss"], train_png["loss"], rtol=0, atol=TOL)
    np.testing.assert_allclose(trained.get_json()["val_loss"], train_png["val_loss"], rtol=0, atol=TOL)


# ----------------------------------------------------------------------------- the simulation

@pytest.mark.slow
def test_simulation_on_audio_equals_on_pngs(data, tmp_path, srkw_h5):
    from active_learning.simulate import SimulationConfig, simulate

    sets = {}
    for kind, suffix in (("png", ".png"), ("audio", ".mp3")):
        root = tmp_path / kind
        source = data / f"labeled_{kind}"
        for path in source.rglob(f"*{suffix}"):  # 4 clips in the pool: the validation pair copied into train
            cls = path.parent.name
            (root / "train" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / "train" / cls / path.name)
        shutil.copytree(source / "validation", root / "validation")
        config = SimulationConfig(model=srkw_h5, labeled_dir=str(root), rows=ROWS, cols=COLS,
                                  strategies=["uncertainty"], seeds=[0], initial=2, k=1, rounds=2, epochs=1,
                                  device="cpu")
        sets[kind] = simulate(config)
    for a, b in zip(sets["audio"]["runs"][0]["rounds"], sets["png"]["runs"][0]["rounds"]):
        for key in ("labels", "val_acc", "val_loss", "roc_auc"):
            assert a[key] == pytest.approx(b[key], abs=TOL), key
