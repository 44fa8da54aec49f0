"""The control socket: `xomb-vmm boot --control PATH`, `xomb-vmm attach PATH`.

JSON lines over a UNIX socket.  A request is {"line": "regs --json"}; the reply is the
console's result {"ok": ..., "cmd": ..., "data": ..., "text": ...} (text: rich markup).
The VM serves each connection on its own thread; `attach` runs the same shell as the local
console with a RemoteBackend.
"""
from __future__ import annotations

import json
import os
import socket
import threading

from vmm.console_ui import COMMANDS, Commands


class ControlServer:
    def __init__(self, path: str, inspector):
        self.path = path
        self.commands = Commands(inspector)
        self._lock = threading.Lock()
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _serve(self):
        from devices.base import _block_signals
        _block_signals()
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn):
        f = conn.makefile("rwb")
        try:
            for raw in f:
                try:
                    req = json.loads(raw)
                    line = req.get("line", "")
                    if req.get("op") == "completions":
                        res = {"ok": True, "data": self.commands.completions()}
                    else:
                        with self._lock:
                            res = self.commands.execute(line)
                except ValueError as e:
                    res = {"ok": False, "error": f"bad request: {e}"}
                f.write(json.dumps(res, default=str).encode() + b"\n")
                f.flush()
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def close(self):
        try:
            self.sock.close()
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass


class RemoteBackend:
    """A console backend that forwards every line to a VM's control socket."""

    def __init__(self, path: str, timeout: float = 60.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.f = self.sock.makefile("rwb")

    def _call(self, req: dict) -> dict:
        self.f.write(json.dumps(req).encode() + b"\n")
        self.f.flush()
        line = self.f.readline()
        if not line:
            return {"ok": False, "error": "the VM closed the control socket (it stopped)"}
        return json.loads(line)

    def execute(self, line: str) -> dict:
        return self._call({"line": line})

    def completions(self) -> list[str]:
        r = self._call({"op": "completions"})
        return r.get("data") or list(COMMANDS)

    def close(self):
        self.sock.close()
