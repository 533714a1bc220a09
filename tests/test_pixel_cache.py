"""The decoded-pixel cache (scoring.pixel_cache): hits are the decoder's pixels bit for bit, the disk
tier stays under its byte bound (least recently used out), broken entries are misses, concurrent
threads and processes never see half an entry, and the service's /predict and /train decode a clip
once across models and rounds while answering exactly as without the cache."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import torch  # noqa: F401  (before anything that may import TensorFlow)
import numpy as np
import pytest

from models.srkw_cnn import write_fresh_h5
from repo_data import SAMPLE_DIR
from service.params import PredictParams, TrainParams
from service.runtime import Runtime
from scoring.images import decode_image
from scoring.pixel_cache import (HEADER, PIL_DECODER, TORCHVISION_DECODER, DevicePixels, PixelCache, decoder_name,
                                  file_identity, object_identity)

ROOT = Path(__file__).resolve().parent.parent
ROWS, COLS = 67, 83
PNGS = sorted(SAMPLE_DIR.glob("*/*/*.png"))
ENTRY = HEADER.size + ROWS * COLS * 3


class Events:
    """What the cache reports, as the app's Metrics would count it."""

    def __init__(self):
        self.counts: dict = {}
        self.held: dict = {}  # tier → the last "bytes held" reported
        self.lock = threading.Lock()

    def __call__(self, event, tier, amount):
        if event == "bytes":
            self.held[tier] = amount
        else:
            with self.lock:
                self.counts[(event, tier)] = self.counts.get((event, tier), 0) + amount


def test_a_hit_is_the_decoded_pixels_bit_for_bit_and_keyed_by_size(tmp_path):
    events = Events()
    cache = PixelCache(tmp_path / "pixels", 10**8, record=events)
    identity = file_identity(PNGS[0])
    assert cache.get(identity, ROWS, COLS) is None
    decoded = decode_image(PNGS[0], ROWS, COLS)
    cache.put(identity, ROWS, COLS, decoded, 640 * 480)
    hit = cache.get(identity, ROWS, COLS)
    assert isinstance(hit, np.memmap) and hit.dtype == np.uint8 and np.array_equal(hit, decoded)
    assert cache.get(identity, ROWS + 1, COLS) is None  # another size is another entry
    assert cache.get(object_identity("other", 1, "etag-1"), ROWS, COLS) is None
    assert events.counts == {("miss", None): 3, ("decode", None): 1, ("hit", "disk"): 1}


def test_each_decoder_reads_only_the_pixels_it_decoded_itself(tmp_path):
    """The decoder is part of the key: PIL's entries never answer for torchvision nor the other way
    round, though their pixels are the same bits; each decoder then hits its own entries."""
    from scoring.stream import stream_batches
    from scoring.torch_decode import decode_png_torch
    from scoring.torch_scoring import clip_decoder

    events = Events()
    cache = PixelCache(tmp_path / "pixels", 10**8, record=events)
    paths = PNGS[:3]

    def pixels(decode):
        batches = stream_batches(paths, None, ROWS, COLS, 2, decode=decode, cache=cache, identity=file_identity)
        return np.concatenate([np.asarray(batch.pixels) for batch in batches])

    def entries():
        return len(list((tmp_path / "pixels").rglob("*.px")))

    pil = pixels(decode_image)
    assert events.counts == {("miss", None): 3, ("decode", None): 3} and entries() == 3
    torchvision = pixels(decode_png_torch)
    assert events.counts[("decode", None)] == 6 and entries() == 6  # two decoders, two entries per clip
    assert np.array_equal(torchvision, pil)
    for decode in (decode_png_torch, clip_decoder("cpu"), decode_image):  # each finds its own
        assert np.array_equal(pixels(decode), pil)
    assert events.counts[("decode", None)] == 6 and events.counts[("hit", "disk")] == 9 and entries() == 6

    identity = file_identity(paths[0])
    assert decoder_name(decode_image) == PIL_DECODER != TORCHVISION_DECODER
    assert decoder_name(decode_png_torch) == decoder_name(clip_decoder("cpu")) == TORCHVISION_DECODER
    assert cache.contains(identity, ROWS, COLS, decoder=PIL_DECODER)
    assert cache.contains(identity, ROWS, COLS, decoder=TORCHVISION_DECODER)
    assert not cache.contains(identity, ROWS, COLS, decoder="another decoder")
    assert cache.get(identity, ROWS, COLS, decoder="another decoder") is None

    def wrapped(source, rows, cols):  # any other function is a decoder of its own
        return decode_image(source, rows, cols)

    assert decoder_name(wrapped).endswith("test_each_decoder_reads_only_the_pixels_it_decoded_itself.<locals>.wrapped")
    assert np.array_equal(pixels(wrapped), pil) and events.counts[("decode", None)] == 9 and entries() == 9


