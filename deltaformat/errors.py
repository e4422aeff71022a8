"""Error types whose messages a user can act on, each with its own exit status.

Errors are raised where the fact is known, naming the tensor, blob, file or field,
and shown once at the edge (CLI: one line on stderr and the class's ``exit_code``;
HTTP: the OCI error envelope). ``EXIT_CODES`` is the table the CLI's --help shows.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

EXIT_USAGE = 2  # a malformed argument (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: 128 + SIGINT, as shells report it


def invalid_field(exc: ValidationError) -> str:
    """``field WHERE: WHAT`` for a pydantic error's first complaint: one line, where its own text spans several."""
    first = exc.errors()[0]
    where = ".".join(map(str, first["loc"])) or "(document)"
    return f"field {where}: {first['msg']}"


class ParamDeltaError(Exception):
    """Base class of every error paramdelta raises on purpose."""

    exit_code = 1


class FormatError(ParamDeltaError):
    """The artifact or manifest is not a valid paramdelta format v1 artifact."""

    exit_code = 3


class CorruptBlobError(FormatError):
    """A blob's bytes do not match its digest, or do not decode as the manifest says."""

    exit_code = 4


class ModelError(ParamDeltaError):
    """A model folder or Hub id cannot be read (missing files, pickled weights, bad header)."""

    exit_code = 5


class IncompatibleBaseError(ParamDeltaError):
    """The base given to apply does not match what the delta was extracted against."""

    exit_code = 6


class VerificationError(ParamDeltaError):
    """A computed result differs from the digest recorded in the manifest."""

    exit_code = 7


class OutputExistsError(ParamDeltaError):
    """The output path exists and --force was not given."""

    exit_code = 8


class RegistryError(ParamDeltaError):
    """The registry answered with an error (message carries its code and detail)."""

    exit_code = 9
    # set where the registry answered (RegistryResponseError); None for a registry that could not be reached
    status: int | None = None
    code: str | None = None
    detail: str | None = None


class RegistryResponseError(RegistryError):
    """A registry's error answer, with its fields: the HTTP status, the OCI error code (``HTTP 404`` when
    the body is not the OCI error envelope) and the message the registry gave."""

    status: int
    code: str
    detail: str

    def __init__(self, message: str, *, status: int, code: str, detail: str):
        super().__init__(message)
        self.status, self.code, self.detail = status, code, detail


class IdentityError(RegistryError):
    """What a registry served is not what was asked for (its manifest names another delta or version)."""

    exit_code = 10


class OfflineError(ParamDeltaError):
    """PARAMDELTA_OFFLINE=1 and what was asked for is not in the local cache."""

    exit_code = 11


class NoSpaceError(ParamDeltaError):
    """The disk is full, or too small for the announced output."""

    exit_code = 12


class FileSystemError(ParamDeltaError):
    """Reading or writing a file failed (permissions, I/O error...)."""

    exit_code = 13


class SignatureError(ParamDeltaError):
    """The delta is not signed by the key asked for, or what is signed is not what is there (tampered)."""

    exit_code = 14


class ParamDeltaDeprecationWarning(DeprecationWarning):
    """A deprecated way of calling paramdelta, kept working for now (the message says what replaces it).

    A class of its own so that a test suite can make paramdelta's deprecations errors
    (``filterwarnings = ["error::deltaformat.errors.ParamDeltaDeprecationWarning"]``) without
    failing on those of the libraries it uses.
    """


EXIT_CODES: list[tuple[int, str]] = [
    (0, "success"),
    (1, "other error (an unexpected one also prints its type; PARAMDELTA_DEBUG=1 shows the traceback)"),
    (EXIT_USAGE, "bad argument or usage"),
    *((cls.exit_code, (cls.__doc__ or cls.__name__).split("\n")[0]) for cls in (
        FormatError, CorruptBlobError, ModelError, IncompatibleBaseError, VerificationError, OutputExistsError,
        RegistryError, IdentityError, OfflineError, NoSpaceError, FileSystemError, SignatureError)),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C, SIGTERM); the partial output was removed"),
]


def from_os_error(exc: OSError, path: object = None) -> ParamDeltaError:
    """The one-line error for a failed file operation, naming the file (``path`` when the error does not)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the output's name says more than a temporary file's
        target = path if path is not None else exc.filename
        return NoSpaceError("no space left on device" + (f" writing {target}" if target is not None else ""))
    where = exc.filename if exc.filename is not None else path
    reason = exc.strerror or str(exc)
    return FileSystemError(f"{reason}: {where}" if where is not None else reason)
