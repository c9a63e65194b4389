//! vCPU state at entry, as Firecracker sets it up: long mode with an
//! identity map of the first 4 GiB, a flat GDT, rsi pointing at the zero
//! page; CPUID from KVM's supported list, filtered per vCPU; boot MSRs,
//! FPU defaults and the LAPIC's LINT0/LINT1 wired as a PC's.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use vmm::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::{Error, Result};

/// Flat GDT: null, kernel code (64-bit), kernel data, TSS, user data,
/// user code (64-bit). Values are the access/flags halves of the
/// descriptors, as in Firecracker's `gdt_entry(flags, base, limit)`.
const GDT: [(u16, u32, u32); 6] = [
    (0, 0, 0),
    (0xa09b, 0, 0xfffff),
    (0xc093, 0, 0xfffff),
    (0x808b, 0, 0xfffff),
    (0xc0f3, 0, 0xfffff),
    (0xa0fb, 0, 0xfffff),
];
/// Selectors into `GDT`.
pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const TSS_SEL: u16 = 0x18;
pub const USER_DS: u16 = 0x20 | 3;
pub const USER_CS: u16 = 0x28 | 3;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is always set; IOPL 3 lets ring 3 use in/out.
const RFLAGS_RESERVED: u64 = 2;
const RFLAGS_IOPL3: u64 = 3 << 12;

fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

fn kvm_segment_from_gdt(entry: u64, index: u16, rpl: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = ((entry >> 32) & 0xf_0000) | (entry & 0xffff);
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: if g == 1 {
            ((raw_limit << 12) | 0xfff) as u32
        } else {
            raw_limit as u32
        },
        selector: (index * 8) | rpl,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: 0,
    }
}

/// Writes the GDT, the empty IDT and the identity-mapping page tables.
/// `user`: the pages are also reachable from ring 3 (for the accelerator
/// probe's ring-3 loop; a kernel replaces these tables at once anyway).
pub fn write_boot_tables(mem: &GuestMemoryMmap, user: bool) -> Result<()> {
    let w = |addr: u64, v: u64| {
        mem.write_obj(v, GuestAddress(addr))
            .map_err(|e| Error::GuestMemory(format!("boot tables at {addr:#x}: {e}")))
    };
    for (i, &(flags, base, limit)) in GDT.iter().enumerate() {
        w(GDT_ADDR + 8 * i as u64, gdt_entry(flags, base, limit))?;
    }
    w(IDT_ADDR, 0)?;
    // Present, writable (+ user).
    let table = if user { 0x7 } else { 0x3 };
    w(PML4_ADDR, PDPT_ADDR | table)?;
    for gib in 0..IDENTITY_GIB {
        let pd = PD_ADDR + gib * 0x1000;
        w(PDPT_ADDR + gib * 8, pd | table)?;
        for j in 0..512u64 {
            // 2 MiB pages: PS | the table bits.
            w(pd + j * 8, (gib << 30) | (j << 21) | 0x80 | table)?;
        }
    }
    Ok(())
}

/// Where a vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub rip: u64,
    /// rsi: the zero page for a Linux kernel.
    pub rsi: u64,
    /// Start in ring 3 (with IOPL 3) rather than ring 0.
    pub user: bool,
}

/// Sets registers, segments, control registers, FPU and MSRs of `vcpu`.
pub fn setup_registers(vcpu: &VcpuFd, entry: Entry) -> Result<()> {
    let ctx = |what: &'static str| move |e: kvm_ioctls::Error| Error::Kvm { what, source: e };
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(ctx("KVM_GET_SREGS"))?;
    setup_sregs(&mut sregs, entry.user);
    vcpu.set_sregs(&sregs).map_err(ctx("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rflags: RFLAGS_RESERVED | if entry.user { RFLAGS_IOPL3 } else { 0 },
        rip: entry.rip,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: entry.rsi,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ctx("KVM_SET_REGS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ctx("KVM_SET_FPU"))?;
    setup_msrs(vcpu)
}

fn setup_sregs(sregs: &mut kvm_sregs, user: bool) {
    let entries: Vec<u64> = GDT.iter().map(|&(f, b, l)| gdt_entry(f, b, l)).collect();
    let (code, data, rpl) = if user { (5, 4, 3) } else { (1, 2, 0) };
    let cs = kvm_segment_from_gdt(entries[code], code as u16, rpl);
    let ds = kvm_segment_from_gdt(entries[data], data as u16, rpl);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (entries.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = cs;
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = kvm_segment_from_gdt(entries[3], 3, 0);
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let values = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        // Fast string operations enabled, as firmware leaves it.
        (MSR_IA32_MISC_ENABLE, 1),
        // MTRRs enabled, default type write-back.
        (MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ];
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| Error::Setup(format!("MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(|e| Error::Kvm {
        what: "KVM_SET_MSRS",
        source: e,
    })?;
    if set != entries.len() {
        return Err(Error::Setup(format!(
            "KVM refused MSR {:#x} (set {set} of {})",
            values[set].0,
            entries.len()
        )));
    }
    Ok(())
}

/// KVM's supported CPUID, read once per machine, with the TSC-deadline
/// timer added where KVM's local APIC emulates it.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId> {
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source: e,
        })?;
    // KVM_GET_SUPPORTED_CPUID never reports the TSC-deadline bit: the
    // timer lives in the in-kernel LAPIC, so KVM leaves it to the monitor
    // (KVM_CAP_TSC_DEADLINE_TIMER), as QEMU and Firecracker set it.
    // Without it Linux calibrates the LAPIC timer against the TSC at boot,
    // a busy loop of 100 ms (HZ/10 ticks) of guest time.
    set_tsc_deadline(&mut cpuid, kvm.check_extension(Cap::TscDeadlineTimer));
    Ok(cpuid)
}

/// CPUID.01H:ECX[24], the TSC-deadline mode of the LAPIC timer.
const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;

fn set_tsc_deadline(cpuid: &mut CpuId, available: bool) {
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            if available {
                e.ecx |= CPUID_1_ECX_TSC_DEADLINE;
            } else {
                e.ecx &= !CPUID_1_ECX_TSC_DEADLINE;
            }
        }
    }
}

