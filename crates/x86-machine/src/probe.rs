//! The accelerator probe: does this KVM run guest ring 0 natively?
//!
//! A paravirtualized nested KVM (such as PVM, on this project's build
//! machines) runs guest ring 3 natively but emulates guest ring 0
//! instruction by instruction, about a million per second: small guests
//! run well, a Linux kernel takes hours to boot. The probe runs the same
//! short loop once in ring 0 and once in ring 3 of a tiny VM and compares
//! the times: on hardware virtualization both take microseconds.

use std::time::{Duration, Instant};

use std::path::Path;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm::vm_memory::{Bytes, GuestAddress};

use crate::cpu::{self, Entry};
use crate::layout::{HIMEM_START, MIN_MEM};
use crate::machine::{create_vm, open_kvm};
use crate::{Error, Result};

/// Iterations of the probe loop (two instructions each): long enough to
/// show emulation (about 5 ms at a million instructions per second, still
/// several times the 1 ms margin below), far too short to matter on
/// hardware. A short run of a small guest waits for the probe at its exit,
/// so every millisecond here is one of start-up cost on such a KVM.
pub const PROBE_ITERATIONS: u32 = 2_500;
/// The port the probe guest writes when its loop is done.
const DONE_PORT: u16 = 0x80;

/// What the probe found.
#[derive(Debug, Clone, Copy)]
pub struct ProbeReport {
    /// Time of the loop (with one entry and one exit) in ring 0 and ring 3.
    pub ring0: Duration,
    pub ring3: Duration,
    /// Instructions each loop ran.
    pub instructions: u64,
    /// Ring 0 is emulated (ring 0 far slower than ring 3).
    pub ring0_emulated: bool,
}

impl ProbeReport {
    /// Ring-0 instructions per second (a rough figure).
    pub fn ring0_ips(&self) -> f64 {
        self.instructions as f64 / self.ring0.as_secs_f64().max(1e-9)
    }
}

/// The guest: `mov ecx, N; 1: dec ecx; jnz 1b; out 0x80, al; jmp .`
fn probe_code(iterations: u32) -> Vec<u8> {
    let mut c = vec![0xb9];
    c.extend_from_slice(&iterations.to_le_bytes());
    c.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc, 0xe6, DONE_PORT as u8, 0xeb, 0xfe]);
    c
}

/// Runs one vCPU of the probe VM from the loop's start to its `out`.
fn time_loop(vcpu: &mut VcpuFd, user: bool, kvm_path: &Path) -> Result<Duration> {
    cpu::setup_registers(
        vcpu,
        Entry {
            rip: HIMEM_START,
            rsi: 0,
            user,
        },
    )?;
    let start = Instant::now();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(DONE_PORT, _)) => return Ok(start.elapsed()),
            Ok(VcpuExit::Intr) => {}
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Ok(other) => {
                let what = format!("{other:?}");
                return Err(Error::KvmUnusable {
                    path: kvm_path.display().to_string(),
                    reason: format!(
                        "the probe guest (ring {}) stopped with {what}; {}",
                        if user { 3 } else { 0 },
                        cpu::describe(vcpu)
                    ),
                });
            }
            Err(source) => {
                return Err(Error::Kvm {
                    what: "KVM_RUN (probe)",
                    source,
                })
            }
        }
    }
}

/// Runs the probe on the KVM at `kvm_path`.
pub fn probe(kvm_path: &Path) -> Result<ProbeReport> {
    // One small VM without an irqchip (so both vCPUs start runnable): the
    // loop in ring 3 on one vCPU, in ring 0 on the other. VM creation and
    // teardown cost more than the loops on a nested KVM: one VM only.
    let kvm = open_kvm(kvm_path)?;
    let vm = create_vm(kvm, MIN_MEM, false)?;
    let mem = vm.ram.memory();
    cpu::write_boot_tables(mem, true)?;
    mem.write_slice(&probe_code(PROBE_ITERATIONS), GuestAddress(HIMEM_START))
        .map_err(|e| Error::GuestMemory(format!("probe code: {e}")))?;
    // A KVM on real SVM/VMX refuses long mode (EFER.LME) in KVM_SET_SREGS
    // unless the vCPU's CPUID offers it, so the CPUID comes first.
    let cpuid = cpu::supported_cpuid(&vm.kvm)?;
    let vcpu = |id| {
        let v = vm.fd.create_vcpu(id).map_err(|source| Error::Kvm {
            what: "KVM_CREATE_VCPU",
            source,
        })?;
        v.set_cpuid2(&cpuid).map_err(|source| Error::Kvm {
            what: "KVM_SET_CPUID2",
            source,
        })?;
        Ok::<_, Error>(v)
    };
    let (mut user, mut kernel) = (vcpu(0)?, vcpu(1)?);
    // Ring 3 twice (microseconds either way), so that one descheduled
    // moment does not make it look slow.
    let ring3 = time_loop(&mut user, true, kvm_path)?.min(time_loop(&mut user, true, kvm_path)?);
    // Hardware runs the loop in a few µs at either level; emulation takes
    // milliseconds in ring 0 alone. The margin of 1 ms keeps VM
    // entry noise from mattering.
    let slow = |ring0: Duration| ring0 > ring3 * 5 + Duration::from_millis(1);
    let mut ring0 = time_loop(&mut kernel, false, kvm_path)?;
    if slow(ring0) {
        // A vCPU's first entry can be slow for reasons of its own (a KVM
        // nested in an emulator builds its page tables then): once more,
        // warm, before calling ring 0 emulated.
        ring0 = ring0.min(time_loop(&mut kernel, false, kvm_path)?);
    }
    let ring0_emulated = slow(ring0);
    Ok(ProbeReport {
        ring0,
        ring3,
        instructions: 2 * PROBE_ITERATIONS as u64 + 2,
        ring0_emulated,
    })
}
