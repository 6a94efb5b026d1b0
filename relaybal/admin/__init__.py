"""Administration: the runtime API (HAProxy's line protocol over a UNIX socket) and its dumps.

:mod:`.stats` renders what the process knows in HAProxy's formats (``show
info``, ``show stat`` CSV, ``show servers state``, ``show table``);
:mod:`.commands` parses and runs commands with no I/O; :mod:`.runtime` is the
socket protocol and its listener.
"""
