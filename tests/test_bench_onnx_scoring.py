"""scoring.onnx_scoring: ONNX Runtime scores match the torch path (scoring.torch_scoring.predict) within 1e-4,
and the export is cached per model file content."""

import sys
from pathlib import Path

import pytest

from models.srkw_cnn import write_fresh_h5
from repo_data import SAMPLE_DIR as SAMPLE, SRKW_COLS as COLS, SRKW_ROWS as ROWS
from scoring.errors import ScoringError
from scoring.onnx_scoring import OnnxScorer, export_cached
from scoring.torch_scoring import predict


@pytest.fixture(scope="module")
def model(srkw_h5):
    return srkw_h5  # the session's fresh srkw_cnn (seed 0), read only


def test_onnx_scores_match_torch_predict(spread_srkw_h5, tmp_path):
    """On the model whose scores spread over ≥ 0.2 (conftest.spread_srkw_h5): on the fresh one every clip
    scores ≈ 0.5 and any two engines agree within 1e-4."""
    paths = sorted(SAMPLE.glob("*/*/*.png"))
    assert len(paths) > 8
    expected = predict(spread_srkw_h5, paths, ROWS, COLS, device="cpu", batch_size=4)
    got = OnnxScorer(spread_srkw_h5, cache_dir=tmp_path).score(paths, ROWS, COLS, batch_size=4)  # several batches + a short one
    assert len(got) == len(expected) == len(paths)
    assert max(expected) - min(expected) >= 0.2
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-4


def test_export_is_cached_by_content(model, tmp_path):
    first = export_cached(model, tmp_path)
    mtime = first.stat().st_mtime_ns
    copy = tmp_path / "renamed.h5"
    copy.write_bytes(Path(model).read_bytes())
    assert export_cached(copy, tmp_path) == first and first.stat().st_mtime_ns == mtime
    other = write_fresh_h5(tmp_path / "other.h5", ROWS, COLS, seed=4)
    assert export_cached(other, tmp_path) != first
    assert len(list(tmp_path.glob("*.onnx"))) == 2


def test_wrong_image_size_is_refused(model, tmp_path):
    with pytest.raises(ScoringError, match="67x83"):
        OnnxScorer(model, cache_dir=tmp_path).score([SAMPLE / "train/calls/extracted_calls1.wav.png"], 60, 83)


