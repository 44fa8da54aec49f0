# The KVM binding is a cffi API-mode extension built over the system's <linux/kvm.h>.
from setuptools import setup

setup(cffi_modules=["vmm/kvm_build.py:ffibuilder"])
