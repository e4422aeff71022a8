"""Smoke test of the real backing services: PostgreSQL 15 and Ceph S3 (RGW).

Needs the packages from scripts/install-system-deps.sh; fails (doesn't skip)
when they are missing, so a broken CI setup can't pass silently.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from paramdelta_dev.services import PostgresService, S3Service, start_postgres, start_s3

pytestmark = pytest.mark.services


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    svc = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    svc = start_s3(tmp_path_factory.mktemp("s3"))
    try:
        yield svc
    finally:
        svc.stop()


def test_postgres_select_1(postgres: PostgresService) -> None:
    engine = sa.create_engine(postgres.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
            assert conn.execute(sa.text("select current_database()")).scalar_one() == "paramdelta"
            version = conn.execute(sa.text("show server_version_num")).scalar_one()
            assert version.startswith("15")
    finally:
        engine.dispose()


def test_s3_roundtrip(s3: S3Service) -> None:
    client = s3.client()
    bucket = s3.make_bucket(f"pd-{uuid.uuid4().hex[:12]}")

    # Plain put + ranged get.
    client.put_object(Bucket=bucket, Key="small.bin", Body=b"0123456789abcdef")
    got = client.get_object(Bucket=bucket, Key="small.bin", Range="bytes=4-9")
    assert got["Body"].read() == b"456789"
    assert got["ContentRange"] == "bytes 4-9/16"

    # Multipart: every part but the last must be >= 5 MiB.
    part1 = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    part2 = b"tail-of-the-object"
    key = "big/multipart.bin"
    mpu = client.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for number, data in ((1, part1), (2, part2)):
        resp = client.upload_part(
            Bucket=bucket, Key=key, UploadId=mpu["UploadId"], PartNumber=number, Body=data
        )
        parts.append({"PartNumber": number, "ETag": resp["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=mpu["UploadId"], MultipartUpload={"Parts": parts}
    )
    size = len(part1) + len(part2)
    assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] == size
    # A range that straddles the part boundary.
    start = len(part1) - 8
    got = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + 15}")
    assert got["Body"].read() == part1[-8:] + part2[:8]

    # Presigned GET, fetched without any AWS client.
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
    )
    resp = httpx.get(url, headers={"Range": "bytes=0-255"}, timeout=30)
    assert resp.status_code == 206
    assert resp.content == part1[:256]
    resp = httpx.get(url, timeout=30)
    assert resp.status_code == 200
    assert resp.content == part1 + part2

    # Delete objects, then the bucket.
    for k in ("small.bin", key):
        client.delete_object(Bucket=bucket, Key=k)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    client.delete_bucket(Bucket=bucket)
    assert bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}