def test_uint8_input_in_the_graph_gives_the_bits_of_rescaling_in_numpy(model, tmp_path):
    """OnnxScorer feeds uint8 pixels to a graph that casts and rescales them (with_pixel_input);
    every byte value comes out as the float-input graph fed with images.to_float gives it."""
    import numpy as np
    import onnxruntime as ort

    from scoring.images import to_float
    from scoring.onnx_scoring import PIXEL_INPUT, with_pixel_input

    scorer = OnnxScorer(model, cache_dir=tmp_path)
    assert scorer.takes_pixels and scorer.input_name == PIXEL_INPUT
    plain = ort.InferenceSession(str(scorer.onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(5, ROWS, COLS, 3), dtype=np.uint8)
    pixels[0].reshape(-1)[:256] = np.arange(256)  # every byte value at least once
    (expected,) = plain.run(None, {plain.get_inputs()[0].name: to_float(pixels)})
    assert scorer.score_pixels(pixels) == [float(v) for v in expected[:, -1]]
    assert scorer.score_pixels(pixels[:, :, :, :][::2]) == [float(v) for v in expected[::2, -1]]  # strided

    # a model whose input is not float32 is left as it is
    from onnx import TensorProto

    assert with_pixel_input(_identity_model(tmp_path / "double.onnx", 17, elem_type=TensorProto.DOUBLE)) is None


def _identity_model(path, opset: int, name: str = "x", elem_type: int | None = None):
    """An image-shaped Identity model (float32 unless `elem_type` says otherwise): what
    with_pixel_input puts in front shows alone."""
    import onnx
    from onnx import TensorProto, helper

    elem_type = TensorProto.FLOAT if elem_type is None else elem_type
    graph = helper.make_graph([helper.make_node("Identity", [name], ["y"])], "g",
                              [helper.make_tensor_value_info(name, elem_type, ["batch", 3, 256, 3])],
                              [helper.make_tensor_value_info("y", elem_type, ["batch", 3, 256, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7), path)
    return path


@pytest.mark.parametrize("opset, rescale_ops", [(17, ["DequantizeLinear"]), (9, ["Cast", "Mul"])])
def test_pixel_input_rescales_every_byte_value_to_the_bits_of_to_float(tmp_path, opset, rescale_ops):
    """DequantizeLinear (opset ≥ 10) and Cast + Mul (older models) both give float(x) * RESCALE with one
    rounding: the bits of images.to_float for each of the 256 byte values, in every channel."""
    import numpy as np
    import onnxruntime as ort

    from scoring.images import to_float
    from scoring.onnx_scoring import PIXEL_INPUT, with_pixel_input

    graph = with_pixel_input(_identity_model(tmp_path / "identity.onnx", opset))
    assert [node.op_type for node in graph.graph.node] == rescale_ops + ["Identity"]
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :, None], (2, 3, 256, 3)).copy()
    pixels[1] = pixels[1, :, ::-1]
    (out,) = session.run(None, {PIXEL_INPUT: pixels})
    assert out.dtype == np.float32 and out.view(np.uint32).tolist() == to_float(pixels).view(np.uint32).tolist()


@pytest.mark.parametrize("taken", ["pixels", "pixels_rescale", "pixels_zero_point", "pixels_float"])
def test_pixel_input_leaves_a_model_alone_whose_names_it_would_reuse(tmp_path, taken):
    from scoring.onnx_scoring import with_pixel_input

    assert with_pixel_input(_identity_model(tmp_path / "taken.onnx", 17, name=taken)) is None


def test_images_are_scored_one_per_run_on_every_thread_and_as_one_batched_run_scores_them(spread_srkw_h5, tmp_path):
    """score_pixels runs one image per ONNX Runtime run, `threads` runs at once (each run waits here for
    the other thread's first run: without concurrent runs it times out), in order, with the scores one
    batched run of a plain session gives (to 1e-6)."""
    import threading

    import numpy as np
    import onnxruntime as ort

    from scoring.images import decode_image

    paths = sorted(SAMPLE.glob("*/*/*.png"))[:7]
    pixels = np.stack([decode_image(p, ROWS, COLS) for p in paths])
    scorer = OnnxScorer(spread_srkw_h5, cache_dir=tmp_path, threads=2)
    batched = ort.InferenceSession(scorer_graph(scorer), providers=["CPUExecutionProvider"])
    (expected,) = batched.run(None, {scorer.input_name: pixels})
    sizes, threads, together = [], set(), threading.Barrier(2, timeout=20)
    real_run = scorer.session.run

    class Recording:
        def run(self, outputs, feed):
            sizes.append(len(feed[scorer.input_name]))
            if threading.current_thread().name not in threads:
                threads.add(threading.current_thread().name)
                together.wait()
            return real_run(outputs, feed)

    scorer.session = Recording()
    got = scorer.score_pixels(pixels)
    assert sizes == [1] * len(paths) and len(threads) == 2
    assert np.ptp(expected[:, -1]) >= 0.1
    assert np.abs(np.array(got) - expected[:, -1]).max() <= 1e-6


def scorer_graph(scorer) -> bytes:
    """The graph the scorer's session runs (its uint8-input edit of the exported file)."""
    from scoring.onnx_scoring import with_pixel_input

    return with_pixel_input(scorer.onnx_path).SerializeToString()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_the_run_threads_yield_to_the_others_by_the_niceness_asked(model, tmp_path):
    import os
    import threading

    import numpy as np

    seen = {}
    scorer = OnnxScorer(model, cache_dir=tmp_path, threads=2, nice=5)
    real_run = scorer.session.run

    class Recording:
        def run(self, outputs, feed):
            seen[threading.current_thread().name] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            return real_run(outputs, feed)

    scorer.session = Recording()
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    scorer.score_pixels(np.zeros((4, ROWS, COLS, 3), np.uint8))
    assert seen and set(seen.values()) == {min(19, mine + 5)} and not any(n == threading.current_thread().name for n in seen)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_a_niceness_out_of_range_stops_the_service(tmp_path, monkeypatch):
    from service.runtime import Runtime

    monkeypatch.setenv("ORCA_SCORING_NICE", "25")
    with pytest.raises(SystemExit, match="ORCA_SCORING_NICE"):
        Runtime.from_config({"LOCAL_ROOT": str(tmp_path)})
