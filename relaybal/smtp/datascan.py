"""The DATA (and BDAT) body scanner: chunk-level, never a Python step per line.

A client's message body arrives in socket-sized chunks. :class:`DataScanner`
finds the end of DATA, removes dot-stuffing, checks line lengths, size, bare
CR/LF and NUL bytes, and hands on clean chunks, using only C-level bytes
operations (``find``, ``count``, ``replace``, ``split``) per chunk.

Rules (the same for any split of the same bytes into chunks):

- DATA ends only at ``<CR><LF>.<CR><LF>`` in the bytes as received; the first
  ``<CR><LF>`` may be the one ending the DATA command. ``\\n.\\n``,
  ``\\r.\\r``, ``\\n.\\r\\n``, ``\\r\\n\\x00.\\r\\n`` and the like are body.
- A line that follows a real CRLF (or starts the body) and begins with ``.``
  loses that ``.`` (RFC 5321 section 4.5.2).
- A lone CR or LF, or a NUL byte, is either an error (``normalize=False``:
  scanning goes on to the real end, nothing more is passed on) or repaired
  (``normalize=True``: a lone CR or LF becomes CRLF, NUL bytes are removed).
  So what is passed on is always CRLF lines without NUL: a downstream server
  that treats these bytes differently cannot see an end of data relaybal did
  not see. Lines after a lone CR/LF are not dot-unstuffed; they are passed on
  as they are and get dot-stuffed again on the way out.
- A line longer than ``max_line`` octets (CRLF included, counted between
  LFs), or a body larger than ``max_size`` octets (as passed on), is an
  error; scanning goes on to the end.

Memory: at most one partial line (``max_line`` octets) is held between chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from typing import Final

_END: Final = b"\r\n.\r\n"
_CRLF: Final = b"\r\n"
_BARE_NEWLINE: Final = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class BodyError(Enum):
    """Why a body is refused (at the end of DATA, never in the middle)."""

    BARE_NEWLINE = "bare CR or LF"
    NUL = "NUL byte"
    LINE_TOO_LONG = "line too long"
    TOO_BIG = "message too big"


class DataScanner:
    """Scans one message body, chunk by chunk.

    ``emit`` receives the clean body in order (CRLF lines, unstuffed); it is
    not called once an error was found. For DATA call :meth:`feed` until it
    returns the bytes that followed the end (possibly ``b""``); for BDAT call
    :meth:`feed_raw` for each chunk's bytes and :meth:`finish_raw` after the
    last one. ``error`` is the first problem found (None if none); ``size``
    counts the octets passed to ``emit``.

    ``after_crlf`` says whether the command before the body ended with a real
    CRLF; if not (a bare-LF command line tolerated by ``normalize``), a
    ``.\\r\\n`` at the very start is not the end.
    """

    def __init__(
        self,
        emit: Callable[[bytes], object],
        *,
        normalize: bool,
        max_line: int,
        max_size: int,
        after_crlf: bool = True,
    ) -> None:
        self.emit = emit
        self.normalize = normalize
        self.max_line = max_line
        self.max_size = max_size
        self.error: BodyError | None = None
        self.size = 0
        self.done = False
        self._carry = b""
        self._crlf = after_crlf
        self._tail = b""

    # -- DATA

    def feed(self, data: bytes) -> bytes | None:
        """Scan ``data``; None while the end was not seen, else the bytes after it."""
        if self.error is not None:
            buf = self._tail + data
            end = buf.find(_END)
            if end >= 0:
                self.done = True
                return buf[end + 5 :]
            self._tail = buf[-4:]
            return None
        skip = 2 if self._crlf else 0
        carry = self._carry
        work = (_CRLF if skip else b"") + (carry + data if carry else data)
        end = work.find(_END)
        if end >= 0:
            self._carry = b""
            self._process(work[: end + 2], skip)
            self.done = True
            return work[end + 5 :]
        self._cut(work, skip)
        return None

    # -- BDAT

    def feed_raw(self, data: bytes) -> None:
        """Scan one piece of a BDAT chunk (no end-of-data, no dot transparency)."""
        if self.error is not None or not data:
            return
        skip = 2 if self._crlf else 0
        carry = self._carry
        work = (_CRLF if skip else b"") + (carry + data if carry else data)
        self._cut(work, skip, unstuff=False)

    def finish_raw(self) -> None:
        """The last BDAT chunk was scanned: pass on the last line, ending it with CRLF."""
        self.done = True
        if self.error is not None or not self._carry:
            return
        carry, self._carry = self._carry, b""
        if carry.endswith(b"\r"):
            # A final lone CR: normalize turns it into the line end it stands for.
            if not self.normalize:
                self._fail(BodyError.BARE_NEWLINE)
                return
            carry = carry[:-1]
        self._process(carry + _CRLF, 0, unstuff=False)

    # -- shared

    def _cut(self, work: bytes, skip: int, unstuff: bool = True) -> None:
        """Process the complete lines of ``work``; keep the partial last one."""
        last_lf = work.rfind(b"\n")
        if last_lf < skip:
            # No line end yet: everything is one partial line.
            if len(work) - skip >= self.max_line:
                self._fail(BodyError.LINE_TOO_LONG)
                self._carry = b""
                self._tail = work[-4:]
            else:
                self._carry = work[skip:]
            return
        self._crlf = last_lf > 0 and work[last_lf - 1] == 0x0D
        self._carry = work[last_lf + 1 :]
        self._process(work[: last_lf + 1], skip, unstuff)
        if self.error is not None:
            self._tail = work[-4:]
            self._carry = b""
        elif len(self._carry) >= self.max_line:
            self._fail(BodyError.LINE_TOO_LONG)
            self._tail = work[-4:]
            self._carry = b""

    def _process(self, segment: bytes, skip: int, unstuff: bool = True) -> None:
        """Check and emit ``segment``: whole lines, led by ``skip`` octets of virtual CRLF."""
        lines = segment[skip:] if skip else segment
        if len(lines) >= self.max_line and max(map(len, lines.split(b"\n"))) >= self.max_line:
            self._fail(BodyError.LINE_TOO_LONG)
            return
        crlf = segment.count(_CRLF)
        bare = segment.count(b"\n") != crlf or segment.count(b"\r") != crlf
        nul = b"\x00" in lines
        if (bare or nul) and not self.normalize:
            self._fail(BodyError.BARE_NEWLINE if bare else BodyError.NUL)
            return
        out = segment.replace(b"\r\n.", _CRLF) if unstuff else segment
        if bare:
            out = _BARE_NEWLINE.sub(_CRLF, out)
        if nul:
            out = out.replace(b"\x00", b"")
        if skip:
            out = out[skip:]
        self.size += len(out)
        if self.size > self.max_size:
            self._fail(BodyError.TOO_BIG)
            return
        if out:
            self.emit(out)

    def _fail(self, error: BodyError) -> None:
        if self.error is None:
            self.error = error
