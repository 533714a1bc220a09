"""TensorBoard event files of a training, read back with TensorFlow's own event reader."""

from __future__ import annotations

import torch  # noqa: F401  (before TensorFlow)

import numpy as np

from training.tensorboard import EXAMPLE_IMAGES, TrainingLog


def read_events(folder):
    import tensorflow as tf

    scalars, images = {}, {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.HasField("image"):
                    images.setdefault(value.tag, []).append(value.image)
                else:
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars, images


def test_epochs_and_augmented_examples_reach_the_event_file(tmp_path):
    with TrainingLog(tmp_path / "tb") as log:
        log.epoch(1, {"loss": 0.7, "acc": 0.5, "val_loss": 0.69, "val_acc": 0.55, "roc_auc": 0.6,
                      "average_precision": None, "learning_rate": 1e-4})
        log.epoch(2, {"loss": 0.6, "acc": 0.6, "val_loss": 0.65, "val_acc": 0.6, "roc_auc": float("nan")})
        log.augmented_examples(torch.rand(12, 9, 11, 3), epoch=1)
        log.augmented_examples(torch.rand(12, 9, 11, 3), epoch=2)  # once per training
    scalars, images = read_events(tmp_path / "tb")
    assert scalars["loss/train"] == [(1, np.float32(0.7)), (2, np.float32(0.6))]
    assert [step for step, _ in scalars["accuracy/validation"]] == [1, 2]
    assert scalars["roc_auc/validation"] == [(1, np.float32(0.6))]  # NaN (one class) is left out
    assert "average_precision/validation" not in scalars
    assert scalars["learning_rate"][0][1] == np.float32(1e-4)
    logged = images["augmented_training_images"]
    assert len(logged) == 1  # one grid of EXAMPLE_IMAGES images side by side
    assert (logged[0].height, logged[0].width) == (9, 11 * EXAMPLE_IMAGES)


def _train(app, args):
    from tests.repo_data import json_client

    response = json_client(app).get("/train", query_string=args)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_train_uploads_event_files_beside_the_new_version_and_the_sidecar_names_them(s3_env, srkw_h5, tmp_path):
    import json

    from service.app import create_app
    from tests.ops_support import upload_stack
    from tests.repo_data import SRKW_COLS, SRKW_ROWS

    upload_stack(s3_env.client(), s3_env.bucket, srkw_h5)
    app = create_app({"LOCAL_ROOT": "", "DEVICE": "cpu", "CACHE_DIR": str(tmp_path / "cache")})
    result = _train(app, {"model_url": f"s3://{s3_env.bucket}/models/srkw_cnn_0.h5",
                          "labeled_url": f"s3://{s3_env.bucket}/labeled/", "img_width": SRKW_ROWS,
                          "img_height": SRKW_COLS, "epochs": 2, "seed": 0})
    assert "tensorboard" not in result  # the /train answer keeps the original's keys
    s3 = s3_env.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_env.bucket, Prefix="models/")["Contents"]]
    events = [k for k in keys if k.startswith("models/srkw_cnn_1.tensorboard/events.out.tfevents.")]
    assert len(events) == 1
    sidecar = json.loads(s3.get_object(Bucket=s3_env.bucket, Key="models/srkw_cnn_1.json")["Body"].read())
    assert sidecar["tensorboard"] == f"s3://{s3_env.bucket}/models/srkw_cnn_1.tensorboard/"
    folder = tmp_path / "downloaded"
    folder.mkdir()
    s3.download_file(s3_env.bucket, events[0], str(folder / events[0].rsplit("/", 1)[1]))
    scalars, images = read_events(folder)
    assert [step for step, _ in scalars["loss/validation"]] == [1, 2]
    np.testing.assert_allclose([v for _, v in scalars["loss/validation"]], result["val_loss"], rtol=1e-6)
    assert "roc_auc/validation" in scalars and "learning_rate" in scalars
    assert "augmented_training_images" in images


def test_tensorboard_dir_setting_writes_locally_or_nowhere(tmp_path):
    from service.app import create_app
    from tests.ops_support import make_root

    args = make_root(tmp_path / "root")
    logs = tmp_path / "logs"
    _train(create_app({"LOCAL_ROOT": str(tmp_path), "DEVICE": "cpu", "TENSORBOARD_DIR": str(logs)}), args)
    runs = list(logs.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("srkw_cnn_0-")
    assert list(runs[0].glob("events.out.tfevents.*"))
    assert not (tmp_path / "root" / "models" / "srkw_cnn_1.tensorboard").exists()
    _train(create_app({"LOCAL_ROOT": str(tmp_path), "DEVICE": "cpu", "TENSORBOARD_DIR": "off"}), args)
    assert len(list(logs.iterdir())) == 1
    assert not (tmp_path / "root" / "models" / "srkw_cnn_2.tensorboard").exists()
    assert (tmp_path / "root" / "models" / "srkw_cnn_2.h5").exists()
