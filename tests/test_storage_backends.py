"""Storage by URL scheme: the backends' declarations (schemes, public URL, conditional writes), the
public base of `audio_url` (ORCA_PUBLIC_BASE_URL), and a server without conditional writes refused
unless ORCA_ALLOW_UNCONDITIONAL_WRITES=1. boto3 against moto: the in-process mock, then moto's server
over HTTP behind the real service.

A server without conditional writes is moto answering, as such servers do, `501 NotImplemented` to
a PutObject that carries `If-None-Match` (a botocore before-send handler installed through
`S3Connector(on_client=…)`, the factory's way to inject faults); every other request reaches moto."""

from __future__ import annotations

import logging
import shutil
import urllib.parse
import urllib.request

import torch  # noqa: F401  (before anything may import TensorFlow)
import pytest
from botocore.awsrequest import AWSResponse

from ops_support import COLS, ROWS, Served, upload_stack
from service import create_app
from service.errors import AlreadyExists, BadRequest, ConditionalWritesUnsupported, StorageError
from service.runtime import Runtime
from service.storage import (BACKENDS, Location, LocalStorage, ObjectInfo, S3Connector, S3Storage, Storage,
                             StorageLocator, locate)
from service.versions import publish_new_version

SETTING = "ORCA_ALLOW_UNCONDITIONAL_WRITES"


class NoConditionalWrites:
    """Installed on a client: answers 501 NotImplemented to every PutObject with `If-None-Match`,
    which therefore never reaches the store, and records every request it sees. Against moto's server
    it answers at botocore's `before-send` (botocore parses the XML error as it would a server's);
    under the in-process `mock_aws`, whose own before-send handler stores the object whatever another
    handler answers, it answers at `before-call`, before the request is built."""

    ERROR = {"Code": "NotImplemented", "Message": "A header you provided implies functionality that is not implemented",
             "Header": "If-None-Match"}

    def __init__(self, in_process: bool = False):
        self.in_process = in_process
        self.seen: list[tuple[str, str, bool]] = []  # (method, path, had If-None-Match)

    def install(self, client):
        if self.in_process:
            client.meta.events.register("before-call.s3", self._before_call)
        else:
            client.meta.events.register("before-send.s3", self._before_send)

    def _before_call(self, params, model, **kwargs):
        conditional = "If-None-Match" in params.get("headers", {})
        self.seen.append((params["method"], params["url_path"], conditional))
        if model.name == "PutObject" and conditional:
            return (AWSResponse(params["url_path"], 501, {}, None),
                    {"Error": dict(self.ERROR), "ResponseMetadata": {"HTTPStatusCode": 501}})
        return None

    def _before_send(self, request, **kwargs):
        conditional = "If-None-Match" in request.headers
        self.seen.append((request.method, urllib.parse.urlsplit(request.url).path, conditional))
        if not (request.method == "PUT" and conditional):
            return None
        body = ('<?xml version="1.0" encoding="UTF-8"?><Error>'
                + "".join(f"<{k}>{v}</{k}>" for k, v in self.ERROR.items()) + "</Error>").encode()

        class Raw:
            def stream(self, **_):
                yield body

        return AWSResponse(request.url, 501, {"Content-Type": "application/xml"}, Raw())

    def puts(self):
        return [(path, conditional) for method, path, conditional in self.seen if method == "PUT"]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "new.h5"
    path.write_bytes(b"new version")
    return str(path)


def _body(client, key, bucket="orca"):
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


# --------------------------------------------------------------------------- conditional writes, in process

def test_a_server_that_writes_conditionally_is_used_conditionally(bucket, source):
    storage = S3Storage("orca", S3Connector())
    assert storage.conditional_writes and storage.connector.conditional_writes is None
    storage.upload(source, "models/m_1.h5")
    assert storage.connector.conditional_writes is True and _body(bucket, "models/m_1.h5") == b"new version"


def test_a_server_without_conditional_writes_gets_no_write_and_a_501_naming_the_setting(bucket, source):
    faults = NoConditionalWrites(in_process=True)
    storage = S3Storage("orca", S3Connector(on_client=faults.install))
    with pytest.raises(ConditionalWritesUnsupported) as refused:
        storage.upload(source, "models/m_1.h5")
    assert refused.value.status == 501 and isinstance(refused.value, StorageError)
    assert SETTING in refused.value.message and "s3://orca/models/m_1.h5" in refused.value.message
    assert not storage.exists("models/m_1.h5")
    assert [(path.endswith("models/m_1.h5"), conditional) for path, conditional in faults.puts()] == [(True, True)]
    assert storage.connector.conditional_writes is False and not storage.conditional_writes
    # remembered: the next write is refused before any PUT, and so is the check before a training
    before = len(faults.puts())
    with pytest.raises(ConditionalWritesUnsupported):
        storage.upload(source, "models/m_2.h5")
    with pytest.raises(ConditionalWritesUnsupported, match=SETTING):
        storage.check_publishable("s3://orca/models/m_2.h5")
    assert len(faults.puts()) == before and not storage.exists("models/m_2.h5")


