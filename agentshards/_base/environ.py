"""The environment each kind of child process gets: Litestream only what it needs, workers no AWS credential.

Litestream holds the bucket's credentials and nothing else of ours, so it gets an allow-list (its AWS
settings, TLS trust, proxies, the Go runtime's knobs, PATH/HOME/TMPDIR), not the whole environment minus a
few names: an application's own secrets (LLM keys, database passwords) have no business in it.

Workers run agent code, which never needs the bucket: they get the environment minus every way the AWS SDKs
find a credential (keys, profiles, web identity, the ECS/EKS container endpoint, the instance metadata
service, the shared credentials and config files).
"""

from __future__ import annotations

from collections.abc import Mapping

LITESTREAM_VARS = frozenset({
    # credentials and where the SDK looks for them
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME", "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "AWS_EC2_METADATA_V1_DISABLED",
    "LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY",
    # where and how to reach S3
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_STS",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_STS_REGIONAL_ENDPOINTS", "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT", "AWS_S3_USE_ARN_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
    "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION",
    # TLS trust and proxies (Go reads both spellings of the proxy variables). Not AWS_CA_BUNDLE: with it set,
    # every Litestream 0.5 S3 command fails (measured), while the Go TLS stack honours SSL_CERT_FILE/DIR.
    "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
    "no_proxy",
    # the process itself: HOME locates ~/.aws, TMPDIR its temp files; the Go runtime's own settings
    "PATH", "HOME", "TMPDIR", "TZ", "GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GODEBUG",
})
LITESTREAM_PREFIXES = ("AWS_CONTAINER_",)  # ECS task roles and EKS pod identity: the credential endpoint

_WORKER_DROP = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_CREDENTIAL_PROFILES_FILE",
    "LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY",
})
_WORKER_DROP_PREFIXES = ("AWS_CONTAINER_",)
_WORKER_SET = {
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",  # not ~/.aws/credentials
    "AWS_CONFIG_FILE": "/dev/null",              # no profile with a credential_process or SSO in ~/.aws/config
    "AWS_EC2_METADATA_DISABLED": "true",         # not the instance role
}


def litestream_env(env: Mapping[str, str]) -> dict[str, str]:
    """Only the variables Litestream uses, from ``env``."""
    return {k: v for k, v in env.items() if k in LITESTREAM_VARS or k.startswith(LITESTREAM_PREFIXES)}


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without any AWS credential, and with the SDKs' other credential sources switched off."""
    out = {k: v for k, v in env.items() if k not in _WORKER_DROP and not k.startswith(_WORKER_DROP_PREFIXES)}
    out.update(_WORKER_SET)
    return out
