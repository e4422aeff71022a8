# The paramdelta registry. Stateless: metadata in PostgreSQL, blobs in S3-compatible storage.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The CPU build of torch first: an unpinned torch would resolve to a multi-GB CUDA build.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY deltaformat ./deltaformat
COPY registry ./registry
RUN pip install ".[scale]" && useradd --system --uid 10001 paramdelta
USER paramdelta

EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:5000/readyz', timeout=2).status != 200)"
CMD ["paramdelta", "serve", "--host", "0.0.0.0", "--port", "5000"]
