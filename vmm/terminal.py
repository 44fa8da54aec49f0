"""The host terminal side of the console (used by the CLI, not by the VMM core).

On a TTY, stdin goes into raw mode (no echo, no line editing, no signals: Ctrl-C
is byte 0x03 for the guest) but output post-processing stays on, so the guest's
"\\n" still returns the carriage.  The escape, as in QEMU:

    Ctrl-A x    quit (the VM stops, status 130)
    Ctrl-A h    show this help
    Ctrl-A a    send a literal Ctrl-A

The terminal is restored on every exit path: the context manager, plus atexit
for paths that bypass it.  On a pipe, bytes are forwarded as they are; EOF is fine.
"""
from __future__ import annotations

import atexit
import os
import sys
import termios

from devices.console import ConsoleIO, ConsoleQuit, FdSink, FdSource

CTRL_A = 0x01
HINT = "xomb-vmm: Ctrl-A x quits, Ctrl-A h for help"
HELP = ("\r\nxomb-vmm console escapes:\r\n"
        "  Ctrl-A x   quit\r\n"
        "  Ctrl-A h   this help\r\n"
        "  Ctrl-A a   send Ctrl-A to the guest\r\n")


class EscapeFilter:
    """Scans input for Ctrl-A sequences (state kept across reads)."""

    def __init__(self, on_help=None, on_monitor=None):
        self.pending = False
        self.on_help = on_help
        self.on_monitor = on_monitor        # Ctrl-A c: the inspection console (--console)

    def feed(self, data: bytes) -> bytes:
        """Return the bytes for the guest; raise ConsoleQuit on Ctrl-A x."""
        out = bytearray()
        for b in data:
            if self.pending:
                self.pending = False
                c = chr(b).lower()
                if c == "x":
                    raise ConsoleQuit()
                if c == "c" and self.on_monitor is not None:
                    self.on_monitor()
                    continue
                if c == "h" or c == "?":
                    if self.on_help:
                        self.on_help()
                    continue
                if c == "a" or b == CTRL_A:
                    out.append(CTRL_A)
                    continue
                out += bytes([CTRL_A, b])        # not an escape: pass both through
            elif b == CTRL_A:
                self.pending = True
            else:
                out.append(b)
        return bytes(out)


class EscapeSource:
    """An input source with the Ctrl-A escape."""

    def __init__(self, inner, on_help=None, on_monitor=None):
        self.inner = inner
        self.filter = EscapeFilter(on_help, on_monitor)

    def read(self, timeout: float) -> bytes | None:
        d = self.inner.read(timeout)
        if not d:
            return d
        return self.filter.feed(d)


def make_raw(attrs: list) -> list:
    """termios attributes for raw input with output processing kept."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
               | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


class Terminal:
    """Context manager: raw mode on a TTY stdin, restored on every exit path."""

    def __init__(self, fd: int = 0, raw: bool = True):
        self.fd = fd
        self.saved = None
        self.is_tty = os.isatty(fd)
        self.raw = raw and self.is_tty

    def __enter__(self):
        if self.raw:
            self.saved = termios.tcgetattr(self.fd)
            atexit.register(self.restore)
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, make_raw(self.saved))
        return self

    def restore(self):
        if self.saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSAFLUSH, self.saved)
            except termios.error:
                pass
            self.saved = None

    def __exit__(self, *exc):
        self.restore()
        try:
            atexit.unregister(self.restore)
        except Exception:
            pass
        return False


def stdio_console(interactive: bool, in_fd: int = 0, out_fd: int = 1,
                  on_monitor=None) -> tuple[ConsoleIO, Terminal]:
    """ConsoleIO over stdin/stdout and the Terminal to enter around the run.

    interactive: a TTY stdin is put in raw mode with the Ctrl-A escape.
    Not interactive (`xomb-vmm run`): a TTY stdin is left alone and not read
    (Ctrl-C stays SIGINT); a pipe is forwarded.
    """
    term = Terminal(in_fd, raw=interactive)
    if term.is_tty and not interactive:
        src = None
    elif term.is_tty:
        src = EscapeSource(FdSource(in_fd), on_help=lambda: os.write(2, HELP.encode()),
                           on_monitor=on_monitor)
    else:
        src = FdSource(in_fd)
    return ConsoleIO(FdSink(out_fd), src), term


def hint(stream=None) -> None:
    stream = stream or sys.stderr
    stream.write(HINT + "\n")
    stream.flush()
