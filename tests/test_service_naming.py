"""Version names, node names and clip timestamps, query parameters."""

import threading

import pytest

from service.errors import BadRequest
from service.nodes import LOCATIONS, describe_clip, http_date, parse_stem
from service.params import Limits, predict_params, train_params
from service.storage import locate
from service.versions import next_version_name, publish_new_version, split_version


@pytest.mark.parametrize("name, expected", [
    ("srkw_cnn_0.h5", "srkw_cnn_1.h5"),
    ("srkw_cnn_9.h5", "srkw_cnn_10.h5"),
    ("srkw_cnn_41.h5", "srkw_cnn_42.h5"),
    ("srkw_cnn.h5", "srkw_cnn_1.h5"),
    ("model.h5", "model_1.h5"),
    ("model_v2.h5", "model_v2_1.h5"),
    ("model_3.hdf5", "model_4.hdf5"),
    ("model", "model_1.h5"),
])
def test_next_version_name(name, expected):
    assert next_version_name(name) == expected


def test_split_version():
    assert split_version("srkw_cnn_3.h5") == ("srkw_cnn", 3, ".h5")
    assert split_version("srkw.h5") == ("srkw", None, ".h5")


def test_publish_skips_taken_versions_and_keeps_them(tmp_path):
    (tmp_path / "srkw_cnn_0.h5").write_bytes(b"v0")
    (tmp_path / "srkw_cnn_1.h5").write_bytes(b"v1")
    (tmp_path / "srkw_cnn_2.h5").write_bytes(b"v2")
    new = tmp_path / "new.h5"
    new.write_bytes(b"new")
    model = locate(str(tmp_path / "srkw_cnn_0.h5"), "model_url", local_root=str(tmp_path))
    written = publish_new_version(model, str(new))
    assert written.url == str(tmp_path / "srkw_cnn_3.h5")
    assert [(tmp_path / f"srkw_cnn_{i}.h5").read_bytes() for i in range(4)] == [b"v0", b"v1", b"v2", b"new"]


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    (tmp_path / "m_0.h5").write_bytes(b"v0")
    model = locate(str(tmp_path / "m_0.h5"), "model_url", local_root=None)
    results, sources = [], []
    for i in range(8):
        source = tmp_path / f"src{i}"
        source.write_bytes(str(i).encode())
        sources.append(str(source))
    threads = [threading.Thread(target=lambda s=s: results.append(publish_new_version(model, s).url))
               for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(str(tmp_path / f"m_{i}.h5") for i in range(1, 9))
    assert sorted((tmp_path / f"m_{i}.h5").read_bytes() for i in range(1, 9)) == sorted(
        str(i).encode() for i in range(8))


def test_sibling_keeps_the_clients_spelling():
    model = locate("s3://orcagsoc/models/srkw_cnn_0.h5", "model_url", local_root=None)
    assert model.sibling("srkw_cnn_1.h5").url == "s3://orcagsoc/models/srkw_cnn_1.h5"
    assert model.sibling("srkw_cnn_1.h5").key == "models/srkw_cnn_1.h5"
    top = locate("s3://orcagsoc/srkw_cnn_0.h5", "model_url", local_root=None)
    assert (top.sibling("srkw_cnn_1.h5").url, top.sibling("srkw_cnn_1.h5").key) == (
        "s3://orcagsoc/srkw_cnn_1.h5", "srkw_cnn_1.h5")


# ---------------------------------------------------------------------------------------- nodes

def test_orcasoundlab_clip_is_haro_strait_with_an_http_date():
    assert describe_clip("orcasoundlab_1594154118") == {
        "duration": 3, "location": "Haro Strait", "timestamp": "Tue, 07 Jul 2020 20:35:18 GMT"}


NODES = [  # Orcasound's hydrophones and the place names the client shows, written out here
    ("orcasoundlab", "Haro Strait"), ("port_townsend", "Port Townsend"), ("bush_point", "Bush Point"),
    ("sunset_bay", "Sunset Bay"), ("andrews_bay", "Andrews Bay"), ("north_sjc", "North San Juan Channel"),
    ("mast_center", "Mast Center"), ("point_robinson", "Point Robinson"),
]


@pytest.mark.parametrize("node, location", NODES)
def test_every_known_node_has_its_location(node, location):
    assert parse_stem(f"{node}_1594154118") == (node, 1594154118)
    assert describe_clip(f"{node}_1594154118")["location"] == location


def test_the_nodes_known_are_these_eight():
    assert sorted(LOCATIONS) == sorted(node for node, _ in NODES)


def test_unknown_node_is_reported_by_its_name():
    assert describe_clip("new_hydrophone_1594154118")["location"] == "new_hydrophone"


@pytest.mark.parametrize("stem", ["extracted_calls1", "orcasoundlab", "1594154118", "orcasoundlab_",
                                  "orcasoundlab_12ab", "_1594154118", "orcasoundlab_999999999999999"])
def test_stem_that_is_not_node_and_seconds_has_null_location_and_timestamp(stem):
    clip = describe_clip(stem)
    assert clip["location"] is None and clip["timestamp"] is None and clip["duration"] == 3


def test_http_date_is_utc():
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


# ----------------------------------------------------------------------------------- parameters

GOOD_TRAIN = {"model_url": "s3://b/m_0.h5", "labeled_url": "s3://b/l/", "img_width": "607",
              "img_height": "617", "epochs": "1"}


def test_train_params_map_width_to_rows_and_height_to_cols():
    p = train_params(GOOD_TRAIN, Limits())
    assert (p.rows, p.cols, p.epochs, p.seed) == (607, 617, 1, None)
    assert train_params({**GOOD_TRAIN, "seed": "7"}, Limits()).seed == 7


@pytest.mark.parametrize("missing", sorted(GOOD_TRAIN))
def test_each_missing_train_parameter_is_named(missing):
    args = {k: v for k, v in GOOD_TRAIN.items() if k != missing}
    with pytest.raises(BadRequest, match=f"missing parameter: {missing}"):
        train_params(args, Limits())


@pytest.mark.parametrize("name, value", [("img_width", "abc"), ("img_width", "0"), ("img_height", "-3"),
                                         ("img_height", "4097"), ("epochs", "0"), ("epochs", "1001"),
                                         ("epochs", "1.5"), ("seed", "x"), ("model_url", " ")])
def test_malformed_train_parameter_is_named(name, value):
    with pytest.raises(BadRequest, match=name):
        train_params({**GOOD_TRAIN, name: value}, Limits())


def test_limits_are_configurable():
    with pytest.raises(BadRequest, match="epochs must be between 1 and 5"):
        train_params({**GOOD_TRAIN, "epochs": "6"}, Limits(max_epochs=5))


def test_predict_ignores_unused_parameters():
    p = predict_params({"model_url": "m", "unlabeled_url": "u", "img_width": "2", "img_height": "3",
                        "epochs": "bogus"}, Limits())
    assert (p.rows, p.cols) == (2, 3)