@pytest.mark.parametrize("backend, decoder", [("onnxruntime", PIL_DECODER), ("torch", TORCHVISION_DECODER)])
def test_scorers_name_the_decoder_of_the_scorers_they_build(tmp_path, srkw_h5, backend, decoder):
    """/predict asks the cache with `Scorers.decoder` before its scorer is built, and /query decodes with
    `Scorers.decode`: both must be the decoder of the scorer /predict then gets."""
    from scoring.scorers import Scorers

    scorers = Scorers(tmp_path / "onnx", device="cpu", backend=backend)
    assert scorers.decoder == decoder
    assert decoder_name(scorers.get(srkw_h5).decode) == decoder_name(scorers.decode) == decoder


def test_the_bytes_held_follow_every_write_not_only_the_scans(tmp_path):
    events = Events()
    cache = PixelCache(tmp_path / "pixels", 10**8, record=events)
    pixels = decode_image(PNGS[0], ROWS, COLS)
    for i in range(4):
        cache.put(object_identity(f"clip{i}", 1, f"etag{i}"), ROWS, COLS, pixels, 1)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "pixels").rglob("*.px"))
    assert events.held["disk"] == on_disk == 4 * ENTRY


def test_an_entry_is_not_served_where_max_pixels_refuses_its_source(tmp_path):
    cache = PixelCache(tmp_path, 10**8)
    identity = object_identity("k", 10, "e")
    cache.put(identity, ROWS, COLS, decode_image(PNGS[0], ROWS, COLS), 640 * 480)
    assert cache.get(identity, ROWS, COLS, max_pixels=640 * 480) is not None
    assert cache.get(identity, ROWS, COLS, max_pixels=640 * 480 - 1) is None


def test_the_disk_tier_evicts_the_least_recently_used_down_under_its_bound(tmp_path):
    cache = PixelCache(tmp_path, 10 * ENTRY)
    pixels = decode_image(PNGS[0], ROWS, COLS)
    ids = [object_identity(f"clip{i}", 1, f"etag{i}") for i in range(15)]
    for i, identity in enumerate(ids):
        cache.put(identity, ROWS, COLS, pixels, 1)
        if i >= 1:
            os.utime(cache.path(cache.entry_name(ids[0], ROWS, COLS)))  # ids[0] stays recently used
    files = [p for p in tmp_path.rglob("*.px")]
    assert sum(p.stat().st_size for p in files) <= 10 * ENTRY
    assert cache.get(ids[0], ROWS, COLS) is not None  # used all along: kept
    assert cache.get(ids[1], ROWS, COLS) is None  # the oldest untouched: evicted
    assert cache.get(ids[-1], ROWS, COLS) is not None


class Disk:
    """A stand-in file system of `capacity` bytes for the cache's free-space probe: what the cache's
    folder holds plus `other` bytes written by everything else."""

    def __init__(self, folder: Path, capacity: int, other: int = 0):
        self.folder, self.capacity, self.other = folder, capacity, other

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    def __call__(self, root: Path) -> int:
        assert Path(root) == self.folder
        return self.capacity - self.other - self.used()