def test_publishing_a_version_there_refuses_at_once_instead_of_trying_other_names(bucket, source):
    faults = NoConditionalWrites(in_process=True)
    model = locate("s3://orca/models/m_0.h5", "model_url", local_root=None, s3=S3Connector(on_client=faults.install))
    with pytest.raises(ConditionalWritesUnsupported, match=SETTING):
        publish_new_version(model, source)
    assert len(faults.puts()) == 1
    assert bucket.list_objects_v2(Bucket="orca").get("KeyCount", 0) == 0


def test_allowed_unconditional_writes_check_first_never_replace_and_are_logged_once(bucket, source, caplog):
    faults = NoConditionalWrites(in_process=True)
    bucket.put_object(Bucket="orca", Key="models/m_1.h5", Body=b"theirs")
    model = locate("s3://orca/models/m_0.h5", "model_url", local_root=None, s3=S3Connector(on_client=faults.install),
                   allow_unconditional_writes=True)
    with caplog.at_level(logging.WARNING, logger="service.storage"):
        written = publish_new_version(model, source)
        with pytest.raises(AlreadyExists):
            model.storage.upload(source, "models/m_1.h5")
        second = publish_new_version(model, source)
    assert (written.key, second.key) == ("models/m_2.h5", "models/m_3.h5")
    assert _body(bucket, "models/m_1.h5") == b"theirs"
    assert _body(bucket, "models/m_2.h5") == _body(bucket, "models/m_3.h5") == b"new version"
    # tried conditionally once; after the server's NotImplemented, plain PUTs
    assert [conditional for _, conditional in faults.puts()] == [True, False, False]
    warnings = [r for r in caplog.records if SETTING in r.getMessage()]
    assert len(warnings) == 1 and "does not support conditional writes" in warnings[0].getMessage()


def test_local_folders_write_conditionally(tmp_path, source):
    model = locate(str(tmp_path / "m_0.h5"), "model_url", local_root=str(tmp_path))
    assert model.storage.conditional_writes
    (tmp_path / "m_1.h5").write_bytes(b"theirs")
    assert publish_new_version(model, source).key.endswith("/m_2.h5")
    assert (tmp_path / "m_1.h5").read_bytes() == b"theirs"


# ------------------------------------------------------------------------------------------ public URLs

@pytest.mark.parametrize("base, expected", [
    (None, "https://orcagsoc.s3.amazonaws.com/unlabeled%20test/mp3/orcasoundlab_1594154118.mp3"),
    ("http://minio.example.org:9000/{bucket}", "http://minio.example.org:9000/orcagsoc/unlabeled%20test/mp3/"
                                               "orcasoundlab_1594154118.mp3"),
    ("https://{bucket}.storage.example.org/", "https://orcagsoc.storage.example.org/unlabeled%20test/mp3/"
                                              "orcasoundlab_1594154118.mp3"),
    ("https://audio.example.org/orca", "https://audio.example.org/orca/unlabeled%20test/mp3/"
                                       "orcasoundlab_1594154118.mp3"),
])
def test_public_url_is_the_originals_unless_a_base_is_set(base, expected):
    location = locate("s3://orcagsoc/unlabeled test/", "unlabeled_url", local_root="", public_base=base)
    assert location.storage.public_url(location.prefix + "mp3/orcasoundlab_1594154118.mp3") == expected


@pytest.mark.parametrize("base", ["minio:9000/{bucket}", "ftp://host/{bucket}", "http:///x",
                                  "http://host/{bucket}/{key}", "http://host/?a=1"])
def test_a_malformed_public_base_stops_the_service_naming_the_setting(base):
    with pytest.raises(SystemExit, match="ORCA_PUBLIC_BASE_URL"):
        Runtime.from_config({"LOCAL_ROOT": "", "PUBLIC_BASE_URL": base})


def test_local_datasets_answer_file_urls_whatever_the_base(tmp_path):
    location = locate(str(tmp_path) + "/", "unlabeled_url", local_root=str(tmp_path),
                      public_base="http://minio:9000/{bucket}")
    assert location.storage.public_url(location.prefix + "mp3/a.mp3") == f"file://{tmp_path}/mp3/a.mp3"


# ------------------------------------------------------------------------------------- backends by scheme

