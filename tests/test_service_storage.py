"""Storage backends: S3 (moto's in-process mock) and local folders."""

import os

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, NoCredentialsError

from service.errors import AlreadyExists, BadRequest, Forbidden, NotFound, StorageError, StorageUnavailable
from service.storage import LocalStorage, S3Storage, locate, map_s3_error


@pytest.mark.slow  # ~7 s: 1000+ objects put into moto
def test_s3_listing_follows_pagination_past_1000_objects(bucket):
    for i in range(1205):
        bucket.put_object(Bucket="orca", Key=f"unlabeled/spectrograms/clip_{i:05d}.png", Body=b"x" * (i % 7))
    bucket.put_object(Bucket="orca", Key="unlabeled_other/a.png", Body=b"x")
    objects = S3Storage("orca").list("unlabeled/")
    assert len(objects) == 1205
    assert objects[3].size == 3 and objects[3].etag


@pytest.mark.parametrize("url", ["s3://orca/labeled", "s3://orca/labeled/"])
def test_prefix_with_or_without_trailing_slash_lists_the_folder_only(bucket, url):
    bucket.put_object(Bucket="orca", Key="labeled/train/calls/a.png", Body=b"a")
    bucket.put_object(Bucket="orca", Key="labeled_old/train/calls/b.png", Body=b"b")
    location = locate(url, "labeled_url", local_root=None)
    assert location.prefix == "labeled/"
    assert [o.key for o in location.storage.list(location.prefix)] == ["labeled/train/calls/a.png"]


def test_bucket_root_prefix_is_empty(bucket):
    location = locate("s3://orca", "unlabeled_url", local_root=None)
    assert location.prefix == ""


def test_download_writes_the_object(bucket, tmp_path):
    bucket.put_object(Bucket="orca", Key="models/m_0.h5", Body=b"model bytes")
    S3Storage("orca").download("models/m_0.h5", str(tmp_path / "m.h5"), expected_size=11)
    assert (tmp_path / "m.h5").read_bytes() == b"model bytes"


def test_download_of_a_changed_object_fails_without_leaving_a_file(bucket, tmp_path):
    bucket.put_object(Bucket="orca", Key="a.png", Body=b"1234")
    listed = S3Storage("orca").list("")[0]
    bucket.put_object(Bucket="orca", Key="a.png", Body=b"12")  # replaced between listing and download
    with pytest.raises(StorageError, match="incomplete download of s3://orca/a.png: got 2 of 4"):
        S3Storage("orca").download("a.png", str(tmp_path / "a.png"), expected_size=listed.size)
    assert os.listdir(tmp_path) == []


def test_short_stream_raises_storage_error(bucket, tmp_path, monkeypatch):
    bucket.put_object(Bucket="orca", Key="a.png", Body=b"1234")
    storage = S3Storage("orca")
    real = storage.client.get_object

    def short(**kwargs):
        response = real(**kwargs)
        body = response["Body"]
        data = body.read()[:1]

        class Short:
            done = False

            def read(self, n=-1):
                if Short.done:
                    return b""
                Short.done = True
                return data

        response["Body"] = Short()
        return response

    monkeypatch.setattr(storage.client, "get_object", short)
    with pytest.raises(StorageError, match="got 1 of 4"):
        storage.download("a.png", str(tmp_path / "a.png"))
    assert os.listdir(tmp_path) == []


def test_download_of_missing_key_or_bucket_is_not_found(bucket, tmp_path):
    with pytest.raises(NotFound, match="s3://orca/nope.h5"):
        S3Storage("orca").download("nope.h5", str(tmp_path / "x"))
    with pytest.raises(NotFound, match="s3://no-such-bucket/m.h5"):
        S3Storage("no-such-bucket").download("m.h5", str(tmp_path / "x"))
    with pytest.raises(NotFound):
        S3Storage("no-such-bucket").list("models/")
    assert os.listdir(tmp_path) == []


def test_upload_never_overwrites(bucket, tmp_path):
    source = tmp_path / "new.h5"
    source.write_bytes(b"new")
    bucket.put_object(Bucket="orca", Key="models/m_1.h5", Body=b"old")
    storage = S3Storage("orca")
    with pytest.raises(AlreadyExists):
        storage.upload(str(source), "models/m_1.h5")
    assert bucket.get_object(Bucket="orca", Key="models/m_1.h5")["Body"].read() == b"old"
    storage.upload(str(source), "models/m_2.h5")
    assert storage.exists("models/m_2.h5") and not storage.exists("models/m_3.h5")


