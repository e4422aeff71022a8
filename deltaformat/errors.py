"""Error types whose messages a user can act on.

Errors are raised where the fact is known, naming the tensor, blob, file or field,
and shown once at the edge (CLI: one line on stderr and a non-zero exit; HTTP: the
OCI error envelope).
"""

from __future__ import annotations


class ParamDeltaError(Exception):
    """Base class of every error paramdelta raises on purpose."""

    exit_code = 1


class FormatError(ParamDeltaError):
    """The artifact or manifest is not a valid paramdelta format v1 artifact."""


class CorruptBlobError(FormatError):
    """A blob's bytes do not match its digest, or do not decode as the manifest says."""


class ModelError(ParamDeltaError):
    """A model folder or Hub id cannot be read (missing files, pickled weights, bad header)."""


class IncompatibleBaseError(ParamDeltaError):
    """The base given to apply does not match what the delta was extracted against."""


class VerificationError(ParamDeltaError):
    """A computed result differs from the digest recorded in the manifest."""


class OutputExistsError(ParamDeltaError):
    """The output path exists and --force was not given."""


class RegistryError(ParamDeltaError):
    """The registry answered with an error (message carries its code and detail)."""


class OfflineError(ParamDeltaError):
    """PARAMDELTA_OFFLINE=1 and what was asked for is not in the local cache."""
