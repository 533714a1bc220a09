"""`GET /clips/<path>`: the service serves local audio itself, so a local dataset's `audio_url` is a short
http URL a browser's player can fetch (service.clips, service.routes.clips). Over a real HTTP server:
the bytes are the file's, Range is honoured, and everything but an audio file inside the local root
(and the allow-list) is refused."""

from __future__ import annotations

import http.client
import random
import urllib.parse

import numpy as np
import pytest
import requests

from ops_support import Served
from service import create_app
from service.storage import StorageLocator

CLIP = "unlabeled/mp3/orcasoundlab_1594154118.mp3"
TOKEN = {"Authorization": "Bearer s3cret"}


def deep_root(tmp_path):
    """A local root whose own path is longer than the client's VARCHAR(100), as a checkout deep in a home
    folder is."""
    root = tmp_path / ("a-rather-long-folder-name-for-a-checkout-" * 3) / "orca-ml-endpoint" / "local"
    assert len(str(root)) > 100
    root.mkdir(parents=True)
    return root


def audio_bytes(seed: int, size: int = 40_000) -> bytes:
    """Bytes to serve: the route sends files as they are, it never decodes them."""
    return b"ID3\x04\x00" + random.Random(seed).randbytes(size)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clips")
    root = deep_root(tmp)
    (root / "unlabeled" / "mp3").mkdir(parents=True)
    (root / "labeled" / "train" / "calls").mkdir(parents=True)
    (root / CLIP).write_bytes(audio_bytes(0))
    (root / "labeled/train/calls/a.wav").write_bytes(audio_bytes(1, 5000))
    (root / "labeled/train/calls/b.FLAC").write_bytes(audio_bytes(2, 5000))
    (root / "models").mkdir()
    (root / "models/srkw_cnn_0.h5").write_bytes(b"\x89HDF\r\n")
    (root / "unlabeled/mp3/.hidden.mp3").write_bytes(b"x")
    (tmp / "outside.mp3").write_bytes(b"outside")
    (root / "unlabeled/mp3/link.mp3").symlink_to(tmp / "outside.mp3")
    (root / "unlabeled/mp3/model.mp3").symlink_to(root / "models/srkw_cnn_0.h5")
    (root / "unlabeled/mp3/a folder").mkdir()
    (root / "unlabeled/mp3/folder.mp3").mkdir()
    (root / "unlabeled/mp3/a folder/clip #1.mp3").write_bytes(audio_bytes(3, 100))
    server = Served(create_app({"LOCAL_ROOT": str(root), "STATE_DIR": str(tmp / "state")}))
    yield server, root
    server.close()


def get(server, path, **headers):
    return requests.get(server.base + path, headers=headers, timeout=30)


def test_a_clip_plays_back_byte_for_byte_with_its_content_type(served):
    server, root = served
    answer = get(server, f"/clips/{CLIP}")
    assert answer.status_code == 200 and answer.content == (root / CLIP).read_bytes()
    assert answer.headers["Content-Type"] == "audio/mpeg" and answer.headers["Accept-Ranges"] == "bytes"
    assert int(answer.headers["Content-Length"]) == len(answer.content) and answer.headers["ETag"]
    for path, kind in (("labeled/train/calls/a.wav", "audio/wav"), ("labeled/train/calls/b.FLAC", "audio/flac")):
        answer = get(server, f"/clips/{path}")
        assert answer.status_code == 200 and answer.headers["Content-Type"] == kind
        assert answer.content == (root / path).read_bytes()
    quoted = get(server, "/clips/" + urllib.parse.quote("unlabeled/mp3/a folder/clip #1.mp3"))
    assert quoted.status_code == 200 and quoted.content == audio_bytes(3, 100)


@pytest.mark.parametrize("header, start, end", [
    ("bytes=0-0", 0, 1), ("bytes=100-1099", 100, 1100), ("bytes=39000-", 39000, None), ("bytes=-500", -500, None),
    ("bytes=39990-99999", 39990, None),  # an end past the file: up to its last byte
])
def test_a_range_answers_exactly_that_slice(served, header, start, end):
    server, root = served
    data = (root / CLIP).read_bytes()
    answer = get(server, f"/clips/{CLIP}", Range=header)
    expected = data[start:end]
    first = start % len(data)
    assert answer.status_code == 206 and answer.content == expected
    assert answer.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert int(answer.headers["Content-Length"]) == len(expected)
    assert answer.headers["Content-Type"] == "audio/mpeg"


@pytest.mark.parametrize("header", ["bytes=40005-", "bytes=50000-60000", "bytes=-0", "bytes=abc"])
def test_a_range_no_byte_satisfies_is_a_416_naming_the_size(served, header):
    server, root = served
    answer = get(server, f"/clips/{CLIP}", Range=header)
    assert answer.status_code == 416 and "not satisfiable" in answer.json()["error"]
    assert answer.headers["Content-Range"] == f"bytes */{(root / CLIP).stat().st_size}"