/// Filters KVM's CPUID for vCPU `index` of `count`: topology (one core per
/// vCPU, one package), the APIC id, the hypervisor bit; hides what the
/// board does not provide (VMX/SVM for nested guests, the PMU, energy
/// MSRs).
pub fn filter_cpuid(cpuid: &mut CpuId, index: u32, count: u32) {
    let apic_id = index;
    // Bits needed to number `count` cores in the x2APIC topology leaf.
    let core_bits = 32 - (count.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical CPU per package
                } else {
                    e.edx &= !(1 << 28);
                }
                e.ecx |= 1 << 31; // running under a hypervisor
                e.ecx &= !(1 << 5); // no VMX for the guest
            }
            4 if e.eax & 0x1f != 0 => {
                // Deterministic cache parameters: `count` cores share the
                // package; only the last level is shared between them.
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3ff) | ((count - 1) << 26) | (sharing << 14);
            }
            6 => e.ecx &= !(1 << 3), // no energy-performance-bias MSR
            0xa => {
                // No architectural PMU.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                match e.index {
                    0 => {
                        e.eax = 0; // no SMT bits
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
                e.edx = apic_id;
            }
            0x8000_0001 => e.ecx &= !(1 << 2), // no SVM for the guest
            _ => {}
        }
    }
}

/// LAPIC local vector table entries: LINT0 takes the 8259's ExtINT (the
/// PIT and legacy interrupts before the IOAPIC is set up), LINT1 NMIs.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 7;
    const MODE_NMI: u32 = 4;
    let mut lapic = vcpu.get_lapic().map_err(|e| Error::Kvm {
        what: "KVM_GET_LAPIC",
        source: e,
    })?;
    for (reg, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let v = u32::from_le_bytes(bytes);
        let v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(|e| Error::Kvm {
        what: "KVM_SET_LAPIC",
        source: e,
    })
}

/// The guest's registers, for error reports.
pub fn describe(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
             rsi={:#x} rdi={:#x} cs={:#x} (dpl {}) cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            s.cs.selector,
            s.cs.dpl,
            s.cr0,
            s.cr3,
            s.cr4,
            s.efer
        ),
        (Err(e), _) | (_, Err(e)) => format!("registers unavailable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_deadline_bit_follows_kvm() {
        let leaf1 = |ecx| kvm_bindings::kvm_cpuid_entry2 {
            function: 1,
            ecx,
            ..Default::default()
        };
        let mut cpuid = CpuId::from_entries(&[leaf1(1 << 31)]).unwrap();
        set_tsc_deadline(&mut cpuid, true);
        assert_eq!(cpuid.as_slice()[0].ecx, (1 << 31) | (1 << 24));
        set_tsc_deadline(&mut cpuid, false);
        assert_eq!(cpuid.as_slice()[0].ecx, 1 << 31);
    }

    #[test]
    fn gdt_entries_decode_as_kvm_segments() {
        let code = kvm_segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1, 0);
        assert_eq!((code.selector, code.l, code.db, code.dpl), (8, 1, 0, 0));
        assert_eq!((code.type_, code.present, code.s, code.g), (0xb, 1, 1, 1));
        assert_eq!(code.limit, 0xffff_ffff);
        let udata = kvm_segment_from_gdt(gdt_entry(0xc0f3, 0, 0xfffff), 4, 3);
        assert_eq!((udata.selector, udata.dpl, udata.db), (USER_DS, 3, 1));
    }
}
