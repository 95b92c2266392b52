"""Messages that C libraries print while pdseg decodes a file, attributed to that file.

libjpeg ("Corrupt JPEG data: 12 extraneous bytes before marker 0xd9", "Premature end of JPEG
file") and libpng ("libpng warning: iCCP: known incorrect sRGB profile") write straight to the
process's standard error from C, so in a folder run they appear with no file name, between the
progress bar's frames. While the ``pdseg`` command runs (:func:`routed`, entered by the console
script), file descriptor 2 is a pipe that one thread reads and forwards unchanged to the real
standard error, except for such library lines written during a decode (:func:`attributed`): those
go back to the decode as messages, and the file's result shows them under its own name.

A decode writes a begin and an end mark into the same pipe around the library call; pipe writes
this small are atomic and read in order, so every line between the marks was written while the
decode ran. A line written while several decodes overlapped (reader threads) could be any one's:
:func:`decode` then decodes that file again alone, with new decodes held at the gate, so the
message lands on the right file (corrupt files are rare, so the common path stays parallel).
Outside :func:`routed` (the Python API, tests in-process) nothing is redirected and no messages
come back.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# How libjpeg's and libpng's default message handlers start a message (OpenCV keeps both
# defaults). libpng writes the newline in a second write, so a message is complete at its newline
# or at the decode's end mark, whichever comes first.
LIBRARY_START = re.compile(
    rb"(?:Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Unsupported marker type"
    rb"|Bogus marker|Warning: unknown JFIF|Inconsistent progression|Huffman table|Quantization table"
    rb"|JPEG datastream|Not a JPEG file|Improper call to JPEG|libpng (?:warning|error)"
    # OpenCV's own log lines from its codecs, e.g. "[ WARN:0@2.359] global grfmt_png.cpp:793
    # readFromStreamOrBuffer PNG input buffer is incomplete" for a truncated PNG, and from the
    # decoding calls around them: "[ERROR:0@2.759] global loadsave.cpp:1409 imdecode_
    # imdecode_(''): can't read data: ..." for a truncated TIFF (OpenCV's other modules excluded)
    rb"|\[ ?(?:WARN|ERROR):[0-9]+@[0-9.]+\] global (?:grfmt_|loadsave\.cpp|bitstrm\.cpp|exif\.cpp))"
)
# with the blank line after it: OpenCV's error lines end in the exception's own newline and then the
# log's, which was forwarded alone, a blank line per file (five in a folder run), under -q too. Not
# where pdseg's own line quotes one ("x.png: the decoder said: libpng error: ..."): written while
# another decode ran, its words were taken for that decode's, and the rest of the line with them
LIBRARY_MESSAGE = re.compile(rb"(?<!the decoder said: )(?:" + LIBRARY_START.pattern + rb")[^\n]*(?:\n+|$)")
# OpenCV's log prefix (level, time, scope, source line, function): the file's own name says more
_OPENCV_PREFIX = re.compile(r"^\[ ?\w+:[0-9]+@[0-9.]+\] global \S+ \S+ ")
# what loadsave.cpp repeats of an exception: "imdecode_(''): " before the reason, and OpenCV's
# "OpenCV(4.x) /path/grfmt_tiff.cpp:926: error: (-2:Unspecified error) " and " in function 'f'"
_OPENCV_NOISE = re.compile(
    r"^imdecode_\('[^']*'\): |OpenCV\([^)]*\) \S+: error: \([^)]*\) | in function '\w+'$"
)
_MARK = b"\x1epdseg-decode "  # record separator + tag: never the start of a real message
_WAIT_S = 2.0  # the reader hands a decode's lines back within microseconds; never hang on it


class Messages(list[str]):
    """What the libraries printed during one decode; ``ambiguous`` when another decode overlapped."""

    ambiguous: bool = False


class _Router:
    """fd 2 -> pipe -> one reader thread -> the saved real stderr, minus attributed library lines."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.real = os.dup(2)
        self.read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        # the marks go into the pipe through a write end of their own, not through fd 2: where
        # something replaces fd 2 later (pytest's capture did), a decode's end mark still reaches
        # the reader at once, and only the libraries' lines go elsewhere, unattributed, instead of
        # every decode waiting out _WAIT_S for a mark written where the reader never looks
        self.marks = write_end
        self.marks_lock = threading.Lock()  # held by a mark's write and by close(): never the reader
        self.lock = threading.Lock()
        self.open: dict[int, Messages] = {}  # decodes in flight -> the messages so far
        self.finished: dict[int, Messages] = {}  # decodes whose end mark was read
        self.done: dict[int, threading.Event] = {}
        self.tokens = itertools.count(1)
        self.closed = False  # the reader has read close()'s end mark
        self.thread = threading.Thread(target=self._read, name="pdseg-stderr", daemon=True)
        self.thread.start()

    # -- the decoding side -------------------------------------------------------------------

    def begin(self) -> int:
        token = next(self.tokens)
        with self.lock:
            self.done[token] = threading.Event()
        self._write_mark(b"begin %d\n" % token)
        return token

    def end(self, token: int) -> Messages:
        if self._write_mark(b"end %d\n" % token):
            self.done[token].wait(_WAIT_S)
        with self.lock:
            self.done.pop(token, None)
            self.open.pop(token, None)  # only if the reader never saw the end mark
            return self.finished.pop(token, Messages())

    def _write_mark(self, what: bytes) -> bool:
        """Write a mark into the pipe; False once :meth:`close` has closed it (a decode still running
        as the command ends: its mark is dropped, never written to a file that took the number)."""
        with self.marks_lock:
            if self.marks < 0:
                return False
            os.write(self.marks, _MARK + what)
            return True

    def sync(self) -> None:
        """Return once the reader has forwarded what was written to fd 2 before: an end mark for a
        token no decode began comes back as nothing but the event."""
        token = next(self.tokens)
        with self.lock:
            self.done[token] = threading.Event()
        self.end(token)

    # -- the reader thread -------------------------------------------------------------------

    def _read(self) -> None:
        pending = b""
        while not self.closed and (chunk := os.read(self.read_end, 65536)):
            pending = self._consume(pending + chunk)
        if pending:
            self._forward(pending)

    def _consume(self, data: bytes) -> bytes:
        """Handle ``data``; return what must wait for more bytes (a mark cut short by the read, or
        a library message whose newline has not come yet)."""
        while data:
            at = data.find(_MARK)
            if at < 0:
                cut = data.rfind(_MARK[:1])
                if cut >= 0 and _MARK.startswith(data[cut:]):
                    return self._text(data[:cut], complete=False) + data[cut:]
                return self._text(data, complete=False)
            self._text(data[:at], complete=True)  # the mark ends whatever a decode wrote before it
            newline = data.find(b"\n", at)
            if newline < 0:
                return data[at:]
            kind, token = data[at + len(_MARK) : newline].split()
            if kind == b"close":  # see close(): what follows came from other processes, later
                self.closed = True
                self._forward(data[newline + 1 :])
                return b""
            self._mark(kind, int(token))
            data = data[newline + 1 :]
        return b""

    def _text(self, text: bytes, complete: bool) -> bytes:
        """Forward ``text`` at once (progress bars redraw without newlines), minus the library
        messages written while decodes were in flight; return an unfinished one to wait for."""
        with self.lock:
            in_flight = list(self.open.values())
        if not in_flight:
            self._forward(text)
            return b""
        tail = b""
        if not complete:
            start = max(text.rfind(b"\n"), text.rfind(b"\r")) + 1
            if LIBRARY_START.match(text, start):
                text, tail = text[:start], text[start:]
        kept, last = [], 0
        for match in LIBRARY_MESSAGE.finditer(text):
            message = match.group().decode("utf-8", "replace").strip()
            message = _OPENCV_NOISE.sub("", _OPENCV_PREFIX.sub("", message))
            for messages in in_flight:
                messages.append(message)
                messages.ambiguous |= len(in_flight) > 1
            kept.append(text[last : match.start()])
            last = match.end()
        self._forward(b"".join([*kept, text[last:]]))
        return tail

    def _mark(self, kind: bytes, token: int) -> None:
        with self.lock:
            if kind == b"begin":
                self.open[token] = Messages()
                return
            self.finished[token] = self.open.pop(token, Messages())
            event = self.done.get(token)
        if event is not None:
            event.set()

    def _forward(self, data: bytes) -> None:
        if not data:
            return
        with contextlib.suppress(OSError):
            os.write(self.real, data)

    def close(self) -> None:
        """Give fd 2 back to the real stderr, once the reader has forwarded all written before.

        End-of-file on the pipe cannot say when that is: child processes inherit fd 2, the pipe's
        write end, and some outlive the command (the resource trackers that multiprocessing and
        loky start for eval's worker pool live until this process exits), so waiting for it took
        the whole timeout. Instead, close restores fd 2 first and then writes an end mark into
        the pipe through the marks' own write end: everything this process wrote to fd 2 before
        lies ahead of the mark (one pipe, read in order), and the reader stops at the mark. Bytes
        that other processes wrote after it in the same read are forwarded too; later ones (a
        tracker's warning as this process exits) find no reader."""
        sys.stderr.flush()
        with self.marks_lock:
            try:
                os.dup2(self.real, 2)  # from now on this process writes straight to the real stderr
                with contextlib.suppress(OSError):  # no mark: the reader stops at end-of-file
                    os.write(self.marks, _MARK + b"close 0\n")
            finally:
                os.close(self.marks)
                self.marks = -1
        self.thread.join(_WAIT_S)
        if not self.thread.is_alive():  # else it still reads and forwards: leave it its fds
            os.close(self.read_end)
            os.close(self.real)


