"""The original endpoint's pipeline, as a benchmark reference: tf_keras on files downloaded from S3.

Run as its own process (`python -m bench.reference --config JSON --out JSON`): it imports
TensorFlow and nothing of torch, so its peak memory is TensorFlow's alone and it never shares a
process with the service.

What the original did per request, and what is timed here:
- /predict: download the model and `unlabeled/spectrograms/*` from S3 into a temp folder →
  `load_model` → `ImageDataGenerator(rescale=1/255).flow_from_directory(target_size=(rows, cols),
  class_mode=None, shuffle=False, batch_size=32)` → `model.predict`. Done twice in the same
  process: the first ("cold") pays TensorFlow's graph tracing, the second ("warm") does not.
- /train: download the model and `labeled/{train,validation}/*` → `load_model` (compiled from the
  file's training_config) → `fit` with a train generator `ImageDataGenerator(rescale=1/255,
  shear_range=0.2, zoom_range=0.2)` (class_mode binary, batch 32, shuffled) and a validation
  generator (rescale only), `ModelCheckpoint(save_best_only=True, monitor='val_loss')` →
  confusion matrix from `predict` on validation → reload the checkpoint, `evaluate` on validation
  → upload the new .h5 to S3.
Downloads use 8 threads, like the service's default ORCA_DOWNLOAD_THREADS (`bench.s3`), and are also timed alone.

`--round`: one active-learning round instead (what `bench.run --rounds` times): /train from
`model_key` writing `output_key`, then /predict with the model it wrote.
`--cold`: only the cold /predict (what `bench.run --cold-pairs` repeats).
`--preprocess`: the 2020 preprocessing instead, what came before the original's /predict from audio
(`bench.run --audio-clips`): download `audio_prefix` + `mp3/*.mp3`, draw each clip's PNG with the 2020
pipeline (`bench.audio.Original`, one clip after the other as orcaal's preprocessing did: the current-library
stand-in in this process, or, with `original_python` in the config, the 2020 environment's interpreter
running `bench.audio --draw`, its start and imports apart), upload the PNGs to `unlabeled_prefix` + `spectrograms/`. No TensorFlow in that process
(the original preprocessed apart from the endpoint); its first clip is drawn once untimed (numba's JIT of
resampy and librosa: `warmup_s`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .memory import proc_status_mib  # noqa: E402
from .s3 import download_prefix, upload_tree  # noqa: E402


def log(message: str) -> None:
    print(f"[reference] {message}", file=sys.stderr, flush=True)


def fetch_request_inputs(s3, cfg: dict, tmp: str, prefix_key: str, folders: set) -> tuple[str, str, int]:
    """What the original downloaded per request: the model and one dataset prefix, into `tmp`."""
    model_path = os.path.join(tmp, "model.h5")
    s3.download_file(cfg["bucket"], cfg["model_key"], model_path)
    data = os.path.join(tmp, "data")
    return model_path, data, download_prefix(s3, cfg["bucket"], cfg[prefix_key], data, folders)


def predict_request(s3, keras, cfg: dict) -> dict:
    """One /predict as the original served it; returns timings and the predictions by file name."""
    timings = {}
    with tempfile.TemporaryDirectory(prefix="bench-ref-predict-") as tmp:
        t0 = time.perf_counter()
        model_path, unlabeled, n = fetch_request_inputs(s3, cfg, tmp, "unlabeled_prefix", {"spectrograms"})
        t1 = time.perf_counter()
        model = keras.models.load_model(model_path)
        t2 = time.perf_counter()
        generator = keras.preprocessing.image.ImageDataGenerator(rescale=1 / 255).flow_from_directory(
            unlabeled, target_size=(cfg["rows"], cfg["cols"]), class_mode=None, shuffle=False, batch_size=32)
        values = model.predict(generator, verbose=0)[:, -1]
        t3 = time.perf_counter()
        names = [os.path.basename(f) for f in generator.filenames]
    timings.update(download_s=t1 - t0, load_model_s=t2 - t1, predict_s=t3 - t2, total_s=t3 - t0, images=n)
    del model
    keras.backend.clear_session()
    return {"timings": timings, "predictions": dict(zip(names, (float(v) for v in values)))}


def train_request(s3, keras, cfg: dict) -> dict:
    """One /train as the original served it (fit + checkpoint + cm + evaluate + upload)."""
    import numpy as np

    timings = {}
    with tempfile.TemporaryDirectory(prefix="bench-ref-train-") as tmp:
        t0 = time.perf_counter()
        model_path, labeled, n = fetch_request_inputs(s3, cfg, tmp, "labeled_prefix", {"train", "validation"})
        t1 = time.perf_counter()
        model = keras.models.load_model(model_path)  # compiled from the file's training_config
        target = (cfg["rows"], cfg["cols"])
        train = keras.preprocessing.image.ImageDataGenerator(
            rescale=1 / 255, shear_range=0.2, zoom_range=0.2).flow_from_directory(
            os.path.join(labeled, "train"), target_size=target, batch_size=32, class_mode="binary")
        validation = keras.preprocessing.image.ImageDataGenerator(rescale=1 / 255).flow_from_directory(
            os.path.join(labeled, "validation"), target_size=target, batch_size=32, class_mode="binary",
            shuffle=False)
        best = os.path.join(tmp, "srkw_cnn_1.h5")
        checkpoint = keras.callbacks.ModelCheckpoint(best, monitor="val_loss", save_best_only=True)
        t2 = time.perf_counter()
        history = model.fit(train, validation_data=validation, epochs=cfg["epochs"], callbacks=[checkpoint],
                            verbose=0)
        t3 = time.perf_counter()
        # the original's confusion matrix (last epoch's weights) and the saved model's evaluation
        predicted = (model.predict(validation, verbose=0)[:, -1] >= 0.5).astype(int)
        actual = validation.classes
        cm = [int(np.sum((actual == a) & (predicted == p))) for a in (0, 1) for p in (0, 1)]
        saved = keras.models.load_model(best)
        model_loss, model_acc = saved.evaluate(validation, verbose=0)[:2]
        s3.upload_file(best, cfg["bucket"], cfg["output_key"])
        t4 = time.perf_counter()
    timings.update(download_s=t1 - t0, setup_s=t2 - t1, fit_s=t3 - t2, after_fit_s=t4 - t3, total_s=t4 - t0,
                   images=n, train_images=int(train.samples), validation_images=int(validation.samples))
    result = {key: [float(v) for v in values] for key, values in history.history.items()}
    result.update(cm=cm, model_acc=float(model_acc), model_loss=float(model_loss))
    return {"timings": timings, "result": result}


def preprocess_request(s3, cfg: dict) -> dict:
    """The 2020 preprocessing of every clip under `audio_prefix`: timings, its PNGs on S3 (see the module)."""
    from .audio import Original, original_environment

    python = cfg.get("original_python")  # the 2020 environment's interpreter: it draws the PNGs (bench.audio --draw)
    t0 = time.perf_counter()
    original = None if python else Original()
    import_s = time.perf_counter() - t0
    name = original.name if original else None
    with tempfile.TemporaryDirectory(prefix="bench-ref-preprocess-") as tmp:
        clips, pngs = os.path.join(tmp, "mp3"), os.path.join(tmp, "spectrograms")
        os.makedirs(pngs)
        t0 = time.perf_counter()
        n = download_prefix(s3, cfg["bucket"], cfg["audio_prefix"] + "mp3/", clips, suffix=".mp3")
        t1 = time.perf_counter()
        paths = sorted(os.path.join(clips, entry) for entry in os.listdir(clips))
        if original is not None:
            original.png(paths[0], os.path.join(tmp, "warm-up.png"))
            t2 = time.perf_counter()
            for path in paths:
                original.png(path, os.path.join(pngs, os.path.splitext(os.path.basename(path))[0] + ".png"))
            warmup_s, spectrograms_s = t2 - t1, time.perf_counter() - t2
        else:  # its process start, imports and first clip apart, as this process's above
            env = {**os.environ, **original_environment(python)}
            done = subprocess.run([python, "-m", "bench.audio", "--draw", pngs, *paths], capture_output=True,
                                  text=True, env=env, cwd=str(Path(__file__).resolve().parent.parent), timeout=7200)
            if done.returncode != 0:
                raise SystemExit(f"the 2020 environment's drawing failed:\n{done.stderr[-3000:]}")
            drawn = json.loads(done.stdout.strip().splitlines()[-1])
            name, warmup_s, spectrograms_s = drawn["name"], drawn["warmup_s"], drawn["spectrograms_s"]
        t3 = time.perf_counter()
        uploaded = upload_tree(s3, cfg["bucket"], pngs, cfg["unlabeled_prefix"] + "spectrograms/")
        t4 = time.perf_counter()
    timings = {"import_s": import_s, "download_s": t1 - t0, "warmup_s": warmup_s, "spectrograms_s": spectrograms_s,
               "upload_s": t4 - t3, "total_s": (t1 - t0) + spectrograms_s + (t4 - t3), "clips": n, "pngs": uploaded}
    return {"timings": timings, "memory_mib": proc_status_mib(), "pipeline": name}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON: bucket, model_key, unlabeled_prefix, "
                        "labeled_prefix, output_key, rows, cols, epochs")
    parser.add_argument("--out", required=True, help="where to write the JSON results")
    parser.add_argument("--round", action="store_true", help="one round: train, then predict with the new model")
    parser.add_argument("--cold", action="store_true", help="only a cold /predict (bench.cold's pairs)")
    parser.add_argument("--preprocess", action="store_true",
                        help="only the 2020 preprocessing of audio_prefix's clips into unlabeled_prefix, no TensorFlow")
    args = parser.parse_args(argv)
    cfg = json.loads(args.config)
    if args.preprocess:
        import boto3

        out = preprocess_request(boto3.client("s3"), cfg)
        log(f"preprocess: {out['timings']['clips']} clips in {out['timings']['total_s']:.1f} s")
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        return

    t0 = time.perf_counter()
    import boto3
    import tensorflow as tf
    import tf_keras as keras
    import_s = time.perf_counter() - t0
    log(f"imported TensorFlow {tf.__version__} in {import_s:.1f} s")
    s3 = boto3.client("s3")

    out = {"tensorflow": tf.__version__, "import_s": import_s,
           "tf_gpus": len(tf.config.list_physical_devices("GPU"))}
    if args.round:
        out["train"] = train_request(s3, keras, cfg)
        log(f"round train: {out['train']['timings']['total_s']:.1f} s")
        out["predict"] = predict_request(s3, keras, dict(cfg, model_key=cfg["output_key"]))
        log(f"round predict with the new model: {out['predict']['timings']['total_s']:.1f} s")
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        return
    out["predict_cold"] = predict_request(s3, keras, cfg)
    log(f"predict cold: {out['predict_cold']['timings']['total_s']:.1f} s")
    if args.cold:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        return
    out["predict_warm"] = predict_request(s3, keras, cfg)
    log(f"predict warm: {out['predict_warm']['timings']['total_s']:.1f} s")
    out["train"] = train_request(s3, keras, cfg)
    log(f"train: {out['train']['timings']['total_s']:.1f} s")
    out["memory_mib"] = proc_status_mib()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
