"""safetensors dtype names and their widths.

The format's tables (spec §3: dtype names; §5: codecs see elements as unsigned
little-endian integers of the dtype's width). No numpy and no torch here: the client
(which reads manifests and blobs only), the codecs and the registry import this; the
numpy types holding the raw bits are in deltaformat.rawbits.
"""

from __future__ import annotations

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
# dtypes a Δ can be taken on: fp32 arithmetic represents their differences well.
DELTA_DTYPES = frozenset({"F16", "BF16", "F32"})