_router: _Router | None = None
# set while a command routes: its worker processes (eval's, spawned) call route_worker()
_INHERIT = "PDSEG_ROUTE_DECODER_MESSAGES"


@contextlib.contextmanager
def routed() -> Iterator[None]:
    """Route fd 2 through pdseg for the duration (the ``pdseg`` command; not for library use)."""
    global _router
    if _router is not None or os.name != "posix":
        yield
        return
    try:
        _router = _Router()
    except OSError:  # no fd 2, or no pipes: leave stderr alone
        yield
        return
    os.environ[_INHERIT] = "1"
    try:
        yield
    finally:
        os.environ.pop(_INHERIT, None)
        router, _router = _router, None
        router.close()


def drain() -> None:
    """Wait (two seconds at most) until what this process wrote to standard error so far has
    reached the real one, before writing to standard output: a progress bar's last frame and its
    clearing otherwise came after the table that followed them (one terminal, two paths to it)."""
    router = _router
    if router is not None:
        sys.stderr.flush()
        router.sync()


def route_worker() -> None:
    """In a worker process of a command that routes (eval's scoring processes): route this
    process's fd 2 too, for the rest of its life (into the command's, which forwards it)."""
    global _router
    if _router is None and os.environ.get(_INHERIT) == "1" and os.name == "posix":
        with contextlib.suppress(OSError):
            _router = _Router()


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) has no reader thread: it must not wait on one."""
    global _router, _solo
    _router = None
    _solo = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


_solo = threading.RLock()  # held by a decode that must run alone; other decodes wait to begin


def decode(call: Callable[[], T]) -> tuple[T, list[str]]:
    """``call()`` (one decode) and what libjpeg or libpng printed during it, naming only this
    call's messages (none outside :func:`routed`). Exceptions from ``call`` propagate."""
    router = _router
    if router is None:
        return call(), []
    result, messages = _attributed(router, call)
    if messages.ambiguous:  # another decode overlapped a message: do this one again, alone
        with _solo:
            for _ in range(3):  # decodes already in flight when the gate closed may overlap once
                result, messages = _attributed(router, call)
                if not messages.ambiguous:
                    break
    return result, list(messages)


def _attributed(router: _Router, call: Callable[[], T]) -> tuple[T, Messages]:
    with _solo:  # the gate: closed while another thread decodes alone, open (and re-entrant) else
        token = router.begin()
    try:
        result = call()
    finally:
        messages = router.end(token)
    return result, messages
