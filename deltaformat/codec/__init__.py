"""Codecs: how one chunk of raw element bits becomes one blob, and back.

A codec sees only a 1-D numpy array of unsigned integers holding the raw bits of the
elements (uint8/uint16/uint32/uint64 for 1/2/4/8-byte dtypes), never files or tensors.
It is looked up by the id recorded in the manifest; a reader refuses unknown ids.
Adding a codec is adding a module here and one line in ``_REGISTRY``.
"""

from __future__ import annotations

from deltaformat.codec.base import Codec, LossyCodec
from deltaformat.codec.bf16 import Bf16RankZstd
from deltaformat.codec.bytegroup import BytegroupZstd
from deltaformat.codec.lowrank import LowRankBf16
from deltaformat.codec.qgroup import QGroupZstd
from deltaformat.codec.rankzstd import RankZstd
from deltaformat.codec.sign import SignZstd
from deltaformat.errors import FormatError

# Lossy codecs (format v2) decode to fp32 Δ bits like the exact ones, so apply's chunk
# engine dispatches on the id alone; their ``lossy`` flag is what marks a stream inexact.
_REGISTRY: dict[str, Codec] = {c.id: c for c in (BytegroupZstd(), RankZstd(), Bf16RankZstd(), QGroupZstd(), SignZstd(), LowRankBf16())}

DEFAULT_DELTA_CODEC = RankZstd.id
DEFAULT_VALUES_CODEC = BytegroupZstd.id


def get_codec(codec_id: str) -> Codec:
    """Return the codec registered under ``codec_id``; unknown ids are a clear error."""
    try:
        return _REGISTRY[codec_id]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise FormatError(
            f"unknown codec {codec_id!r}: this paramdelta knows {known}; upgrade paramdelta to read this artifact"
        ) from None


def register_codec(codec: Codec) -> None:
    """Make ``codec`` available under its id (used by new codec modules)."""
    _REGISTRY[codec.id] = codec


def codec_ids() -> list[str]:
    """The exact codecs' ids: their decode gives back the encoded bits (spec §5.1-5.2)."""
    return sorted(k for k, c in _REGISTRY.items() if not c.lossy)


def lossy_codec_ids() -> list[str]:
    """The lossy codecs' ids (format v2, spec/format-v2.md §5): decode approximates the Δ that was encoded."""
    return sorted(k for k, c in _REGISTRY.items() if c.lossy)


def get_lossy_codec(codec_id: str) -> LossyCodec:
    """The lossy codec ``codec_id``; an exact or unknown one is an error naming it."""
    codec = get_codec(codec_id)
    if not isinstance(codec, LossyCodec):
        raise FormatError(f"codec {codec_id!r} is exact, not a lossy codec")
    return codec


__all__ = ["Codec", "LossyCodec", "get_lossy_codec", "get_codec", "register_codec", "codec_ids", "lossy_codec_ids",
           "DEFAULT_DELTA_CODEC", "DEFAULT_VALUES_CODEC"]
