"""The photo store: a local folder (embedded profile) or an S3 bucket (services profile).

Photos are addressed by URL: ``file://<absolute root>/<key>`` or ``s3://<bucket>/<key>``. Keys are
percent-encoded in URLs (RFC 3986). ``check_url`` accepts only URLs that point inside this store;
its ValueError message is the reason an event carrying a bad photoUrl is dead-lettered.
"""
from __future__ import annotations

import mimetypes
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

from gymops.settings import Settings

MAX_KEY_BYTES = 1024  # the S3 limit, applied to both stores so a key works in either
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PhotoStore(Protocol):
    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key``; return its photoUrl."""

    def get(self, url: str) -> bytes:
        """The bytes at ``url``; FileNotFoundError if there are none."""

    def check_url(self, url: str) -> None:
        """Raise ValueError, with the reason, unless ``url`` points inside this store."""


def check_key(key: str) -> str:
    """Raise ValueError unless ``key`` is a plain relative key (no traversal, no odd characters)."""
    if not isinstance(key, str) or not key:
        raise ValueError("empty key")
    if "\x00" in key:
        raise ValueError("key contains a NUL character")
    if _CONTROL.search(key):
        raise ValueError("key contains a control character")
    if "\\" in key:
        raise ValueError("key contains a backslash")
    if key.startswith("/"):
        raise ValueError(f"absolute key {key!r} (keys are relative to the store)")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"key longer than {MAX_KEY_BYTES} bytes")
    # Decode repeatedly so that double-encoded dots (%252e%252e) are caught too.
    seen = key
    for _ in range(3):
        segments = seen.split("/")
        if any(seg in (".", "..") for seg in segments):
            raise ValueError(f"path traversal ('.' or '..' segment) in key {key!r}")
        if "" in segments:
            raise ValueError(f"empty path segment ('//' or trailing '/') in key {key!r}")
        decoded = unquote(seen)
        if decoded == seen:
            break
        if "\\" in decoded or "\x00" in decoded:
            raise ValueError(f"encoded backslash or NUL in key {key!r}")
        seen = decoded
    return key


def _url_key(url: str, scheme: str, where: str) -> tuple[str, str]:
    """Split ``url`` into (authority, decoded path) after the checks common to both stores."""
    if not isinstance(url, str) or not url:
        raise ValueError("empty photo URL")
    if "\x00" in url or "%00" in url.lower():
        raise ValueError("photo URL contains a NUL character")
    if "\\" in url or "%5c" in url.lower():
        raise ValueError("photo URL contains a backslash")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"malformed photo URL: {exc}") from None
    if parts.scheme != scheme:
        raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not this store's; expected {where}<key>")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError("photo URL must not carry a query or fragment")
    return parts.netloc, unquote(parts.path)


class LocalPhotoStore:
    """Photos as files under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._prefix = "file://" + quote(str(self.root)) + "/"

    def __repr__(self) -> str:
        return f"LocalPhotoStore({str(self.root)!r})"

    def url_for(self, key: str) -> str:
        return self._prefix + quote(check_key(key))

    def _path(self, url: str) -> Path:
        netloc, path = _url_key(url, "file", self._prefix)
        if netloc not in ("", "localhost"):
            raise ValueError(f"file URL names host {netloc!r}; only local files are allowed")
        root = str(self.root) + "/"
        if not path.startswith(root):
            raise ValueError(f"{path!r} is outside the photo store root {str(self.root)!r}")
        key = path[len(root):]
        if not key:
            raise ValueError("empty key")
        check_key(key)
        return self.root / key

    def check_url(self, url: str) -> None:
        self._path(url)

    def put(self, key: str, data: bytes) -> str:
        url = self.url_for(key)
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)  # readers never see a half-written photo
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return url

    def get(self, url: str) -> bytes:
        path = self._path(url)
        if not os.path.realpath(path).startswith(os.path.realpath(self.root) + os.sep):
            raise ValueError(f"{url!r} resolves outside the photo store root (symlink)")
        return path.read_bytes()


class S3PhotoStore:
    """Photos as objects in one S3 bucket (path-style addressing, any S3-compatible server)."""

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str):
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint
        self.bucket = bucket
        self._prefix = f"s3://{bucket}/"
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def __repr__(self) -> str:
        return f"S3PhotoStore({self.endpoint!r}, bucket={self.bucket!r})"

    def url_for(self, key: str) -> str:
        return self._prefix + quote(check_key(key))

    def _key(self, url: str) -> str:
        bucket, path = _url_key(url, "s3", self._prefix)
        if bucket != self.bucket:
            raise ValueError(f"bucket {bucket!r} is not this store's bucket {self.bucket!r}")
        if not path or path == "/":
            raise ValueError("empty key")
        key = path[1:]
        check_key(key)
        return key

    def check_url(self, url: str) -> None:
        self._key(url)

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            self._client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> str:
        url = self.url_for(key)
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return url

    def get(self, url: str) -> bytes:
        from botocore.exceptions import ClientError

        key = self._key(url)
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(url) from None
            raise


def photo_store_for(settings: Settings) -> PhotoStore:
    """The profile's store: a local folder (embedded) or the S3 bucket (services)."""
    if settings.services:
        return S3PhotoStore(settings.s3_endpoint, settings.s3_bucket, settings.s3_access_key, settings.s3_secret_key)
    return LocalPhotoStore(settings.photo_root)