class MemoryStorage(Storage):
    """A store added the way docs/operations.md says: one class declaring its scheme, its public URL
    and whether it writes conditionally."""

    schemes = ("mem",)
    url_forms = "mem://name/key"
    conditional_writes = True

    def __init__(self, name):
        self.name, self.objects = name, {}

    @classmethod
    def resolve(cls, parsed, url, param, locator):
        if not parsed.netloc:
            raise BadRequest(f"{param}: no store name in {url!r}")
        return Location(cls(parsed.netloc), parsed.path.lstrip("/"), url)

    def list(self, prefix):
        return [ObjectInfo(k, len(v)) for k, v in sorted(self.objects.items()) if k.startswith(prefix)]

    def download(self, key, local_path, expected_size=None):
        with open(local_path, "wb") as f:
            f.write(self.objects[key])

    def upload(self, local_path, key):
        if key in self.objects:
            raise AlreadyExists(key)
        with open(local_path, "rb") as f:
            self.objects[key] = f.read()

    def exists(self, key):
        return key in self.objects

    def url(self, key):
        return f"mem://{self.name}/{key}"

    def public_url(self, key):
        return f"https://mem.example.org/{self.name}/{key}"


def test_a_backend_is_chosen_by_the_scheme_it_declares(tmp_path, source):
    locator = StorageLocator(str(tmp_path), backends=BACKENDS + (MemoryStorage,))
    model = locator.locate("mem://pool/models/m_0.h5", "model_url")
    assert isinstance(model.storage, MemoryStorage) and model.key == "models/m_0.h5"
    assert publish_new_version(model, source).url == "mem://pool/models/m_1.h5"
    assert model.storage.public_url("u/mp3/a.mp3") == "https://mem.example.org/pool/u/mp3/a.mp3"
    assert isinstance(locator.locate("s3://b/k", "model_url").storage, S3Storage)
    assert isinstance(locator.locate(str(tmp_path / "k"), "model_url").storage, LocalStorage)
    assert isinstance(locator.locate((tmp_path / "k").as_uri(), "model_url").storage, LocalStorage)
    with pytest.raises(BadRequest, match=r"^model_url: unsupported URL scheme 'gs'.*mem://name/key"):
        locator.locate("gs://b/k", "model_url")
    with pytest.raises(BadRequest, match=r"^model_url: unsupported URL scheme 'mem'.*s3://bucket/key"):
        StorageLocator(str(tmp_path)).locate("mem://pool/m_0.h5", "model_url")  # not a default backend


def test_two_backends_may_not_claim_one_scheme():
    class OtherS3(MemoryStorage):
        schemes = ("s3",)

    with pytest.raises(ValueError, match="'s3' is served by both S3Storage and OtherS3"):
        StorageLocator(None, backends=BACKENDS + (OtherS3,))


# ------------------------------------------------------------------------- the service over HTTP, moto server

@pytest.fixture
def stack_bucket(s3_env, srkw_h5):
    """The shared moto server with this test's bucket: models/srkw_cnn_0.h5, labeled/, unlabeled/
    (three spectrograms and their mp3s)."""
    client = s3_env.client()
    upload_stack(client, s3_env.bucket, srkw_h5)
    for i in range(3):
        client.put_object(Bucket=s3_env.bucket, Key=f"unlabeled/mp3/orcasoundlab_{1594154118 + 3 * i}.mp3",
                          Body=f"ID3 clip {i}".encode(), ACL="public-read")  # as the original's bucket
    return s3_env


def _served(tmp_path, config=None, **parts):
    cache = tmp_path / "cache"
    return Served(create_app({"LOCAL_ROOT": "", "DEVICE": "cpu", "CACHE_DIR": str(cache),
                              "STATE_DIR": str(tmp_path / "state"), **(config or {})}, **parts))


def _models(env):
    pages = env.client().get_paginator("list_objects_v2").paginate(Bucket=env.bucket, Prefix="models/")
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", ())}


