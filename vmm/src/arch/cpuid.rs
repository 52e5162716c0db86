//! CPUID for each vCPU: KVM's supported set, with per-vCPU APIC IDs, the hypervisor bit and a
//! topology (leaf 0xb / 0x1f, leaf 4) that matches the vCPU count: one socket, one thread per core.
//! On a kvm_pvm host the KVM PV send-IPI feature is hidden (see [`HostKvm`]).

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

const LEAF_KVM_FEATURES: u32 = 0x4000_0001;

const ECX_HYPERVISOR: u32 = 1 << 31;
/// KVM_FEATURE_PV_SEND_IPI (Documentation/virt/kvm/x86/cpuid.rst).
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const EDX_HTT: u32 = 1 << 28;

/// Bits needed to number `n` things.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Which KVM serves /dev/kvm, for its quirks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKvm {
    /// KVM on VMX/SVM.
    Hardware,
    /// `kvm_pvm` (software virtualization). Its KVM_HC_SEND_IPI hypercall livelocks an SMP
    /// guest while it brings up its APs (measured: Linux 6.1 hangs after starting CPU 1, and
    /// boots with cpus=2 once the feature is hidden), so guests use plain APIC IPIs there.
    Pvm,
}

impl HostKvm {
    /// The same rule that picks the guest kernel: a kvm_pvm host needs the pvm-compat one.
    pub fn detect() -> Self {
        match kernel_config::Profile::for_host() {
            kernel_config::Profile::PvmCompat => HostKvm::Pvm,
            kernel_config::Profile::Microvm => HostKvm::Hardware,
        }
    }
}

/// Rewrites `cpuid` for vCPU `cpu_id` (= its APIC ID) of `cpu_count`.
pub fn filter(cpuid: &mut CpuId, cpu_id: u8, cpu_count: u8, host: HostKvm) {
    let (id, count) = (u32::from(cpu_id), u32::from(cpu_count));
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | (count << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26] cores per package - 1; EAX[25:14] threads sharing this cache - 1.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count - 1) << 26) | (sharing << 14);
            }
            LEAF_PMU => {
                // No virtual PMU: the guest must not program performance counters.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = id; // x2APIC ID
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: every vCPU is a core of the one package.
                        e.eax = bits_for(count);
                        e.ebx = count;
                        e.ecx = 1 | (2 << 8);
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_KVM_FEATURES if host == HostKvm::Pvm => {
                e.eax &= !KVM_FEATURE_PV_SEND_IPI;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_ids_and_topology() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 2,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_KVM_FEATURES,
                eax: 0xffff,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        filter(&mut c, 2, 3, HostKvm::Hardware);
        assert_eq!(
            c.as_slice()[4].eax,
            0xffff,
            "hardware KVM keeps its PV features"
        );
        filter(&mut c, 2, 3, HostKvm::Pvm);
        assert_eq!(c.as_slice()[4].eax, 0xffff & !KVM_FEATURE_PV_SEND_IPI);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 2);
        assert_eq!((s[0].ebx >> 16) & 0xff, 3);
        assert_eq!(s[0].ebx & 0xffff, 0x0800);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(s[1].edx, 2);
        assert_eq!(s[2].eax, 2); // 3 cores need 2 bits
        assert_eq!(s[2].ebx, 3);
        assert_eq!(s[3].ecx, 2); // invalid level
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
    }
}
