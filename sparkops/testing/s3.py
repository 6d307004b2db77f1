"""A real S3-compatible server for tests of the S3 path of the files store: moto's server
(HTTP on 127.0.0.1, a free port chosen when it starts), a bucket created in it, and the
`STORAGES["files"]` entry that points django-storages at it. Nothing of our code or of boto is
patched: requests go over HTTP as they would to AWS, MinIO or Ceph."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCESS_KEY = "sparkops-test"
SECRET_KEY = "sparkops-test-secret"


@dataclass
class S3Server:
    endpoint_url: str

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self) -> str:
        name = f"sparkops-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage_config(self, bucket: str, *, expire: int = 300) -> dict[str, Any]:
        """A STORAGES entry for the files store in `bucket` (the settings' S3 options)."""
        return {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": bucket,
                "endpoint_url": self.endpoint_url,
                "region_name": REGION,
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
                "querystring_auth": True,
                "querystring_expire": expire,
                "signature_version": "s3v4",
                "default_acl": None,
                "file_overwrite": True,
            },
        }

    def keys(self, bucket: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listing.get("Contents", [])]


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()
