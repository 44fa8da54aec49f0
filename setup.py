# The KVM binding and the NIC's native data path are cffi API-mode extensions
# (vmm/kvm_build.py over the system's <linux/kvm.h>; devices/nic_build.py).
from setuptools import setup

setup(cffi_modules=["vmm/kvm_build.py:ffibuilder", "devices/nic_build.py:ffibuilder"])
