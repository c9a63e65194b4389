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
/// show emulation (about 6 ms on this project's PVM hosts, which emulate
/// some 3.5 million ring-0 instructions a second, several times the
/// margin below), far too short to matter on hardware (some 10 µs). A
/// short run of a small guest waits for the probe at its exit, so every
/// millisecond here is one of start-up cost on such a KVM (once per host
/// boot: the result is remembered).
pub const PROBE_ITERATIONS: u32 = 10_000;
/// Instructions one probe loop runs (with its `mov` and `out`).
const PROBE_INSTRUCTIONS: u64 = 2 * PROBE_ITERATIONS as u64 + 2;

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
    /// Whether the finding is clear enough to remember for the host's
    /// boot: emulated (ring 0 already far above ring 3, see [`probe`]), or
    /// native with ring 0 about as fast as ring 3. A "native" finding in
    /// between (a loaded host, a KVM nested in an emulator) is used once
    /// and not remembered, so one unlucky probe does not make every later
    /// run trust a KVM that cannot boot Linux.
    pub fn decisive(&self) -> bool {
        self.ring0_emulated
            || self.ring0 <= self.ring3 + self.ring3 / 2 + Duration::from_micros(100)
    }

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
    // Ring 3 three times: its time is mostly one VM entry and exit (some
    // 70-120 µs on a nested KVM), and a descheduled moment in it would
    // raise the bar ring 0 is measured against. With 2,500 iterations
    // and one ring-3 run, 2 probes in 20 called an emulated ring 0 native
    // on an idle PVM host.
    let mut ring3 = Duration::MAX;
    for _ in 0..3 {
        ring3 = ring3.min(time_loop(&mut user, true, kvm_path)?);
    }
    // Hardware runs the loop in some 10 µs at either level, beside the
    // entry and exit both runs pay; emulation takes milliseconds in ring 0
    // alone. The margin (twice ring 3, and 1 ms) keeps entry noise from
    // mattering.
    let slow = |ring0: Duration| ring0 > ring3 * 2 + Duration::from_millis(1);
    let mut ring0 = time_loop(&mut kernel, false, kvm_path)?;
    // A vCPU's first entry can be slow for reasons of its own (a KVM
    // nested in an emulator builds its page tables then), and a loaded
    // host can deschedule any run: twice more, warm, before calling ring 0
    // emulated. Emulation is never faster than it is, so the fastest run
    // decides.
    for _ in 0..2 {
        if !slow(ring0) {
            break;
        }
        ring0 = ring0.min(time_loop(&mut kernel, false, kvm_path)?);
    }
    let ring0_emulated = slow(ring0);
    Ok(ProbeReport {
        ring0,
        ring3,
        instructions: PROBE_INSTRUCTIONS,
        ring0_emulated,
    })
}

/// The probe's result as remembered in a cache file, for one boot of the
/// host and one KVM device: whether a KVM emulates ring 0 cannot change
/// while the host runs, and the probe costs several milliseconds (a VM,
/// two vCPUs and the emulated loop) of every start of a small guest.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Remembered {
    /// `/proc/sys/kernel/random/boot_id` when it was measured.
    boot_id: String,
    /// The KVM device's path and device number.
    path: String,
    rdev: u64,
    ring0_ns: u64,
    ring3_ns: u64,
    instructions: u64,
    ring0_emulated: bool,
}

/// Name of the cache file inside the cache directory.
pub const CACHE_FILE: &str = "kvm-probe.json";

/// The key of this host boot and KVM device, or `None` where it cannot be
/// known (then nothing is remembered).
fn cache_key(kvm_path: &Path) -> Option<(String, String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot = boot.trim();
    if boot.is_empty() {
        return None;
    }
    let rdev = std::fs::metadata(kvm_path).ok()?.rdev();
    Some((boot.to_string(), kvm_path.display().to_string(), rdev))
}

/// The result remembered in `cache_dir` for this boot and this KVM
/// device, if any. A missing, unreadable or foreign file is no result
/// (the caller probes).
pub fn remembered(kvm_path: &Path, cache_dir: &Path) -> Option<ProbeReport> {
    let (boot_id, path, rdev) = cache_key(kvm_path)?;
    // The file is tiny; a larger one is not ours.
    let file = std::fs::File::open(cache_dir.join(CACHE_FILE)).ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, 4096), &mut text).ok()?;
    let r: Remembered = serde_json::from_str(&text).ok()?;
    // A result from a probe of another length was judged by another
    // rule (the 2,500-iteration probe called PVM native now and then).
    let ours = r.instructions == PROBE_INSTRUCTIONS;
    (ours && r.boot_id == boot_id && r.path == path && r.rdev == rdev).then(|| ProbeReport {
        ring0: Duration::from_nanos(r.ring0_ns),
        ring3: Duration::from_nanos(r.ring3_ns),
        instructions: r.instructions,
        ring0_emulated: r.ring0_emulated,
    })
}

