"""Replica targets: where an agent's shard is replicated, as a parsed, validated, frozen value.

``s3://bucket/prefix`` for any S3-compatible service, or a local directory (``file:///path`` or a plain
path), the embedded default that needs no S3. Each agent lives under its own prefix
(``<prefix>/agents/<agent_id>``): each owner of it replicates to a generation of its own below it
(``.../g<N>``; generation 0 is the agent prefix itself, the layout before generations). It has a manifest
object at ``<prefix>/manifest/<agent_id>.json`` (its state and its owner) and each node its lease at
``<prefix>/nodes/<node_id>.json``.

Credentials are deliberately not part of a target: they stay in the environment / boto3 chain and are
passed to Litestream only through its process environment, never through a URL or a written file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from .._base.errors import InvalidReplica
from .._core.shard import validate_agent_id

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART = re.compile(r"[A-Za-z0-9._-]+")
_NUMBERED = re.compile(r"g[0-9]+/")  # a generation's folder below an agent's prefix


@dataclass(frozen=True)
class ReplicaTarget:
    """A parsed replica location. ``kind`` is ``"s3"`` or ``"file"``."""

    kind: str
    bucket: str = ""
    prefix: str = ""
    root: Path | None = None
    endpoint: str | None = None
    region: str | None = None

    def agent_key(self, agent_id: str, generation: int = 0) -> str:
        """Key prefix (relative to the bucket or root) of one generation of an agent's Litestream replica;
        generation 0 is the agent's whole prefix (and the layout written before generations)."""
        base = self._join("agents", validate_agent_id(agent_id))
        return base if generation == 0 else f"{base}/g{int(generation)}"

    def generation_keys(self, keys: list[str], agent_id: str, generation: int) -> list[str]:
        """The keys of one generation among an agent's keys: those under its path; for generation 0 (the
        agent prefix itself) all but those of the numbered generations below it."""
        root = self.agent_key(agent_id, generation) + "/"
        if generation:
            return [k for k in keys if k.startswith(root)]
        return [k for k in keys if k.startswith(root) and not _NUMBERED.match(k, len(root))]

    def agents_prefix(self) -> str:
        """Key prefix under which every agent's replica lives (one LIST here sees the whole fleet)."""
        return self._join("agents") + "/"

    def manifest_key(self, agent_id: str) -> str:
        return self._join("manifest", f"{validate_agent_id(agent_id)}.json")

    def manifest_prefix(self) -> str:
        return self._join("manifest") + "/"

    def archive_key(self, agent_id: str) -> str:
        return self._join("archive", f"{validate_agent_id(agent_id)}.db")

    def lease_key(self) -> str:
        """The whole-prefix lease of the layout before nodes: only looked at, to refuse a live old node."""
        return self._join("lease.json")

    def node_key(self, node_id: str) -> str:
        return self._join("nodes", f"{node_id}.json")

    def nodes_prefix(self) -> str:
        return self._join("nodes") + "/"

    def litestream_url(self, agent_id: str, generation: int = 0) -> str:
        """The replica URL Litestream is given for one generation of an agent (no credentials in it)."""
        key = self.agent_key(agent_id, generation)
        if self.kind == "file":
            assert self.root is not None
            return (self.root / key).as_uri()
        query = []
        if self.endpoint:
            query.append(f"endpoint={quote(self.endpoint, safe=':/')}")
        if self.region:
            query.append(f"region={quote(self.region)}")
        return f"s3://{self.bucket}/{key}" + (f"?{'&'.join(query)}" if query else "")

    def describe(self) -> str:
        if self.kind == "file":
            return str(self.root)
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")

    def _join(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)


def redact(url: str) -> str:
    """``url`` as it may appear in an error or a log: a user:password part and any query or fragment (where
    keys are sometimes passed) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        parts = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[-1])
    if parts.query:
        parts = parts._replace(query="***")
    if parts.fragment:
        parts = parts._replace(fragment="***")
    return parts.geturl()


def parse_replica(url: str, env: Mapping[str, str] | None = None, *, endpoint: str | None = None,
                  region: str | None = None) -> ReplicaTarget:
    """Parse ``url``; S3 endpoint and region come from the arguments, else from ``env`` (the standard
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and ``AWS_REGION`` / ``AWS_DEFAULT_REGION``)."""
    env = env or {}
    if not isinstance(url, str) or not url.strip():
        raise InvalidReplica("empty replica URL", hint="use s3://bucket/prefix or a local directory")
    if "://" not in url:
        return ReplicaTarget("file", root=Path(url).expanduser().resolve())
    parts = urlsplit(url)
    shown = redact(url)  # error messages end up in logs: never echo a key or secret given in the URL
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise InvalidReplica(f"replica URL {shown!r} is not a local file URL", hint="use file:///absolute/path")
        return ReplicaTarget("file", root=Path(parts.path).resolve())
    if parts.scheme != "s3":
        raise InvalidReplica(f"unsupported replica scheme {parts.scheme!r} in {shown!r}",
                             hint="use s3://bucket/prefix or file:///path")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidReplica(f"replica URL {shown!r} must not carry credentials or options",
                             hint="credentials come from the AWS environment; pass endpoint/region as options")
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidReplica(f"invalid bucket name {bucket!r} in {shown!r}",
                             hint="S3 bucket names are 3-63 lowercase letters, digits, '.' and '-'")
    if prefix and not all(_PREFIX_PART.fullmatch(p) and p not in (".", "..") for p in prefix.split("/")):
        raise InvalidReplica(f"invalid prefix {prefix!r} in {shown!r}",
                             hint="use '/'-separated parts of letters, digits, '.', '_' and '-'")
    endpoint = endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise InvalidReplica(f"invalid S3 endpoint {redact(endpoint)!r}", hint="e.g. http://127.0.0.1:9000")
    if endpoint is not None and (urlsplit(endpoint).username or urlsplit(endpoint).password):
        raise InvalidReplica(f"the S3 endpoint {redact(endpoint)!r} carries credentials",
                             hint="credentials come from the AWS environment, never from the endpoint URL")
    return ReplicaTarget("s3", bucket=bucket, prefix=prefix, endpoint=endpoint, region=region)
