"""Hypothesis strategies for the fuzz targets: random bytes, and mutations of the seed corpus."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

CORPUS = Path(__file__).resolve().parent / "corpus"


@functools.cache
def corpus(target: str) -> tuple[bytes, ...]:
    """The seed inputs of *target* (``tests/fuzz/corpus/<target>/*``), in name order."""
    return tuple(path.read_bytes() for path in sorted((CORPUS / target).iterdir()) if path.is_file())


_INSERTS = [b"\r\n", b"\n", b"\r", b"\x00", b".", b" ", b"<", b">", b"@", b"\xff", b"\r\n.\r\n", b"=", b'"',
            b":", b"[", b"]"]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed with a few random edits: bytes replaced, inserted, deleted, repeated, other seeds spliced in."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        operation = draw(st.sampled_from(["replace", "insert", "delete", "repeat", "splice", "truncate"]))
        if operation == "replace":
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif operation == "insert":
            data[at:at] = draw(st.sampled_from(_INSERTS))
        elif operation == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=16))]
        elif operation == "repeat":
            piece = data[at : at + draw(st.integers(min_value=1, max_value=64))]
            data[at:at] = piece * draw(st.integers(min_value=1, max_value=40))
        elif operation == "splice":
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(min_value=0, max_value=len(other))) :]
        else:
            del data[at:]
    return bytes(data)


def inputs(target: str, max_size: int = 2000) -> st.SearchStrategy[bytes]:
    """What a target is fed: random bytes, the seeds themselves, and mutated seeds (most often)."""
    seeds = corpus(target)
    return st.one_of(
        st.binary(max_size=max_size),
        st.sampled_from(seeds),
        mutated(seeds),
        mutated(seeds),
        mutated(seeds),
    )


# --------------------------------------------------------------------------- structured configs

_WORDS = ["5s", "0", "-1s", "1d", "10M", "0K", "tcp:0", "127.0.0.1:25", "[::1]:25", "unix:/x", "roundrobin",
          "source", "relay", "splice", "v2", "spool", "cut-through", "10.0.0.0/8", "TLSv1.3", "PLAIN",
          "999999999999999999999s", "1e9", "ms"]  # fmt: skip
_leaves = st.one_of(
    st.none().map(lambda _: "x"),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(_WORDS),
    st.lists(st.text(max_size=10), max_size=3),
)


def _values(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    def nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)

    return st.recursive(leaf, nest, max_leaves=6)


@st.composite
def mutated_config(draw: st.DrawFn) -> dict[str, Any]:
    """A seed configuration (decoded) with a few values replaced, keys dropped or added."""
    documents = [tomllib.loads(seed.decode()) for seed in corpus("config")]
    document = draw(st.sampled_from(documents))

    def tables(node: Any, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            out.append(node)
            for value in node.values():
                tables(value, out)
        elif isinstance(node, list):
            for value in node:
                tables(value, out)
        return out

    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        found = tables(document, [])
        table = draw(st.sampled_from(found))
        keys = sorted(table)
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if action == "add" or not keys:
            table[draw(st.text(max_size=12))] = draw(_values(_leaves))
        elif action == "drop":
            del table[draw(st.sampled_from(keys))]
        else:
            table[draw(st.sampled_from(keys))] = draw(_values(_leaves))
    return document
