"""The OCI distribution-spec conformance suites (../shared/tools/oci: the released v1.1.1 suite, every workflow,
and the rewritten suite on distribution-spec main) against a fresh registry: the embedded default, and the
PostgreSQL + Ceph S3 deployment. Zero failures, and a report from every run.

The suites are prebuilt binaries kept beside the project, not in it: when they are missing this fails, it does
not skip, so that a CI without them cannot pass for a conformant one.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from paramdelta_dev.scaleout import Replica
from paramdelta_dev.serve import RegistryServer

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT.parent / "shared" / "tools" / "oci"
RUNNER = TOOLS / "run-conformance.sh"
RUNS = ("v1.1.1 pull", "v1.1.1 push", "v1.1.1 discovery", "v1.1.1 management", "main")
NAMESPACE = "conformance"  # the suites' repositories: conformance/repo1, conformance/repo2
SUITE_SECONDS = 300  # per run; each takes seconds on a quiet machine


def run_conformance(url: str, token: str, out: Path) -> str:
    """Run every suite and workflow against ``url`` as a push token of NAMESPACE; return the runner's output."""
    assert RUNNER.is_file(), f"the OCI conformance suites are missing: expected {RUNNER} (see its README.md)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCI_")}
    env.update(OUT=str(out), OCI_SUITE_TIMEOUT=str(SUITE_SECONDS), OCI_DEBUG="0",
               OCI_API_BLOBS_UPLOAD_CANCEL="true")  # off by default in the main suite; the registry has it
    done = subprocess.run([str(RUNNER), url, "conformance", token, "all"], capture_output=True, text=True, env=env,
                          timeout=len(RUNS) * (SUITE_SECONDS + 30))
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"conformance failures:\n{output[-3000:]}\n{_failure_messages(out)}"
    return output


def _failure_messages(out: Path) -> str:
    """The distinct failure messages of all runs (the reports are gone with the test's temp folder)."""
    lines = {line.strip() for f in out.glob("*/failures.txt") for line in f.read_text().splitlines()
             if line.strip() and not line.startswith("FAIL ")}
    return "\n".join(sorted(lines)[:40])


def assert_every_run_passed(output: str) -> None:
    for run in RUNS:
        m = re.search(rf"^{re.escape(run)}: (\d+) passed, (\d+) failed, (\d+) skipped", output, re.M)
        assert m, f"no report from the {run} run:\n{output[-3000:]}"
        assert int(m.group(1)) > 0 and int(m.group(2)) == 0, m.group(0)
    assert re.search(r"^total: \d+ passed, 0 failed", output, re.M), output[-3000:]


def test_the_embedded_registry_passes_both_conformance_suites(tmp_path: Path):
    srv = RegistryServer(tmp_path / "data").start()  # fresh: the suites push, tag and delete as they like
    try:
        assert_every_run_passed(run_conformance(srv.url, srv.token(NAMESPACE, "push"), tmp_path / "reports"))
    finally:
        srv.stop()


@pytest.mark.services
def test_the_postgresql_and_s3_deployment_passes_both_conformance_suites(scale_backends, tmp_path: Path):
    # A database and a bucket of its own on the shared services: a fresh registry, whatever other tests left there.
    engine = create_engine(scale_backends.database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS oci_conformance"))
        conn.execute(text("CREATE DATABASE oci_conformance"))
    engine.dispose()
    url = scale_backends.database_url.rsplit("/", 1)[0] + "/oci_conformance"
    bucket = scale_backends.s3.make_bucket("paramdelta-oci-conformance")
    # Blob GETs redirect to presigned URLs. They name the store as "localhost", another host than the registry's
    # 127.0.0.1: a client (Go's, here) then follows the redirect without the registry's Authorization header,
    # which S3 would refuse next to a presigned signature (PARAMDELTA_S3_PUBLIC_ENDPOINT_URL's advice).
    public = scale_backends.s3.endpoint_url.replace("://127.0.0.1", "://localhost")
    replica = Replica(scale_backends, "conformance", PARAMDELTA_DATABASE_URL=url, PARAMDELTA_S3_PUBLIC_ENDPOINT_URL=public,
                      PARAMDELTA_BLOB_STORE=f"s3://{bucket}/registry").start()
    try:
        from registry.auth import create_token
        from registry.db import Database

        db = Database(url)
        try:
            token = create_token(db, NAMESPACE, "push")
        finally:
            db.dispose()
        assert_every_run_passed(run_conformance(replica.url, token, tmp_path / "reports"))
    finally:
        replica.stop()

