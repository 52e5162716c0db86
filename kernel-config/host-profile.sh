#!/bin/sh
# Prints the guest kernel profile this host needs: `pvm-compat` when /dev/kvm is served by
# kvm_pvm (software virtualization: a stock kernel never reaches user space there), else `microvm`.
# Keep in sync with Profile::for_host() in kernel-config/lib.rs.
if [ -d /sys/module/kvm_pvm ] || grep -qs '^kvm_pvm ' /proc/modules; then
  echo pvm-compat
else
  echo microvm
fi