def test_the_disk_tier_evicts_its_own_oldest_entries_to_leave_min_free_on_the_disk(tmp_path):
    disk = Disk(tmp_path / "pixels", capacity=12 * ENTRY)
    cache = PixelCache(disk.folder, 10**12, min_free=4 * ENTRY, free_bytes=disk)  # the byte bound never binds
    pixels = decode_image(PNGS[0], ROWS, COLS)
    ids = [object_identity(f"clip{i}", 1, f"etag{i}") for i in range(15)]
    for identity in ids:
        cache.put(identity, ROWS, COLS, pixels, 1)
        assert disk(disk.folder) >= 4 * ENTRY
    assert len(list(disk.folder.rglob("*.px"))) == 8  # 12 - 4 free
    assert all(cache.get(identity, ROWS, COLS) is not None for identity in ids[-8:])
    assert all(cache.get(identity, ROWS, COLS) is None for identity in ids[:-8])  # the oldest went


def test_a_disk_filled_by_others_stops_the_writes_not_the_answers_until_there_is_room(tmp_path, caplog):
    disk, events = Disk(tmp_path / "pixels", capacity=10 * ENTRY, other=7 * ENTRY), Events()
    cache = PixelCache(disk.folder, 10**12, min_free=3 * ENTRY, free_bytes=disk, record=events)
    pixels = decode_image(PNGS[0], ROWS, COLS)
    with caplog.at_level("WARNING", logger="training"):
        for i in range(3):
            kept = cache.put(object_identity(f"clip{i}", 1, f"etag{i}"), ROWS, COLS, pixels, 1)
            assert np.array_equal(kept, pixels)  # the caller still gets its pixels
    assert list(disk.folder.rglob("*.px")) == [] and disk(disk.folder) == 3 * ENTRY
    assert cache.get(object_identity("clip0", 1, "etag0"), ROWS, COLS) is None
    assert sum("ORCA_PIXEL_CACHE_MIN_FREE" in r.getMessage() for r in caplog.records) == 1  # once, not per clip
    assert events.counts[("unwritten", "disk")] == 3  # but counted, each time
    disk.other = 5 * ENTRY  # the others freed two entries' worth
    cache.put(object_identity("clip9", 1, "etag9"), ROWS, COLS, pixels, 1)
    assert cache.get(object_identity("clip9", 1, "etag9"), ROWS, COLS) is not None
    assert disk(disk.folder) == 4 * ENTRY


def test_the_real_disk_is_asked_for_its_free_space(tmp_path):
    pixels = decode_image(PNGS[0], ROWS, COLS)
    identity = object_identity("k", 10, "e")
    larger_than_the_disk = shutil.disk_usage(tmp_path).total + 1
    refused = PixelCache(tmp_path / "refused", 10**8, min_free=larger_than_the_disk)
    refused.put(identity, ROWS, COLS, pixels, 1)
    assert refused.get(identity, ROWS, COLS) is None and not list((tmp_path / "refused").rglob("*.px"))
    room = PixelCache(tmp_path / "room", 10**8, min_free=1)
    room.put(identity, ROWS, COLS, pixels, 1)
    assert room.get(identity, ROWS, COLS) is not None


def test_the_service_leaves_two_gigabytes_free_by_default_and_takes_the_setting(tmp_path):
    assert _runtime(tmp_path, 10**9).pixels.min_free == 2_000_000_000
    configured = Runtime.from_config({"LOCAL_ROOT": None, "DEVICE": "cpu", "CACHE_DIR": str(tmp_path / "c2"),
                                      "PIXEL_CACHE_MIN_FREE": 12345})
    assert configured.pixels.min_free == 12345


@pytest.mark.parametrize("damage", ["truncate", "foreign"])
def test_a_broken_entry_is_a_miss_and_removed(tmp_path, damage):
    cache = PixelCache(tmp_path, 10**8)
    identity = object_identity("k", 10, "e")
    cache.put(identity, ROWS, COLS, decode_image(PNGS[0], ROWS, COLS), 1)
    path = cache.path(cache.entry_name(identity, ROWS, COLS))
    data = path.read_bytes()
    path.write_bytes(data[:-7] if damage == "truncate" else b"not a pixel file" + data[16:])
    assert cache.get(identity, ROWS, COLS) is None and not path.exists()


