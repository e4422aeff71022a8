# The paramdelta registry. Stateless: metadata in PostgreSQL, blobs in S3-compatible storage.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY deltaformat ./deltaformat
COPY registry ./registry
# The server with its PostgreSQL and S3 drivers; no torch: the registry does no tensor arithmetic.
RUN pip install ".[scale]" && useradd --system --uid 10001 paramdelta
USER paramdelta

EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:5000/readyz', timeout=2).status != 200)"
CMD ["paramdelta", "serve", "--host", "0.0.0.0", "--port", "5000"]
