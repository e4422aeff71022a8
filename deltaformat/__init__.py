"""paramdelta's format library: extract, apply, verify and inspect ParamΔ delta artifacts.

    import deltaformat
    deltaformat.extract("llama3-base", "llama3-inst", "llama3-inst.delta")
    deltaformat.apply(["llama3-inst.delta"], "llama3.1-base", "llama3.1-paramdelta")

The public names load on first use: importing the package (which every ``paramdelta``
command does) loads neither numpy, pydantic nor httpx, so ``paramdelta --help`` and each
verb start with only what they call. The CPU arithmetic is numpy: torch is needed only for
``apply(..., device="cuda")`` (the ``paramdelta[torch]`` extra).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from deltaformat._version import __version__

# Public name -> the module defining it. A new public name goes here (and in the
# TYPE_CHECKING block below, for type checkers and editors).
_EXPORTS: dict[str, str] = {
    "extract": "deltaformat.extract",
    "apply": "deltaformat.apply",
    "preflight": "deltaformat.compat",
    "resolve": "deltaformat.resolve",
    "Source": "deltaformat.resolve",
    "ApplyResult": "deltaformat.apply",
    "verify": "deltaformat.verify",
    "inspect": "deltaformat.summary",
    "VerifyReport": "deltaformat.verify",
    "open_model": "deltaformat.lazy",
    "LazyModel": "deltaformat.lazy",
    "open_artifact": "deltaformat.artifact",
    "Artifact": "deltaformat.artifact",
    "Manifest": "deltaformat.manifest",
    "export_lora": "deltaformat.lora",
    "PRESETS": "deltaformat.lossy",
    "ParamDeltaError": "deltaformat.errors",
}

if TYPE_CHECKING:
    # `X as X`: an explicit re-export, for type checkers (at run time __getattr__ imports on first use)
    from deltaformat.apply import ApplyResult as ApplyResult
    from deltaformat.apply import apply as apply
    from deltaformat.artifact import Artifact as Artifact
    from deltaformat.artifact import open_artifact as open_artifact
    from deltaformat.compat import preflight as preflight
    from deltaformat.errors import ParamDeltaError as ParamDeltaError
    from deltaformat.extract import extract as extract
    from deltaformat.lazy import LazyModel as LazyModel
    from deltaformat.lazy import open_model as open_model
    from deltaformat.lora import export_lora as export_lora
    from deltaformat.lossy import PRESETS as PRESETS
    from deltaformat.manifest import Manifest as Manifest
    from deltaformat.resolve import Source as Source
    from deltaformat.resolve import resolve as resolve
    from deltaformat.summary import inspect as inspect
    from deltaformat.verify import VerifyReport as VerifyReport
    from deltaformat.verify import verify as verify

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562), then keep it here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """This package's module object: ``deltaformat.apply`` stays the function.

    Loading a submodule binds it on its package (``deltaformat.apply`` = the module
    deltaformat/apply.py). The eager imports this file used to make bound the functions
    over the modules once, at import; loading lazily, a submodule loaded later (verify
    loads apply) would hide the function of the same name. The submodules stay in
    sys.modules, where ``import deltaformat.apply`` finds them.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS and _EXPORTS[name] == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
