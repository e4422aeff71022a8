"""Generate spec/manifest.schema.json from the pydantic models: ``python -m deltaformat.schema``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from deltaformat.manifest import Manifest

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "spec" / "manifest.schema.json"


def manifest_schema() -> str:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://paramdelta.dev/spec/manifest.v1.schema.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0]) if argv else SCHEMA_PATH
    out.write_text(manifest_schema())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
