"""HTTP routers: oci (/v2), api (/api/v1), pages (/)."""
