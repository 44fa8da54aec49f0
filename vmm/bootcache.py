"""A cache of built boot states (build/bootcache/).

Building the boot image (page tables, frame table, ELF loading, the boot
archive: vmm/bootimage.py) is ~30 ms of Python, the largest VMM-side part of
boot to prompt.  Its result depends only on its inputs, so it is kept on disk,
keyed by a hash of: the kernel image and layout, every program, every keyword
argument, and the source of bootimage.py and abi.py.  A hit is a pickle load
(~1 ms).  XOMB_NO_BOOTCACHE=1 turns it off.

    boot = build_boot_state_cached(kernel, programs, ram_bytes=..., host=..., ...)
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

from vmm import paths

KEEP = 16               # cache entries kept (oldest removed)


def _key(kernel, programs, kwargs) -> str:
    from vmm import abi, bootimage
    h = hashlib.sha256()
    for mod in (bootimage, abi):
        h.update(Path(mod.__file__).read_bytes())
    h.update(bytes(kernel.image))
    meta = {k: v for k, v in vars(kernel).items() if k not in ("image", "path")}
    h.update(repr(sorted(meta.items(), key=lambda kv: kv[0])).encode())
    for name in sorted(programs):
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256(programs[name]).digest())
    h.update(repr(sorted(kwargs.items())).encode())
    return h.hexdigest()[:32]


def build_boot_state_cached(kernel, programs, cache_dir: Path | None = None, **kwargs):
    from vmm.bootimage import build_boot_state
    if os.environ.get("XOMB_NO_BOOTCACHE"):
        return build_boot_state(kernel, programs, **kwargs)
    try:
        key = _key(kernel, programs, kwargs)
    except Exception:                   # an unusual kernel object: just build
        return build_boot_state(kernel, programs, **kwargs)
    d = Path(cache_dir or paths.BUILD / "bootcache")
    f = d / f"{key}.pickle"
    try:
        with open(f, "rb") as fh:
            return pickle.load(fh)
    except (OSError, pickle.PickleError, EOFError, AttributeError, ImportError, TypeError):
        pass
    boot = build_boot_state(kernel, programs, **kwargs)      # errors propagate as before
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{key}.{os.getpid()}"
        with open(tmp, "wb") as fh:
            pickle.dump(boot, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(f)
        old = sorted(d.glob("*.pickle"), key=lambda p: p.stat().st_mtime)
        for p in old[:-KEEP]:
            p.unlink(missing_ok=True)
    except (OSError, pickle.PickleError, TypeError, AttributeError):
        pass                            # not picklable or no room: no cache, still a boot
    return boot
