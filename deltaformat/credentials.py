"""Registry credentials kept the way the container ecosystem keeps them: docker's ``config.json``.

The file is ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``. Its ``auths`` map a
registry (``host[:port]``, or written with a scheme: ``https://host[:port]``) to
``{"auth": base64("user:password")}``, as docker, skopeo, oras and helm read and write it.
Credential helpers (``credHelpers``/``credsStore``) are refused with a one-line error naming the
helper rather than run: running a program named by a file is a decision for the user to make.
Writes keep every other key, and go to a 0600 temp file renamed into place.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deltaformat.environment import docker_config_dir
from deltaformat.errors import RegistryError
from deltaformat.fsutil import write_file_atomic

MAX_CONFIG_BYTES = 1 << 20  # a docker config is a few KiB; a bigger one is not what we expect


def config_path() -> Path:
    return docker_config_dir() / "config.json"


def _host_key(entry: str) -> str:
    """``host[:port]`` of an ``auths`` key written with or without a scheme (``https://host:5000/v1/``)."""
    return urlsplit(entry if "://" in entry else f"//{entry}").netloc.lower()


def _read() -> dict[str, Any]:
    path = config_path()
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise RegistryError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a docker config")
        config = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise RegistryError(f"{path}: not a JSON object")
    return config


def basic_credentials(host: str) -> tuple[str, str] | None:
    """(user, password) stored for ``host`` (``host[:port]``), or None when there is no entry."""
    config = _read()
    host = host.lower()
    helpers = config.get("credHelpers") or {}
    helper = next((name for key, name in helpers.items() if _host_key(key) == host), None) if isinstance(helpers, dict) else None
    entry = _auth_entry(config, host)
    if helper is None and entry is None and config.get("credsStore"):
        helper = config["credsStore"]
    if helper is not None:
        raise RegistryError(f"{config_path()}: the credentials for {host} are kept by the credential helper "
                            f"docker-credential-{helper}, which paramdelta does not run; use `paramdelta login {host}`")
    return _decode(entry, host) if entry is not None else None


def _auth_entry(config: dict[str, Any], host: str) -> Any:
    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        raise RegistryError(f"{config_path()}: 'auths' is not a JSON object")
    entry = next((value for key, value in auths.items() if _host_key(key) == host), None)
    # docker leaves {} under auths when a helper holds the secret: no usable entry then
    return entry if isinstance(entry, dict) and entry.get("auth") else None


def _decode(entry: dict[str, Any], host: str) -> tuple[str, str]:
    try:
        user, sep, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        sep = ""
    if not sep:
        raise RegistryError(f"{config_path()}: auths.{host}.auth is not base64 of 'user:password'")
    return user, password


def store(host: str, user: str, password: str) -> Path:
    """Record ``user:password`` for ``host`` under ``auths``, keeping every other key; returns the file."""
    config = _read()
    auths = _auths_without(config, host)
    auths[host] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    return _write(config | {"auths": auths})


def remove(host: str) -> bool:
    """Drop every ``auths`` entry for ``host``; False when there was none."""
    config = _read()
    auths = _auths_without(config, host)
    if len(auths) == len(config.get("auths") or {}):
        return False
    _write(config | {"auths": auths})
    return True


def _auths_without(config: dict[str, Any], host: str) -> dict[str, Any]:
    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        raise RegistryError(f"{config_path()}: 'auths' is not a JSON object")
    return {key: value for key, value in auths.items() if _host_key(key) != host.lower()}


def _write(config: dict[str, Any]) -> Path:
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old_umask = os.umask(0o077)  # the temp file is 0600 from its first byte: it holds a password
    try:
        write_file_atomic(path, (json.dumps(config, indent="\t") + "\n").encode())
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return path