def test_head_and_conditional_requests(served):
    server, root = served
    head = requests.head(f"{server.base}/clips/{CLIP}", timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == (root / CLIP).stat().st_size
    assert head.headers["Accept-Ranges"] == "bytes" and head.headers["Content-Type"] == "audio/mpeg"
    again = get(server, f"/clips/{CLIP}", **{"If-None-Match": head.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""


def raw_get(server, path):
    """A request line sent as is (requests and browsers resolve `..` before sending)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server.server_port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path, status, reason", [
    ("/clips/models/srkw_cnn_0.h5", 403, "only audio clips"),
    ("/clips/unlabeled/mp3/.hidden.mp3", 403, "hidden"),
    ("/clips/unlabeled/mp3/link.mp3", 403, "outside the local data root"),
    ("/clips/unlabeled/mp3/model.mp3", 403, "only audio clips"),  # a link named .mp3 to a model
    ("/clips/unlabeled/../../../outside.mp3", 403, "dot"),
    ("/clips/unlabeled/mp3/%2e%2e/%2e%2e/%2e%2e/%2e%2e/outside.mp3", 403, "dot"),
    ("/clips/unlabeled/mp3/orcasoundlab_1.mp3", 404, "not found"),
    ("/clips/unlabeled/mp3/", 403, "empty"),
    ("/clips/unlabeled/mp3/folder.mp3", 404, "not found"),  # a folder, not a file
    ("/clips/unlabeled/mp3/a%00.mp3", 403, "not a path"),
])
def test_only_audio_files_inside_the_root_are_served(served, path, status, reason):
    server, _ = served
    code, body = raw_get(server, path)
    assert code == status and reason in body.decode(), body
    assert b"outside" != body and b"HDF" not in body


def test_the_token_and_the_allow_list_apply(tmp_path):
    root = tmp_path / "root"
    for folder in ("allowed/mp3", "other/mp3"):
        (root / folder).mkdir(parents=True)
        (root / folder / "c.mp3").write_bytes(audio_bytes(4, 1000))
    app = create_app({"LOCAL_ROOT": str(root), "API_TOKEN": "s3cret", "ALLOWED_PREFIXES": f"{root}/allowed/",
                      "STATE_DIR": str(tmp_path / "state")})
    server = Served(app)
    try:
        assert get(server, "/clips/allowed/mp3/c.mp3").status_code == 401
        assert get(server, "/clips/allowed/mp3/c.mp3", **TOKEN).content == audio_bytes(4, 1000)
        refused = get(server, "/clips/other/mp3/c.mp3", **TOKEN)
        assert refused.status_code == 403 and refused.json()["error"].startswith(
            f"clip: read access to {root}/other/mp3/c.mp3 is not allowed")
    finally:
        server.close()


def test_without_local_data_nothing_is_served(tmp_path):
    server = Served(create_app({"LOCAL_ROOT": "", "STATE_DIR": str(tmp_path)}))
    try:
        answer = get(server, f"/clips/{CLIP}")
        assert answer.status_code == 404 and "ORCA_LOCAL_ROOT is empty" in answer.json()["error"]
    finally:
        server.close()


def test_public_urls_of_local_files_are_short_under_the_service_url(tmp_path):
    root = deep_root(tmp_path)
    key = f"{root}/{CLIP}"
    locator = StorageLocator(str(root), service_url="http://127.0.0.1:5001/")
    unlabeled = locator.locate(str(root / "unlabeled") + "/", "unlabeled_url")
    url = unlabeled.storage.public_url(key)
    assert url == f"http://127.0.0.1:5001/clips/{CLIP}" and len(url) <= 100
    # the request's URL when ORCA_PUBLIC_URL is unset; a file outside the served root keeps its file:// URL
    assert StorageLocator(str(root)).serving("https://orca.example.org:8443").locate(
        key, "u").storage.public_url(key) == f"https://orca.example.org:8443/clips/{CLIP}"
    assert StorageLocator(str(root)).locate(key, "u").storage.public_url(key) == f"file://{key}"
    assert StorageLocator(None, service_url="http://h", served_root=str(root / "unlabeled")).locate(
        "/etc/hosts", "u").storage.public_url("/etc/hosts") == "file:///etc/hosts"
    s3 = StorageLocator(str(root), service_url="http://h").locate("s3://orcagsoc/unlabeled_test/", "u")
    assert s3.storage.public_url("unlabeled_test/mp3/x.mp3") == "https://orcagsoc.s3.amazonaws.com/unlabeled_test/mp3/x.mp3"


@pytest.mark.parametrize("url", ["127.0.0.1:5001", "ftp://host", "http://", "http://host/?a=1", "http://host/#x"])
def test_a_malformed_public_url_stops_the_service_naming_the_setting(url):
    with pytest.raises(SystemExit, match="ORCA_PUBLIC_URL"):
        create_app({"LOCAL_ROOT": "", "PUBLIC_URL": url})


def test_the_route_is_listed(served):
    server, _ = served
    listed = requests.get(f"{server.base}/", timeout=30).json()["endpoints"]
    assert listed["/clips/<path:relative>"].startswith("GET (a path under ORCA_LOCAL_ROOT)")


@pytest.mark.parametrize("rows,cols", [(607, 617), (300, 411), (700, 650)])
def test_input_pixels_of_a_picture_cuts_the_rgb_at_pils_nearest_rows_and_columns(rows, cols):
    """numba's loop (numpy pictures, one CPU tensor) gives the bytes of the plain gather, which is PIL's
    NEAREST resize of the RGB (scoring.images.nearest_indices), for the picture's size and others."""
    import torch

    from scoring.clips import input_pixels
    from scoring.images import nearest_indices

    rgba = np.random.default_rng(rows).integers(0, 256, (607, 617, 4), dtype=np.uint8)
    down, across = nearest_indices(617, 607, cols, rows)
    want = np.ascontiguousarray(rgba[..., :3][down][:, across])
    got = input_pixels(rgba, rows, cols)
    assert got.dtype == np.uint8 and got.shape == (rows, cols, 3) and np.array_equal(got, want)
    from_tensor = input_pixels(torch.from_numpy(rgba), rows, cols)
    assert torch.is_tensor(from_tensor) and np.array_equal(from_tensor.numpy(), want)
    batch = input_pixels(torch.from_numpy(np.stack([rgba, rgba[::-1].copy()])), rows, cols)  # torch's gather
    assert np.array_equal(batch[0].numpy(), want)
