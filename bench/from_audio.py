"""From audio to scores, side by side in one run on the same clips (`bench.run --audio-clips N`).

Data (`bench.dataset`): N clips, the 4 real Orcasound clips cycled under distinct stems, uploaded to the
benchmark's S3 server twice: as an audio-only unlabeled set, `audio/mp3/<stem>.mp3`, and as the PNGs `orca
spectrogram` writes for the same clips, `audio_png/spectrograms/<stem>.png`.

- original: the 2020 preprocessing of every clip, then the original /predict on its PNGs, each in its own
  process as the original ran them: `bench.reference --preprocess` (download the mp3s, the 2020 pipeline
  `bench.audio.Original` draws each PNG, in the 2020 environment with `bench.run --original-python`, else
  its current-library stand-in, upload them to `audio_2020/spectrograms/`),
  then `bench.reference --cold` on `audio_2020/` (download, `load_model`, ImageDataGenerator + predict).
  Seconds = the preprocessing's download + PNGs + upload (its imports and the untimed first clip, numba's
  JIT, apart) + the cold /predict's total (TensorFlow's import apart, as everywhere in bench.run).
- ours from audio: /predict on `audio/` over HTTP, the first call of a new service process with an empty
  cache (a new model, never seen: the ONNX export and every spectrogram are in the request);
- ours from PNG: the same in another new process, on `audio_png/`.
- breakdown: where our CPU goes per clip, in this process with the service's own functions, one thread
  each (CPU seconds of the calling thread): decode (PyAV, `ClipDecoder.samples`), spectrogram
  (`ClipDecoder.render` of 16 decoded clips at a time, as the service draws a batch), scoring (ONNX Runtime on one thread, one image per run, 16 at a time), and, for
  the PNG path, `decode_image` of the PNG.

Ratios: `speedup` = original seconds / ours-from-audio seconds (> 1: ours is faster; goal on the 2-core CPU
>= 15); `audio_vs_png` = ours-from-audio seconds per clip / ours-from-PNG seconds per clip (goal <= 1);
`max_abs_diff_audio_png` = max |score from audio - score from the PNG| over the clips, by stem (the pixels
are the same, so 0 is expected; <= 1e-6 is the issue's bound).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from .cold import service_cold
from .dataset import make_audio_dataset, spectrogram_copies
from .reference_process import run_reference
from .s3 import upload_tree

AUDIO_PREFIX, PNG_PREFIX, ORIGINAL_PREFIX = "audio/", "audio_png/", "audio_2020/"
SCORE_BATCH = 16  # ONNX Runtime's batch in the service (MAX_ORT_BATCH)


def upload_audio_sets(s3, bucket: str, folder: Path, clips: int) -> dict:
    """Write the N clips and their PNGs under `folder` and upload both sets; the local dataset."""
    dataset = make_audio_dataset(folder / "audio", clips)
    dataset["pngs"] = spectrogram_copies(dataset, folder / "audio_png")
    upload_tree(s3, bucket, folder / "audio", AUDIO_PREFIX, suffix=".mp3")
    upload_tree(s3, bucket, folder / "audio_png", PNG_PREFIX)
    return dataset


def original_from_audio(cfg: dict, env: dict, out_dir: Path, timeout: float) -> dict:
    """The 2020 preprocessing, then the original's cold /predict on its PNGs, each in its own process."""
    cfg = dict(cfg, audio_prefix=AUDIO_PREFIX, unlabeled_prefix=ORIGINAL_PREFIX)
    log = out_dir / "reference.log"
    done = run_reference(cfg, env, out_dir / "reference_audio_preprocess.json", log, timeout, "--preprocess",
                         what="the 2020 preprocessing")
    pre, pipeline = done["timings"], done.get("pipeline")
    predict = run_reference(cfg, env, out_dir / "reference_audio_predict.json", log, timeout, "--cold",
                            what="the reference's /predict on the 2020 PNGs")["predict_cold"]["timings"]
    return {"preprocess": pre, "pipeline": pipeline, "predict": predict, "seconds": pre["total_s"] + predict["total_s"],
            "clips": pre["clips"], "scored": predict["images"]}


def scores_by_stem(items: list) -> dict:
    return {os.path.basename(item["audio_url"]).rsplit(".", 1)[0]: item["predicted_value"] for item in items}


def breakdown(dataset: dict, model_path, rows: int, cols: int, cache_dir) -> dict:
    """CPU seconds per clip of each stage of ours, one thread each (see the module)."""
    import numpy as np
    import torch

    from scoring.clips import ClipDecoder
    from scoring.images import decode_image
    from scoring.onnx_scoring import OnnxScorer

    def cpu(call):
        started = time.thread_time()
        value = call()
        return value, time.thread_time() - started

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decoder = ClipDecoder()
        seconds = {"decode": [], "spectrogram": [], "png_decode": []}
        decoded = []
        for clip, png in zip(dataset["clips"], dataset["pngs"]):
            samples, s = cpu(lambda: decoder.samples(clip))
            seconds["decode"].append(s)
            decoded.append(samples)
            seconds["png_decode"].append(cpu(lambda: decode_image(png, rows, cols))[1])
        decoder.render(decoded[:SCORE_BATCH], rows, cols)  # warm-up: the resampler's weights, numba's cache
        pixels = []
        for start in range(0, len(decoded), SCORE_BATCH):  # as the service: a batch's clips drawn together
            part = decoded[start:start + SCORE_BATCH]
            drawn, s = cpu(lambda: decoder.render(part, rows, cols))
            seconds["spectrogram"] += [s / len(part)] * len(part)
            pixels += drawn
        scorer = OnnxScorer(model_path, cache_dir=cache_dir, threads=1)
        batches = [np.stack(pixels[i:i + SCORE_BATCH]) for i in range(0, len(pixels), SCORE_BATCH)]
        scorer.score_pixels(batches[0])  # warm-up: ONNX Runtime's arena, as the service's first batch
        scoring = sum(cpu(lambda: scorer.score_pixels(batch))[1] for batch in batches)
    finally:
        torch.set_num_threads(threads)
    clips = len(pixels)
    per_clip = {stage: statistics.fmean(values) for stage, values in seconds.items()}
    per_clip["scoring"] = scoring / clips
    from_audio = per_clip["decode"] + per_clip["spectrogram"] + per_clip["scoring"]
    return {"cpu_seconds_per_clip": per_clip, "from_audio_cpu_seconds_per_clip": from_audio,
            "shares_from_audio": {stage: per_clip[stage] / from_audio for stage in ("decode", "spectrogram", "scoring")},
            "clips": clips, "threads": 1}


