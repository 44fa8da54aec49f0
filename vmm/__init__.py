"""xomb-vmm: a Python KVM hypervisor for the XOmB exokernel."""