def test_concurrent_threads_read_whole_entries_while_others_write_them(tmp_path):
    cache = PixelCache(tmp_path, 10**8)
    images = [decode_image(p, ROWS, COLS) for p in PNGS[:4]]
    ids = [object_identity(f"k{i}", 1, f"e{i}") for i in range(4)]
    wrong = []

    def worker(n):
        for round_ in range(25):
            i = (n + round_) % 4
            hit = cache.get(ids[i], ROWS, COLS)
            if hit is None:
                cache.put(ids[i], ROWS, COLS, images[i], 1)
            elif not np.array_equal(hit, images[i]):
                wrong.append(i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [] and all(np.array_equal(cache.get(ids[i], ROWS, COLS), images[i]) for i in range(4))


PROCESS_SCRIPT = """
import sys, numpy as np
from scoring.pixel_cache import PixelCache, object_identity
root, seed = sys.argv[1], int(sys.argv[2])
cache = PixelCache(root, 12 * (32 + 67 * 83 * 3))
bad = 0
for i in range(60):
    k = (i * 7 + seed) % 20
    identity = object_identity(f"k{k}", 1, f"e{k}")
    expected = np.full((67, 83, 3), k, dtype=np.uint8)
    hit = cache.get(identity, 67, 83)
    if hit is None:
        cache.put(identity, 67, 83, expected, 1)
    elif not np.array_equal(hit, expected):
        bad += 1
print(bad)
"""


def test_processes_sharing_the_folder_never_read_half_an_entry_and_keep_its_bound(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_SCRIPT, str(tmp_path), str(seed)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True) for seed in (0, 3, 5)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0] and outputs == ["0", "0", "0"]
    assert not list(tmp_path.rglob(".px-*"))  # no temporary file left behind
    final = PixelCache(tmp_path, 12 * ENTRY).evict()
    assert final <= 12 * ENTRY


def test_the_device_tier_keeps_tensors_under_its_bound_and_batches_mixed_entries(tmp_path):
    events = Events()
    tier = DevicePixels("cpu", 3 * ROWS * COLS * 3, record=events)  # the CUDA tier's logic, on the CPU
    cache = PixelCache(tmp_path, 10**8, device_tier=lambda: tier, record=events)
    images = [decode_image(p, ROWS, COLS) for p in PNGS[:4]]
    ids = [object_identity(f"k{i}", 1, f"e{i}") for i in range(4)]
    for identity, image in zip(ids, images):
        stored = cache.put(identity, ROWS, COLS, image, 1)
        assert isinstance(stored, torch.Tensor) and np.array_equal(stored.numpy(), image)
    assert len(tier) == 3 and tier.bytes == 3 * ROWS * COLS * 3  # ids[0] went out of the tier
    again = cache.get(ids[0], ROWS, COLS)  # from disk, back onto the device
    assert isinstance(again, torch.Tensor) and np.array_equal(again.numpy(), images[0])
    assert events.counts[("hit", "disk")] == 1 and events.counts[("evict", "device")] == 2
    assert cache.get(ids[3], ROWS, COLS) is not None and events.counts[("hit", "device")] == 1
    batch = cache.stack([images[1], cache.get(ids[2], ROWS, COLS)])
    assert isinstance(batch, torch.Tensor) and np.array_equal(batch.numpy(), np.stack(images[1:3]))


# ------------------------------------------------------------------------- the service

def _runtime(tmp_path, cache_bytes: int) -> Runtime:
    return Runtime.from_config({"LOCAL_ROOT": None, "DEVICE": "cpu", "CACHE_DIR": str(tmp_path / "cache"),
                                "PIXEL_CACHE_BYTES": cache_bytes, "PRECISION": "fp32"})


def _counted(runtime: Runtime, name: str, **labels) -> float:
    return runtime.metrics.registry.get_sample_value(name, labels) or 0.0


