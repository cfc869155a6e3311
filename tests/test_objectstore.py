"""One contract, run against every object store backend: a local directory and S3 (moto on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentshards import InvalidReplica
from agentshards._replication.objectstore import ObjectNotFound, ObjectStore, store_for
from agentshards._replication.replica import parse_replica


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return store_for(parse_replica(str(tmp_path / "replica")), {})
    env = request.getfixturevalue("s3_env")
    bucket = request.getfixturevalue("bucket")
    return store_for(parse_replica(f"s3://{bucket}/prefix", env), env)


def test_put_get_overwrite(store: ObjectStore) -> None:
    store.check()
    store.put("prefix/manifest/a.json", b"one")
    assert store.get("prefix/manifest/a.json") == b"one"
    store.put("prefix/manifest/a.json", b"two")
    assert store.get("prefix/manifest/a.json") == b"two"


def test_missing_key_raises_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("prefix/nothing-here")


def test_list_is_sorted_and_prefix_scoped(store: ObjectStore) -> None:
    assert store.list("prefix/manifest/") == []
    for key in ("prefix/manifest/b.json", "prefix/manifest/a.json", "prefix/agents/a/x.ltx"):
        store.put(key, b"x")
    assert store.list("prefix/manifest/") == ["prefix/manifest/a.json", "prefix/manifest/b.json"]


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("prefix/k", b"v")
    store.delete("prefix/k")
    store.delete("prefix/k")
    with pytest.raises(ObjectNotFound):
        store.get("prefix/k")


def test_delete_many_deletes_those_keys_only_missing_ones_included(store: ObjectStore) -> None:
    keys = [f"prefix/old/{i:04d}" for i in range(1005)]  # past one request's 1,000 keys on S3
    for key in keys[:3] + keys[-3:]:
        store.put(key, b"v")
    store.put("prefix/keep", b"k")
    store.delete_many(keys)
    assert store.list("prefix/") == ["prefix/keep"]
    store.delete_many([])


def test_delete_many_falls_back_to_one_by_one_on_a_server_without_batch_delete(
        s3_env: dict[str, str], bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    store = store_for(parse_replica(f"s3://{bucket}/prefix", s3_env), s3_env)
    for key in ("prefix/a", "prefix/b", "prefix/keep"):
        store.put(key, b"v")

    def refused(**_kwargs: object) -> None:  # as an S3-compatible server without DeleteObjects answers
        raise ClientError({"Error": {"Code": "NotImplemented", "Message": "not implemented"}}, "DeleteObjects")

    monkeypatch.setattr(store._client, "delete_objects", refused)  # type: ignore[attr-defined]
    store.delete_many(["prefix/a", "prefix/b"])
    assert store.list("prefix/") == ["prefix/keep"]


def test_missing_bucket_is_a_clear_error(s3_env: dict[str, str]) -> None:
    with pytest.raises(InvalidReplica, match="create the bucket"):
        store_for(parse_replica("s3://no-such-bucket-here/x", s3_env), s3_env).check()


def test_unreachable_endpoint_is_a_clear_error_not_a_hang(s3_env: dict[str, str]) -> None:
    env = dict(s3_env, AWS_ENDPOINT_URL_S3="http://127.0.0.1:9")
    with pytest.raises(InvalidReplica, match="cannot reach"):
        store_for(parse_replica("s3://bucket-x/y", env), env).check()


@pytest.mark.parametrize("url", ["", "ftp://x/y", "s3://UPPER/x", "s3://ab", "s3://bucket/../x",
                                 "s3://key:secret@bucket/x", "s3://bucket/x?endpoint=http://evil", "file://host/x",
                                 "s3://bucket/a b"])
def test_malformed_replica_urls(url: str) -> None:
    with pytest.raises(InvalidReplica) as info:
        parse_replica(url, {})
    assert "hint:" in str(info.value)


def test_s3_settings_come_from_the_standard_environment() -> None:
    target = parse_replica("s3://my-bucket/fleets/research", {"AWS_ENDPOINT_URL": "http://127.0.0.1:1234",
                                                               "AWS_DEFAULT_REGION": "eu-west-1"})
    assert (target.bucket, target.prefix, target.endpoint, target.region) == (
        "my-bucket", "fleets/research", "http://127.0.0.1:1234", "eu-west-1")
    assert target.litestream_url("a1") == (
        "s3://my-bucket/fleets/research/agents/a1?endpoint=http://127.0.0.1:1234&region=eu-west-1")
    assert target.manifest_key("a1") == "fleets/research/manifest/a1.json"


def test_metadata_travels_with_the_object(store: ObjectStore) -> None:
    import hashlib

    data = b"archived shard bytes" * 100
    store.put("prefix/archive/a.db", data, metadata={"agent-id": "a", "sha256": hashlib.sha256(data).hexdigest()},
              sha256=hashlib.sha256(data).digest())
    got, meta = store.get_with_metadata("prefix/archive/a.db")
    assert got == data and meta["agent-id"] == "a" and meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert store.list("prefix/archive/") == ["prefix/archive/a.db"]  # no sidecar shows up as an object


def test_put_if_is_a_compare_and_swap(store: ObjectStore) -> None:
    first = store.put_if("prefix/lease.json", b"node-1", None)
    assert first is not None
    assert store.put_if("prefix/lease.json", b"node-2", None) is None  # exists: If-None-Match fails
    data, etag = store.get_etag("prefix/lease.json")
    assert (data, etag) == (b"node-1", first)
    second = store.put_if("prefix/lease.json", b"node-1 renewed", etag)
    assert second is not None and second != first
    assert store.put_if("prefix/lease.json", b"stale writer", etag) is None  # If-Match on an old ETag fails
    assert store.get("prefix/lease.json") == b"node-1 renewed"


def test_a_profiles_region_is_not_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without AWS_REGION or ?region=, the region of the user's AWS profile applies, not a forced us-east-1."""
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = eu-west-2\n")
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    store = store_for(parse_replica("s3://bucket/prefix", env), env)
    assert store._client.meta.region_name == "eu-west-2"  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", ["s3://AKIAEXAMPLEKEY:topsecret@bucket/x", "ftp://AKIAEXAMPLEKEY:topsecret@host/x",
                                 "s3://AKIAEXAMPLEKEY:topsecret@Bad_Bucket/x"])