def test_conditional_put_refuses_an_object_created_after_the_existence_check(bucket, tmp_path, monkeypatch):
    source = tmp_path / "new.h5"
    source.write_bytes(b"new")
    storage = S3Storage("orca")
    monkeypatch.setattr(storage, "exists", lambda key: False)  # the race: check passed, then someone wrote
    bucket.put_object(Bucket="orca", Key="models/m_1.h5", Body=b"theirs")
    with pytest.raises(AlreadyExists):
        storage.upload(str(source), "models/m_1.h5")
    assert bucket.get_object(Bucket="orca", Key="models/m_1.h5")["Body"].read() == b"theirs"


def _client_error(code, status):
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


@pytest.mark.parametrize("error, kind", [
    (_client_error("NoSuchKey", 404), NotFound),
    (_client_error("NoSuchBucket", 404), NotFound),
    (_client_error("404", 404), NotFound),
    (_client_error("AccessDenied", 403), Forbidden),
    (_client_error("403", 403), Forbidden),
    (_client_error("InvalidAccessKeyId", 403), Forbidden),
    (_client_error("InternalError", 500), StorageError),
    (_client_error("ServiceUnavailable", 503), StorageUnavailable),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), StorageUnavailable),
    (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), StorageUnavailable),
    (NoCredentialsError(), StorageUnavailable),
])
def test_boto_errors_map_to_http_statuses(error, kind):
    mapped = map_s3_error(error, "s3://orca/models/m_0.h5")
    assert type(mapped) is kind
    assert "s3://orca/models/m_0.h5" in mapped.message
    assert {NotFound: 404, Forbidden: 403, StorageError: 502, StorageUnavailable: 503}[kind] == mapped.status


def test_unreachable_endpoint_is_unavailable(aws_env, monkeypatch, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(StorageUnavailable, match="cannot reach"):
        S3Storage("orca").list("models/")


# ------------------------------------------------------------------------------------------ local

def test_local_paths_and_file_urls_resolve_to_the_same_key(tmp_path):
    (tmp_path / "m").mkdir()
    plain = locate(str(tmp_path / "m") + "/", "labeled_url", local_root=str(tmp_path))
    url = locate((tmp_path / "m").as_uri(), "labeled_url", local_root=str(tmp_path))
    assert plain.prefix == url.prefix == str(tmp_path / "m") + "/"
    assert isinstance(plain.storage, LocalStorage)


def test_local_path_outside_the_root_is_forbidden(tmp_path):
    with pytest.raises(Forbidden, match="outside"):
        locate(str(tmp_path / ".." / "elsewhere"), "model_url", local_root=str(tmp_path))


def test_local_paths_can_be_disabled(tmp_path):
    with pytest.raises(BadRequest, match="model_url: local paths are disabled"):
        locate(str(tmp_path), "model_url", local_root="")


@pytest.mark.parametrize("url", ["http://example.com/m.h5", "gs://b/m.h5", "s3:///m.h5"])
def test_unsupported_urls_are_bad_requests_naming_the_parameter(url):
    with pytest.raises(BadRequest, match="^model_url"):
        locate(url, "model_url", local_root=None)


def test_local_listing_download_and_exclusive_upload(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "a.png").write_bytes(b"abc")
    (tmp_path / "d2").mkdir()
    (tmp_path / "d2" / "b.png").write_bytes(b"b")
    storage = LocalStorage()
    prefix = str(tmp_path / "d") + "/"
    assert [(o.key, o.size) for o in storage.list(prefix)] == [(prefix + "sub/a.png", 3)]
    assert storage.list(str(tmp_path / "missing") + "/") == []
    storage.download(prefix + "sub/a.png", str(tmp_path / "copy.png"), expected_size=3)
    assert (tmp_path / "copy.png").read_bytes() == b"abc"
    with pytest.raises(StorageError):
        storage.download(prefix + "sub/a.png", str(tmp_path / "copy2.png"), expected_size=5)
    assert not (tmp_path / "copy2.png").exists()
    with pytest.raises(NotFound):
        storage.download(prefix + "nope.png", str(tmp_path / "x"))
    with pytest.raises(AlreadyExists):
        storage.upload(str(tmp_path / "copy.png"), prefix + "sub/a.png")
    storage.upload(str(tmp_path / "d2" / "b.png"), prefix + "new/b.png")
    assert (tmp_path / "d" / "sub" / "a.png").read_bytes() == b"abc"
    assert (tmp_path / "d" / "new" / "b.png").read_bytes() == b"b"
    assert sorted(os.listdir(tmp_path / "d" / "new")) == ["b.png"]  # no temporary files left