def _without_addresses(skipped: list[dict]) -> list[dict]:
    """PIL's reason names a BytesIO object by its address, which differs per call."""
    return [{k: re.sub(r" at 0x[0-9a-f]+", "", v) for k, v in item.items()} for item in skipped]


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixels") / "unlabeled"
    spectrograms = folder / "spectrograms"
    spectrograms.mkdir(parents=True)
    for i, png in enumerate(PNGS[:5]):
        shutil.copy(png, spectrograms / f"orcasoundlab_{1594154118 + 3 * i}.png")
    (spectrograms / "orcasoundlab_1594154199.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder


def test_predict_with_a_new_model_decodes_nothing_and_answers_as_without_the_cache(tmp_path, unlabeled):
    models = [write_fresh_h5(tmp_path / f"srkw_cnn_{i}.h5", ROWS, COLS, seed=i) for i in range(2)]
    params = [PredictParams(str(m), str(unlabeled), ROWS, COLS) for m in models]
    cached, plain = _runtime(tmp_path, 10**9), _runtime(tmp_path / "plain", 0)
    first = cached.run_predict(cached, params[0])
    decodes = _counted(cached, "orca_pixel_decodes_total")
    second = cached.run_predict(cached, params[1])  # a new model: the score cache cannot answer
    assert decodes == 5 and _counted(cached, "orca_pixel_decodes_total") == 5
    assert _counted(cached, "orca_pixel_cache_lookups_total", result="hit", tier="disk") == 5
    for answer, p in ((first, params[0]), (second, params[1])):
        expected = plain.run_predict(plain, p)
        assert json.dumps(answer) == json.dumps(expected)  # byte for byte
        assert (_without_addresses(answer.skipped) == _without_addresses(expected.skipped)
                and len(answer.skipped) == 1)  # the corrupt clip, every time
    assert b"orca_pixel_decodes_total 5.0" in cached.metrics.render()[0]


def test_on_the_torch_backend_predict_and_query_decode_each_clip_once(tmp_path, unlabeled, srkw_h5,
                                                                         spread_srkw_h5):
    """The CUDA path's decoding (torchvision), run on the CPU: a /predict with a new model and the
    embedding pass of a /query read the pixels the first /predict decoded; none is decoded twice."""
    from scoring.scorers import Scorers
    from service.selection import probe_pool

    cache = tmp_path / "cache"
    runtime = Runtime.from_config({"LOCAL_ROOT": None, "DEVICE": "cpu", "CACHE_DIR": str(cache),
                                   "PIXEL_CACHE_BYTES": 10**9, "PRECISION": "fp32"},
                                  scorers=Scorers(cache / "onnx", device="cpu", backend="torch"))
    first = runtime.run_predict(runtime, PredictParams(srkw_h5, str(unlabeled), ROWS, COLS))
    assert len(first) == 5 and _counted(runtime, "orca_pixel_decodes_total") == 5
    probed = probe_pool(runtime, PredictParams(spread_srkw_h5, str(unlabeled), ROWS, COLS), embeddings=True)
    assert len(probed.items) == 5 and probed.embeddings.shape == (5, 256)
    assert _counted(runtime, "orca_pixel_decodes_total") == 5
    assert _counted(runtime, "orca_pixel_cache_lookups_total", result="hit", tier="disk") == 10  # /predict's, the probe's


@pytest.mark.slow
def test_a_second_training_round_decodes_only_new_labels_and_trains_alike(tmp_path):
    labeled = tmp_path / "labeled"
    shutil.copytree(SAMPLE_DIR, labeled, ignore=shutil.ignore_patterns("test", "*.md", "LICENSE"))
    model = write_fresh_h5(tmp_path / "models" / "srkw_cnn_0.h5", ROWS, COLS, seed=1)
    params = TrainParams(model_url=str(model), labeled_url=str(labeled), rows=ROWS, cols=COLS, epochs=1, seed=0)
    cached, plain = _runtime(tmp_path, 10**9), _runtime(tmp_path / "plain", 0)
    images = len(list(labeled.rglob("*.png")))
    first = cached.run_train(cached, params)
    assert _counted(cached, "orca_pixel_decodes_total") == images
    shutil.copy(PNGS[-1], labeled / "train" / "calls" / "new_label.png")  # the client's next label
    second = cached.run_train(cached, params)
    assert _counted(cached, "orca_pixel_decodes_total") == images + 1
    assert _counted(cached, "orca_pixel_cache_lookups_total", result="hit", tier="disk") == images
    expected = plain.run_train(plain, params)
    for answer in (second, expected):
        answer.pop("model_url")
    assert json.dumps(second, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert first["labeled_files"] + 1 == second["labeled_files"]


def _torch_runtime(tmp_path, device_tier=None) -> Runtime:
    """A runtime that scores with torch, as on CUDA, and keeps a device tier (on the CPU) when given."""
    from service import __version__
    from service.metrics import Metrics
    from scoring.scorers import Scorers

    cache, metrics = tmp_path / "cache", Metrics(__version__)
    parts = {"scorers": Scorers(cache / "onnx", device="cpu", backend="torch"), "metrics": metrics}
    if device_tier is not None:
        device_tier.record = metrics.record_pixels
        parts["pixels"] = PixelCache(cache / "pixels", 10**9, device_tier=device_tier, record=metrics.record_pixels)
    return Runtime.from_config({"LOCAL_ROOT": None, "DEVICE": "cpu", "CACHE_DIR": str(cache), "PRECISION": "fp32",
                                "PIXEL_CACHE_BYTES": 10**9 if device_tier is not None else 0}, **parts)


@pytest.mark.slow
def test_the_cuda_data_path_run_on_the_cpu_answers_as_decoding_every_time(tmp_path, unlabeled):
    """What the service does on CUDA, with the device tier on the CPU: /predict batches and /train
    splits come as tensors from the tier (no decoding after the first time) and every answer is the
    one a service without any pixel cache gives."""
    labeled = tmp_path / "labeled"
    shutil.copytree(SAMPLE_DIR, labeled, ignore=shutil.ignore_patterns("test", "*.md", "LICENSE"))
    models = [write_fresh_h5(tmp_path / "models" / f"srkw_cnn_{i}.h5", ROWS, COLS, seed=i) for i in range(2)]
    tier = DevicePixels("cpu", 10**9)
    tiered, plain = _torch_runtime(tmp_path / "tiered", tier), _torch_runtime(tmp_path / "plain")
    images = len(list(labeled.rglob("*.png"))) + 5  # the labeled set and the 5 readable unlabeled clips
    answers = {"tiered": [], "plain": []}
    for name, runtime in (("tiered", tiered), ("plain", plain)):
        for model in models:
            train = TrainParams(model_url=str(model), labeled_url=str(labeled), rows=ROWS, cols=COLS, epochs=1,
                                seed=0)
            trained = runtime.run_train(runtime, train)
            trained.pop("model_url")
            predicted = runtime.run_predict(runtime, PredictParams(str(model), str(unlabeled), ROWS, COLS))
            answers[name].append((json.dumps(trained, sort_keys=True), json.dumps(predicted),
                                  _without_addresses(predicted.skipped)))
    assert answers["tiered"] == answers["plain"]
    assert _counted(tiered, "orca_pixel_decodes_total") == images  # each image once, over 2 trainings + 2 predicts
    assert _counted(tiered, "orca_pixel_cache_lookups_total", result="hit", tier="device") >= images
    assert len(tier) == images


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_the_cuda_tier_returns_the_decoded_pixels_on_the_gpu(tmp_path):
    tier = DevicePixels("cuda", 10**8)
    cache = PixelCache(tmp_path, 10**8, device_tier=tier)
    images = [decode_image(p, ROWS, COLS) for p in PNGS[:3]]
    ids = [object_identity(f"k{i}", 1, f"e{i}") for i in range(3)]
    for identity, image in zip(ids, images):
        cache.put(identity, ROWS, COLS, image, 1)
    batch = cache.stack([cache.get(i, ROWS, COLS) for i in ids])
    assert batch.device.type == "cuda" and np.array_equal(batch.cpu().numpy(), np.stack(images))