@pytest.mark.slow  # ~4 s: two /predict on the small model
def test_predict_answers_the_public_base_against_moto_and_the_originals_url_without_it(stack_bucket, tmp_path):
    env = stack_bucket
    predict = {"model_url": f"s3://{env.bucket}/models/srkw_cnn_0.h5", "unlabeled_url": f"s3://{env.bucket}/unlabeled/",
               "img_width": ROWS, "img_height": COLS}
    custom = _served(tmp_path, {"PUBLIC_BASE_URL": env.endpoint + "/{bucket}"})  # moto answers path style
    try:
        status, items = custom.get("/predict", **predict)
    finally:
        custom.close()
    assert status == 200, items
    stems = [f"orcasoundlab_{1594154118 + 3 * i}" for i in range(3)]
    assert [i["audio_url"] for i in items] == [f"{env.endpoint}/{env.bucket}/unlabeled/mp3/{s}.mp3" for s in stems]
    for i, item in enumerate(items):  # the URL fetches the clip's audio from the store, over HTTP
        with urllib.request.urlopen(item["audio_url"], timeout=30) as response:
            assert response.read() == f"ID3 clip {i}".encode()

    default = _served(tmp_path)
    try:
        status, original = default.get("/predict", **predict)
    finally:
        default.close()
    assert status == 200, original
    assert [i["audio_url"] for i in original] == [f"https://{env.bucket}.s3.amazonaws.com/unlabeled/mp3/{s}.mp3"
                                                  for s in stems]
    assert [i["predicted_value"] for i in original] == [i["predicted_value"] for i in items]


@pytest.mark.slow  # ~8 s: two trainings of the small model
def test_train_refuses_to_publish_on_a_server_without_conditional_writes_unless_allowed(stack_bucket, tmp_path):
    env = stack_bucket
    train = {"model_url": f"s3://{env.bucket}/models/srkw_cnn_0.h5", "labeled_url": f"s3://{env.bucket}/labeled/",
             "img_width": ROWS, "img_height": COLS, "epochs": 1, "seed": 0}
    before = _models(env)
    faults = NoConditionalWrites()
    refusing = _served(tmp_path, s3=S3Connector(attempts=2, on_client=faults.install))
    try:
        status, body = refusing.get("/train", **train)
        assert status == 501, body
        assert SETTING in body["error"] and f"s3://{env.bucket}/models/srkw_cnn_1.h5" in body["error"]
        assert _models(env) == before  # nothing written, nothing replaced
        assert [conditional for _, conditional in faults.puts()] == [True]
        # the service remembers: the next /train is refused before it downloads or trains anything
        seen = len(faults.seen)
        status, again = refusing.get("/train", **train)
        assert status == 501 and SETTING in again["error"], again
        assert faults.seen[seen:] == [] and _models(env) == before
    finally:
        refusing.close()

    env.client().put_object(Bucket=env.bucket, Key="models/srkw_cnn_1.h5", Body=b"theirs")
    theirs = _models(env)["models/srkw_cnn_1.h5"]
    faults = NoConditionalWrites()
    allowed = _served(tmp_path, {"ALLOW_UNCONDITIONAL_WRITES": 1}, s3=S3Connector(attempts=2, on_client=faults.install))
    try:
        status, body = allowed.get("/train", **train)
    finally:
        allowed.close()
    assert status == 200, body
    assert body["model_url"] == f"s3://{env.bucket}/models/srkw_cnn_2.h5"
    after = _models(env)
    assert after["models/srkw_cnn_0.h5"] == before["models/srkw_cnn_0.h5"] and after["models/srkw_cnn_1.h5"] == theirs
    assert {"models/srkw_cnn_2.h5", "models/srkw_cnn_2.json", "models/srkw_cnn_2.png"} <= set(after)
    assert [conditional for _, conditional in faults.puts()][0] is True  # tried, then plain PUTs after the check
    local = tmp_path / "written.h5"
    env.client().download_file(env.bucket, "models/srkw_cnn_2.h5", str(local))
    assert local.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_orca_score_takes_the_same_settings_for_its_rows_and_its_writes(stack_bucket, tmp_path):
    """`orca score` (batch_scoring.run.prepare, before Ray): the rows' audio_url follows the public
    base, and the plan under --out is written by a store that knows whether it may write unconditionally."""
    from batch_scoring.parts import PLAN_NAME
    from batch_scoring.run import prepare
    from service.predict import clip_item

    env = stack_bucket
    base = "https://audio.example.org/{bucket}"
    ready = prepare(f"s3://{env.bucket}/models/srkw_cnn_0.h5", f"s3://{env.bucket}/unlabeled/",
                    f"s3://{env.bucket}/scores/", rows=ROWS, cols=COLS, public_base=base,
                    allow_unconditional_writes=True)
    assert clip_item(ready.source, "orcasoundlab_1594154118.png")["audio_url"] == \
        f"https://audio.example.org/{env.bucket}/unlabeled/mp3/orcasoundlab_1594154118.mp3"
    assert ready.dest.storage.allow_unconditional_writes and ready.dest.storage.exists("scores/" + PLAN_NAME)
    assert not prepare(f"s3://{env.bucket}/models/srkw_cnn_0.h5", f"s3://{env.bucket}/unlabeled/",
                       f"s3://{env.bucket}/scores/", rows=ROWS, cols=COLS).dest.storage.allow_unconditional_writes