/// Remembers `report` in `cache_dir` for this boot and KVM device, when
/// it is [decisive](ProbeReport::decisive) (best effort: a cache that cannot be written only means probing again next
/// time). Written to a temporary file and renamed, so a concurrent reader
/// sees the old file or the new one.
pub fn remember(kvm_path: &Path, cache_dir: &Path, report: &ProbeReport) {
    if !report.decisive() {
        return;
    }
    let Some((boot_id, path, rdev)) = cache_key(kvm_path) else {
        return;
    };
    let r = Remembered {
        boot_id,
        path,
        rdev,
        ring0_ns: report.ring0.as_nanos().min(u64::MAX as u128) as u64,
        ring3_ns: report.ring3.as_nanos().min(u64::MAX as u128) as u64,
        instructions: report.instructions,
        ring0_emulated: report.ring0_emulated,
    };
    let Ok(text) = serde_json::to_string(&r) else {
        return;
    };
    if std::fs::create_dir_all(cache_dir).is_err() {
        return;
    }
    let tmp = cache_dir.join(format!("{CACHE_FILE}.{}", std::process::id()));
    if std::fs::write(&tmp, text).is_err()
        || std::fs::rename(&tmp, cache_dir.join(CACHE_FILE)).is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(emulated: bool) -> ProbeReport {
        ProbeReport {
            ring0: Duration::from_micros(if emulated { 5900 } else { 80 }),
            ring3: Duration::from_micros(60),
            instructions: PROBE_INSTRUCTIONS,
            ring0_emulated: emulated,
        }
    }

    // /dev/null stands in for the KVM device: only its path and device
    // number make the key.
    const DEV: &str = "/dev/null";

    #[test]
    fn a_remembered_finding_comes_back_for_the_same_boot_and_device() {
        let dir = tempfile::tempdir().unwrap();
        assert!(remembered(Path::new(DEV), dir.path()).is_none());
        remember(Path::new(DEV), dir.path(), &report(true));
        let r = remembered(Path::new(DEV), dir.path()).expect("remembered");
        assert!(r.ring0_emulated);
        assert_eq!(r.instructions, PROBE_INSTRUCTIONS);
        assert_eq!(r.ring0, Duration::from_micros(5900));
        // Another device is another key.
        assert!(remembered(Path::new("/dev/zero"), dir.path()).is_none());
        // A later finding replaces it; no temporary file is left.
        remember(Path::new(DEV), dir.path(), &report(false));
        assert!(
            !remembered(Path::new(DEV), dir.path())
                .unwrap()
                .ring0_emulated
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn an_unclear_native_finding_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let unclear = ProbeReport {
            ring0: Duration::from_micros(1500),
            ..report(false)
        };
        assert!(!unclear.decisive());
        remember(Path::new(DEV), dir.path(), &unclear);
        assert!(remembered(Path::new(DEV), dir.path()).is_none());
        // An emulated finding stays remembered; an unclear native one
        // later does not replace it.
        remember(Path::new(DEV), dir.path(), &report(true));
        remember(Path::new(DEV), dir.path(), &unclear);
        assert!(
            remembered(Path::new(DEV), dir.path())
                .unwrap()
                .ring0_emulated
        );
        assert!(report(false).decisive() && report(true).decisive());
    }

    #[test]
    fn another_boot_or_a_damaged_file_is_no_finding() {
        let dir = tempfile::tempdir().unwrap();
        remember(Path::new(DEV), dir.path(), &report(true));
        let file = dir.path().join(CACHE_FILE);
        let text = std::fs::read_to_string(&file).unwrap();
        let (boot, _, _) = cache_key(Path::new(DEV)).unwrap();
        std::fs::write(
            &file,
            text.replace(&boot, "00000000-0000-0000-0000-000000000000"),
        )
        .unwrap();
        assert!(remembered(Path::new(DEV), dir.path()).is_none());
        // A finding of a probe of another length (the rule that judged it
        // was another) is none either.
        std::fs::write(
            &file,
            text.replace(
                &format!("\"instructions\":{PROBE_INSTRUCTIONS}"),
                "\"instructions\":5002",
            ),
        )
        .unwrap();
        assert_ne!(std::fs::read_to_string(&file).unwrap(), text);
        assert!(remembered(Path::new(DEV), dir.path()).is_none());
        std::fs::write(&file, &text).unwrap();
        assert!(remembered(Path::new(DEV), dir.path()).is_some());
        for junk in ["", "{", "null", "[1,2]", "{\"boot_id\": 3}"] {
            std::fs::write(&file, junk).unwrap();
            assert!(remembered(Path::new(DEV), dir.path()).is_none(), "{junk}");
        }
        // An oversized file is not read whole.
        std::fs::write(&file, " ".repeat(1 << 20)).unwrap();
        assert!(remembered(Path::new(DEV), dir.path()).is_none());
    }
}
