"""PROXY protocol (HAProxy's doc/proxy-protocol.txt, v1 and v2): encoders and a strict parser.

Pure functions with no reactor: ``encode_v1``/``encode_v2`` build the header a
connection to a backend starts with; ``parse`` reads one from the bytes a
trusted client sent so far.
"""

from relaybal.proxyproto.header import (
    DEFAULT_MAX_V2_LENGTH,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Incomplete,
    Invalid,
    Parsed,
    ParseResult,
    ProxyHeader,
)
from relaybal.proxyproto.parser import parse
from relaybal.proxyproto.v1 import encode_v1
from relaybal.proxyproto.v2 import encode_v2

__all__ = [
    "DEFAULT_MAX_V2_LENGTH",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "Incomplete",
    "Invalid",
    "ParseResult",
    "Parsed",
    "ProxyHeader",
    "encode_v1",
    "encode_v2",
    "parse",
]
