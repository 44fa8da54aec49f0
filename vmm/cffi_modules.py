"""Load a cffi (API mode) extension of this project: the installed one, or build it.

`pip install -e .` compiles every module setup.py lists in `cffi_modules` (the KVM
binding vmm/kvm_build.py, the NIC's data path devices/nic_build.py).  A tree used without
that install, or whose build script is newer than the installed module, compiles it here
once into build/cffi/ (privately, then renamed into place, so concurrent users never see
a half-written .so) and loads it from there.

    mod = load("vmm._kvm_cffi", "vmm/kvm_build.py")     # -> mod.ffi, mod.lib
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from vmm.paths import BUILD, ROOT


def load(name: str, build_script: str):
    """`name` is the dotted module name ("pkg._x_cffi"); `build_script` the path of the
    script defining `ffibuilder`, relative to the repository."""
    script = ROOT / build_script
    try:
        src_mtime = os.path.getmtime(script)
    except OSError:
        src_mtime = 0
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin and os.path.getmtime(spec.origin) >= src_mtime:
        return importlib.import_module(name)            # installed and up to date
    pkg, leaf = name.rsplit(".", 1)
    out = BUILD / "cffi" / pkg
    hits = sorted(out.glob(f"{leaf}*.so")) if out.is_dir() else []
    so = str(hits[0]) if hits and hits[0].stat().st_mtime >= src_mtime else None
    if so is None:
        import tempfile
        builder = importlib.import_module(build_script[:-3].replace("/", ".")).ffibuilder
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as work:
            built = builder.compile(tmpdir=work, verbose=False)
            so = str(out / os.path.basename(built))
            os.replace(built, so)
    spec = importlib.util.spec_from_file_location(name, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod
