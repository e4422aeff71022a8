"""The library returns the shared pydantic models (deltaformat.api_models), not dicts (issue #11).

The dict access those calls answered before (``page["items"]``, ``page.get("next_cursor")``)
still works, with a ``ParamDeltaDeprecationWarning``; pyproject makes that class an error
for the suite, so these tests are the only ones that use it, each under ``pytest.warns``.
"""

from __future__ import annotations

import ast
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import BaseModel

from deltaformat.api_models import CatalogPage, CompatibleVersion, DeltaSummary, Page, TaggedDelta
from deltaformat.errors import ParamDeltaDeprecationWarning

ROOT = Path(__file__).resolve().parents[1]
WHEN = datetime(2024, 5, 1, tzinfo=timezone.utc)
DIGEST = "sha256:" + "a" * 64
COMMON = {"name": "acme/chat", "base_id": "base", "base_fingerprint": DIGEST, "post_id": "post", "stored_bytes": 42}

SUMMARY = DeltaSummary(**COMMON, namespace="acme", description=None, latest_version="1.0", latest_digest=DIGEST,
                       updated_at=WHEN, base_revision=None, model_type=None, codec="zstd", post_parameters=7)
COMPATIBLE = CompatibleVersion(**COMMON, version="1.0", digest=DIGEST, match="shapes", published_at=WHEN)
TAGGED = TaggedDelta(**COMMON, namespace="acme", latest_version="1.0", latest_digest=DIGEST)
MODELS: list[tuple[BaseModel, str, object]] = [  # (model, a field, its value)
    (SUMMARY, "latest_version", "1.0"),
    (COMPATIBLE, "match", "shapes"),
    (TAGGED, "latest_digest", DIGEST),
    (Page[DeltaSummary](items=[SUMMARY], next_cursor="c2"), "next_cursor", "c2"),
    (Page[CompatibleVersion](items=[COMPATIBLE]), "items", [COMPATIBLE]),
    (CatalogPage(items=[TAGGED], notice="listed from the catalog"), "notice", "listed from the catalog"),
]
PLAIN = {"DeprecationWarning", "PendingDeprecationWarning", "FutureWarning"}
IDS = [type(m).__name__ for m, _, _ in MODELS]


@pytest.mark.parametrize(("model", "field", "value"), MODELS, ids=IDS)
def test_attributes_answer_without_a_warning(model: BaseModel, field: str, value: object):
    assert getattr(model, field) == value  # the filter in pyproject would make a warning here an error


@pytest.mark.parametrize(("model", "field", "value"), MODELS, ids=IDS)
def test_item_access_still_works_and_warns_with_paramdeltas_class(model: BaseModel, field: str, value: object):
    with pytest.warns(ParamDeltaDeprecationWarning, match=re.escape(f"use the attribute .{field}")):
        assert model[field] == value  # type: ignore[index]
    with pytest.warns(ParamDeltaDeprecationWarning, match=re.escape(f"use the attribute .{field}")):
        assert model.get(field) == value  # type: ignore[attr-defined]


@pytest.mark.parametrize(("model", "field", "value"), MODELS, ids=IDS)
def test_item_access_to_a_missing_field_behaves_like_the_dict_did(model: BaseModel, field: str, value: object):
    with pytest.warns(ParamDeltaDeprecationWarning), pytest.raises(KeyError, match="no_such_field"):
        model["no_such_field"]  # type: ignore[index]
    with pytest.warns(ParamDeltaDeprecationWarning):
        assert model.get("no_such_field", "default") == "default"  # type: ignore[attr-defined]


def test_the_warning_class_is_a_deprecation_warning_and_an_error_in_this_suite():
    assert issubclass(ParamDeltaDeprecationWarning, DeprecationWarning)  # filters for DeprecationWarning still apply
    with pytest.raises(ParamDeltaDeprecationWarning):  # pyproject's filterwarnings, not pytest.warns, is in force
        SUMMARY["name"]  # type: ignore[index]


def test_every_deprecation_paramdelta_warns_uses_its_own_class():
    """A shim warning plain DeprecationWarning would escape the suite's filter: no warn() call names it."""
    plain = []
    for path in sorted((ROOT / "deltaformat").rglob("*.py")) + sorted((ROOT / "registry").rglob("*.py")):
        for call in ast.walk(ast.parse(path.read_text())):
            if isinstance(call, ast.Call) and ast.unparse(call.func).endswith("warn"):
                named = [*call.args[1:2], *(k.value for k in call.keywords if k.arg == "category")]
                if any(ast.unparse(c).rpartition(".")[2] in PLAIN for c in named):
                    plain.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert plain == []