def run_audio(clips: int, s3, bucket: str, folder: Path, reference_cfg: dict | None, env: dict, out_dir: Path,
              start_service, model_path, rows: int, cols: int, timeout: float, progress, note_load) -> dict:
    """The whole audio part (see the module): its entry of results.json."""
    dataset = upload_audio_sets(s3, bucket, folder, clips)
    progress(f"audio: uploaded {clips} clips as {AUDIO_PREFIX}mp3/ and their PNGs as {PNG_PREFIX}spectrograms/")
    original = None
    if reference_cfg is not None:
        progress("audio: original (2020 preprocessing, then tf_keras /predict, own processes) ...")
        original = original_from_audio(reference_cfg, env, out_dir, timeout)
        note_load("audio_original")
        progress(f"audio: original {original['seconds']:.1f} s (preprocessing {original['preprocess']['total_s']:.1f} s,"
                 f" /predict {original['predict']['total_s']:.1f} s)")
    params = dict(model_url=f"s3://{bucket}/models/srkw_cnn_0.h5", img_width=rows, img_height=cols)
    ours = {}
    for name, prefix in (("audio", AUDIO_PREFIX), ("png", PNG_PREFIX)):
        progress(f"audio: ours /predict on {prefix} (new process, empty cache) ...")
        seconds, items = service_cold(lambda: start_service(f"audio_{name}"), dict(
            params, unlabeled_url=f"s3://{bucket}/{prefix}"), timeout)
        ours[name] = {"seconds": seconds, "seconds_per_clip": seconds / clips, "scored": len(items),
                      "scores": scores_by_stem(items)}
        note_load(f"audio_ours_{name}")
        progress(f"audio: ours from {name} {seconds:.2f} s")
    progress("audio: breakdown of ours per clip (this process, one thread) ...")
    parts = breakdown(dataset, model_path, rows, cols, folder / "onnx-breakdown")
    note_load("audio_breakdown")
    audio_scores, png_scores = ours["audio"].pop("scores"), ours["png"].pop("scores")
    common = sorted(set(audio_scores) & set(png_scores))
    if original is not None:
        original["seconds_per_clip"] = original["seconds"] / clips
    return {
        "clips": clips,
        "original": original,
        "ours_audio": ours["audio"],
        "ours_png": ours["png"],
        "speedup": original["seconds"] / ours["audio"]["seconds"] if original else None,
        "audio_vs_png": ours["audio"]["seconds_per_clip"] / ours["png"]["seconds_per_clip"],
        "compared_scores": len(common),
        "max_abs_diff_audio_png": max((abs(audio_scores[k] - png_scores[k]) for k in common), default=None),
        "breakdown": parts,
    }


def print_audio(audio: dict) -> None:
    clips, original, parts = audio["clips"], audio["original"], audio["breakdown"]
    print(f"\nfrom audio to scores, {clips} clips: seconds (per clip)")
    if original:
        pre, predict = original["preprocess"], original["predict"]
        print(f"  original: 2020 preprocessing + tf_keras /predict  {original['seconds']:8.2f} s "
              f"({original['seconds_per_clip']:.3f})  [preprocessing {pre['total_s']:.2f} s: download "
              f"{pre['download_s']:.2f}, PNGs {pre['spectrograms_s']:.2f}, upload {pre['upload_s']:.2f}; "
              f"/predict {predict['total_s']:.2f} s]")
        print(f"    (the 2020 preprocessing: {original.get('pipeline') or 'bench.audio.Original'})")
    for name, label in (("audio", "ours: /predict from audio, cold"), ("png", "ours: /predict from the PNGs, cold")):
        side = audio[f"ours_{name}"]
        print(f"  {label:<48} {side['seconds']:8.2f} s ({side['seconds_per_clip']:.3f})")
    if audio["speedup"] is not None:
        print(f"  original / ours from audio: {audio['speedup']:.2f}x (goal >= 15x)")
    print(f"  ours from audio / from PNG, seconds per clip: {audio['audio_vs_png']:.2f} (goal <= 1); "
          f"max |score from audio - from PNG| over {audio['compared_scores']} clips: {audio['max_abs_diff_audio_png']:.1e}")
    per_clip, shares = parts["cpu_seconds_per_clip"], parts["shares_from_audio"]
    print("  ours' CPU per clip, one thread each: " + ", ".join(
        f"{stage} {per_clip[stage] * 1000:.1f} ms ({shares[stage]:.0%})" for stage in ("decode", "spectrogram", "scoring"))
        + f"; PNG decoding {per_clip['png_decode'] * 1000:.1f} ms")
