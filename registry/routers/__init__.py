"""HTTP routers, one per resource: oci (/v2), api (/api/v1), pages (/), health (/healthz, /readyz, /metrics), token (/auth/token)."""