def test_errors_never_echo_credentials_from_a_url(url: str) -> None:
    with pytest.raises(InvalidReplica) as info:
        parse_replica(url, {})
    assert "topsecret" not in str(info.value) and "AKIAEXAMPLEKEY" not in str(info.value)


def test_put_if_matching_a_key_that_is_gone_fails_the_condition(store: ObjectStore) -> None:
    """S3 answers If-Match on a missing key with 404 NoSuchKey: to a compare-and-swap that is a failed
    condition (a lease deleted under its holder is lost), not an error."""
    etag = store.put_if("prefix/lease.json", b"node-1", None)
    store.delete("prefix/lease.json")
    assert store.put_if("prefix/lease.json", b"node-1 renewed", etag) is None
    with pytest.raises(ObjectNotFound):
        store.get("prefix/lease.json")


def test_the_conditional_write_probe_passes_on_every_backend(store: ObjectStore, tmp_path: Path) -> None:
    from agentshards._replication.lease import probe_conditional_writes

    target = parse_replica(str(tmp_path / "replica"))  # only its lease key is used: prefix-less "lease.json"
    probe_conditional_writes(store, target)
    assert [k for k in store.list("") if "probe" in k] == []


def test_queries_fragments_and_endpoints_never_carry_secrets_into_errors() -> None:
    for url in ("s3://bucket/x?secret_access_key=topsecret", "s3://bucket/x#tok=topsecret"):
        with pytest.raises(InvalidReplica) as info:
            parse_replica(url, {})
        assert "topsecret" not in str(info.value)
    with pytest.raises(InvalidReplica) as info:
        parse_replica("s3://bucket/x", {"AWS_ENDPOINT_URL_S3": "https://AKIAKEY:topsecret@minio:9000"})
    assert "topsecret" not in str(info.value) and "carries credentials" in str(info.value)


def test_list_etags_gives_the_etags_get_and_put_if_use(store: ObjectStore) -> None:
    """Nodes scan with one LIST and GET only what changed: the listed ETag must be the one a GET returns and
    a conditional PUT expects, on every backend."""
    first = store.put_if("own/a.json", b"one", None)
    assert first is not None
    store.put("own/b.json", b"two")
    store.put("other/c.json", b"three")
    listed = store.list_etags("own/")
    assert sorted(listed) == ["own/a.json", "own/b.json"]
    assert listed["own/a.json"] == first == store.get_etag("own/a.json")[1]
    assert listed["own/b.json"] == store.get_etag("own/b.json")[1]
    second = store.put_if("own/a.json", b"one again", listed["own/a.json"])
    assert second is not None and store.list_etags("own/")["own/a.json"] == second != first
