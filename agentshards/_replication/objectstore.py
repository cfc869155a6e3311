"""Small object storage for manifests (and later archives): S3 via boto3, or a local directory.

This is the only module that imports boto3. Both backends honour one contract, checked by one test suite
(``tests/test_objectstore.py``) run against each:

- ``put`` overwrites atomically: a reader sees the old object or the new one, never a part.
- ``get`` of a missing key raises ``ObjectNotFound``.
- ``list`` returns the keys under a prefix, sorted; an empty list when there are none.
- ``delete`` is idempotent: deleting a missing key is not an error.
- ``check`` raises ``InvalidReplica`` with a hint when the location cannot be used (missing bucket,
  wrong credentials, unreachable endpoint), so a fleet fails at start, not in the middle.
- ``metadata`` travels with an object (``put(..., metadata=)``, ``get_with_metadata``); ``sha256`` on
  ``put`` is the content's digest, which S3 verifies on upload (multipart ETags are not MD5s).
- ``put_if`` is a compare-and-swap: ``expect=None`` writes only if the key is absent (If-None-Match),
  else only if the current ETag equals ``expect`` (If-Match). It returns the new ETag, or None when the
  condition failed (or ``ConditionalWritesUnsupported`` when the server says it does not implement it).
  ``get_etag`` returns ``(data, etag)``.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .._base.errors import InvalidReplica
from .replica import ReplicaTarget


class ObjectNotFound(KeyError):
    """No object at that key."""


class ConditionalWritesUnsupported(Exception):
    """The server rejected a conditional PUT's header as not implemented (``put_if`` cannot work there)."""


_NO_BATCH_DELETE = frozenset({"NotImplemented", "InvalidRequest", "MissingContentMD5", "BadDigest",
                              "XAmzContentSHA256Mismatch", "InvalidArgument"})
