"""Every environment variable the client side of paramdelta reads, in one place.

Each is read when it is used, not at import: a test (or a long-lived process) may change
them between calls. ``VARIABLES`` is the table README's "Environment variables" section
lists; the server's own settings (``PARAMDELTA_*`` read by the registry) are
registry.settings' concern, not this module's.
"""

from __future__ import annotations

import os
from pathlib import Path

TRUE_WORDS = ("1", "true", "yes")

VARIABLES: dict[str, str] = {
    "PARAMDELTA_REGISTRY": "the registry (URL or host[:port]) for references that name none; --registry overrides it",
    "PARAMDELTA_TOKEN": "bearer token for PARAMDELTA_REGISTRY or --registry; never sent to a host a reference merely names",
    "PARAMDELTA_CACHE": "the download cache folder (default ~/.cache/paramdelta)",
    "PARAMDELTA_OFFLINE": "1: no network at all; registry references are served from the cache alone",
    "PARAMDELTA_QUIET": "1: no progress bars (as -q)",
    "PARAMDELTA_WORKERS": "threads for the chunk arithmetic (default: the CPUs this process may use)",
    "PARAMDELTA_DEBUG": "1: an error prints its traceback as well as its one line",
    "PARAMDELTA_KEY_PASSWORD": "the password of an encrypted private key given to `paramdelta sign --key`",
    "DOCKER_CONFIG": "the folder of docker's config.json, where `paramdelta login` keeps credentials (default ~/.docker)",
    "CI": "set (by CI systems): no progress bars unless stderr is a terminal",
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE_WORDS


def registry() -> str | None:
    """PARAMDELTA_REGISTRY, or None when unset or empty."""
    return os.environ.get("PARAMDELTA_REGISTRY") or None


def token() -> str | None:
    """PARAMDELTA_TOKEN, or None when unset or empty (who may receive it is the client's rule)."""
    return os.environ.get("PARAMDELTA_TOKEN") or None


def cache_dir() -> Path:
    """PARAMDELTA_CACHE, or ~/.cache/paramdelta."""
    env = os.environ.get("PARAMDELTA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "paramdelta"


def offline() -> bool:
    """PARAMDELTA_OFFLINE=1 (or true/yes)."""
    return _flag("PARAMDELTA_OFFLINE")


def quiet() -> bool:
    """PARAMDELTA_QUIET=1, or a CI run whose stderr is not a terminal."""
    import sys

    return os.environ.get("PARAMDELTA_QUIET") == "1" or (bool(os.environ.get("CI")) and not sys.stderr.isatty())


def workers() -> int | None:
    """PARAMDELTA_WORKERS as a count of at least 1, or None when unset."""
    env = os.environ.get("PARAMDELTA_WORKERS")
    if not env:
        return None
    try:
        return max(1, int(env))
    except ValueError:
        raise ValueError(f"PARAMDELTA_WORKERS={env!r}: expected a whole number of threads") from None


def debug() -> bool:
    """PARAMDELTA_DEBUG=1 (or true/yes)."""
    return _flag("PARAMDELTA_DEBUG")


def key_password() -> str | None:
    """PARAMDELTA_KEY_PASSWORD, or None when unset or empty: an encrypted signing key's password."""
    return os.environ.get("PARAMDELTA_KEY_PASSWORD") or None


def docker_config_dir() -> Path:
    """DOCKER_CONFIG, or ~/.docker: the folder of the config.json that holds registry credentials."""
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) if folder else Path.home() / ".docker"
