"""paramdelta's format library: extract, apply, verify and inspect ParamΔ delta artifacts.

    import deltaformat
    deltaformat.extract("llama3-base", "llama3-inst", "llama3-inst.delta")
    deltaformat.apply(["llama3-inst.delta"], "llama3.1-base", "llama3.1-paramdelta")

torch is imported only when tensor arithmetic runs (deltaformat.arith), so the registry
client and server start without it.
"""

from deltaformat._version import __version__
from deltaformat.apply import ApplyResult, apply, preflight
from deltaformat.artifact import Artifact, open_artifact
from deltaformat.errors import ParamDeltaError
from deltaformat.extract import extract
from deltaformat.lazy import LazyModel, open_model
from deltaformat.manifest import Manifest
from deltaformat.verify import VerifyReport, inspect, verify

__all__ = [
    "__version__", "extract", "apply", "verify", "inspect", "preflight", "open_artifact",
    "open_model", "LazyModel", "Artifact", "Manifest", "ApplyResult", "VerifyReport", "ParamDeltaError",
]