"""How S3-compatible servers refuse a DeleteObjects they do not implement (or whose checksum header they do
not know): the keys are then deleted one by one."""


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None,
            sha256: bytes | None = None) -> None: ...

    def get(self, key: str) -> bytes: ...

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]]: ...

    def put_if(self, key: str, data: bytes, expect: str | None) -> str | None: ...

    def get_etag(self, key: str) -> tuple[bytes, str]: ...

    def list(self, prefix: str) -> list[str]: ...

    def list_etags(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` with its ETag (the one ``get_etag`` and ``put_if`` use): what a node
        scans for changed ownership records and renewed node leases with one request per 1,000 keys."""
        ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete every key (missing ones included, as ``delete``): one request per 1,000 keys on S3, where
        an agent's old generation holds dozens of files and a take-over collects hundreds of agents'."""
        ...

    def check(self) -> None: ...

    def check_readable(self) -> None:
        """Raise InvalidReplica unless the store exists and answers; never creates or writes anything
        (what read-only commands call: listing a mistyped replica must not create it)."""
        ...


class LocalStore:
    """Objects as files under ``root``; keys are '/'-separated relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key {key!r} escapes the store root")
        return path

    def _meta_path(self, key: str) -> Path:
        path = self._path(key)
        return path.parent / f".{path.name}.meta.json"

    def put(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None,
            sha256: bytes | None = None) -> None:
        if sha256 is not None and hashlib.sha256(data).digest() != sha256:
            raise ValueError(f"sha256 of {key} does not match its content")
        if metadata is not None:
            self._write(self._meta_path(key), json.dumps(dict(metadata)).encode())
        self._write(self._path(key), data)

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]]:
        data = self.get(key)
        try:
            meta: dict[str, str] = json.loads(self._meta_path(key).read_text())
        except FileNotFoundError:
            meta = {}
        return data, meta

    def put_if(self, key: str, data: bytes, expect: str | None) -> str | None:
        lock_path = self._path(key).parent / f".{self._path(key).name}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = hashlib.sha256(self._path(key).read_bytes()).hexdigest()
            except FileNotFoundError:
                current = None
            if current != expect:
                return None
            self._write(self._path(key), data)
            return hashlib.sha256(data).hexdigest()

    def get_etag(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)
        return data, hashlib.sha256(data).hexdigest()

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def list(self, prefix: str) -> list[str]:
        base = self.root.resolve()
        # walk only the folder the prefix names: walking the whole store made archiving N agents O(N^2)
        folder = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else base
        if not folder.is_dir():
            return []
        keys = (p.relative_to(base).as_posix() for p in folder.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith("."))

    def list_etags(self, prefix: str) -> dict[str, str]:
        etags = {}
        for key in self.list(prefix):
            try:
                etags[key] = hashlib.sha256(self._path(key).read_bytes()).hexdigest()
            except FileNotFoundError:  # deleted since the listing: as on S3, a key listed is not promised
                continue
        return etags

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.delete(key)

    def check_readable(self) -> None:
        if not self.root.is_dir():
            raise InvalidReplica(f"no replica directory at {self.root}",
                                 hint="check the --replica path (nothing was created)")

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".tmp-probe-")  # unique: checks run in parallel
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise InvalidReplica(f"replica directory {self.root} is not writable: {exc}",
                                 hint="choose a writable directory for the replica") from exc


class S3Store:
    """Objects in an S3-compatible bucket.

    Credentials: the ``AWS_*`` keys of ``env`` (the edge passes ``os.environ``) or, without them, the
    rest of boto3's chain (config files, instance roles). They are never stored on this object.
    """

    def __init__(self, target: ReplicaTarget, env: Mapping[str, str]) -> None:
        import boto3
        from botocore.config import Config

        self.target = target
        session = boto3.session.Session(aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                                        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                                        aws_session_token=env.get("AWS_SESSION_TOKEN"))
        # No region forced: without AWS_REGION (or a ?region= on the URL) the profile's region applies.
        self._client: Any = session.client(
            "s3", endpoint_url=target.endpoint, region_name=target.region,
            # A pool as wide as the threads that share the client (a launch brings 32 agents up at once, the
            # hand-back and the finalisations 8 each): with botocore's default of 10 the rest were discarded
            # and reconnected on every request.
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                          max_pool_connections=64, s3={"addressing_style": "path"} if target.endpoint else None))

    def put(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None,
            sha256: bytes | None = None) -> None:
        extra: dict[str, Any] = {}
        if metadata:
            extra["Metadata"] = dict(metadata)
        if sha256 is not None:
            extra["ChecksumSHA256"] = base64.b64encode(sha256).decode()
        self._client.put_object(Bucket=self.target.bucket, Key=key, Body=data, **extra)

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]]:
        response = self._get_object(key)
        return response["Body"].read(), dict(response.get("Metadata", {}))

    def put_if(self, key: str, data: bytes, expect: str | None) -> str | None:
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
        try:
            response = self._client.put_object(Bucket=self.target.bucket, Key=key, Body=data, **condition)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return None
            if expect is not None and code in ("NoSuchKey", "404"):  # If-Match on a missing key: S3 answers 404
                return None
            if code in ("NotImplemented", "501"):
                raise ConditionalWritesUnsupported(str(exc)) from exc
            raise
        return str(response["ETag"])

    def get_etag(self, key: str) -> tuple[bytes, str]:
        response = self._get_object(key)
        return response["Body"].read(), str(response["ETag"])

    def _get_object(self, key: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self._client.get_object(Bucket=self.target.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectNotFound(key) from None
            raise

    def get(self, key: str) -> bytes:
        body: bytes = self._get_object(key)["Body"].read()
        return body

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.target.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def list_etags(self, prefix: str) -> dict[str, str]:
        etags: dict[str, str] = {}
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.target.bucket, Prefix=prefix):
            etags.update((obj["Key"], str(obj["ETag"])) for obj in page.get("Contents", []))
        return etags

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.target.bucket, Key=key)

    def delete_many(self, keys: Sequence[str]) -> None:
        from botocore.exceptions import ClientError

        keys = list(keys)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            chunk = keys[start:start + 1000]
            try:
                answer = self._client.delete_objects(Bucket=self.target.bucket, Delete={
                    "Objects": [{"Key": key} for key in chunk], "Quiet": True})
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in _NO_BATCH_DELETE:
                    raise
                for key in keys[start:]:  # an S3-compatible server without DeleteObjects (or its checksums)
                    self.delete(key)
                return
            errors = answer.get("Errors") or []
            if errors:  # per key, in a 200 answer: not raised by the client
                first = errors[0]
                raise OSError(f"could not delete {len(errors)} of {len(chunk)} objects, first "
                              f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".strip())

    def check_readable(self) -> None:
        self.check()  # a HEAD of the bucket: reads only

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.target.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            hint = {"404": "create the bucket first", "NoSuchBucket": "create the bucket first",
                    "403": "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the boto3 credential chain)"}
            raise InvalidReplica(f"cannot use {self.target.describe()}: {code}",
                                 hint=hint.get(code, "check the bucket, credentials and endpoint")) from exc
        except BotoCoreError as exc:
            raise InvalidReplica(f"cannot reach {self.target.describe()}: {exc}",
                                 hint="check AWS_ENDPOINT_URL / the network, and the credentials") from exc


def credential_source() -> str | None:
    """Where boto3's chain finds credentials here (``env``, ``shared-credentials-file``, ``iam-role``...), or
    None: what ``agentshards doctor`` reports, without showing a key."""
    import boto3

    found = boto3.session.Session().get_credentials()
    return None if found is None else str(found.method)


def store_for(target: ReplicaTarget, env: Mapping[str, str]) -> ObjectStore:
    if target.kind == "file":
        assert target.root is not None
        return LocalStore(target.root)
    return S3Store(target, env)
