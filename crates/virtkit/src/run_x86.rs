//! `virtkit run --arch x86_64`: boot Debian's amd64 kernel with the
//! default busybox initramfs (the `guest` crate) on the KVM board
//! (`x86-machine`), run a command, stream its output, exit with its
//! status. Always a cold boot: unlike riscv64's `virtkit run`, no snapshot
//! of the booted guest is cached (the board can snapshot, see vm_api_x86).
//!
//! The x86 board has no "sifive,test" finisher, so the guest's init
//! reports the status on the serial console (`virtkit.exit=serial` on the
//! command line): a marker line ([`guest::EXIT_MARKER`] and the decimal
//! status) that [`ExitFilter`] removes from the output and parses, then a
//! reset through the i8042 (`reboot=k`) ends the run.
//!
//! Debian's amd64 kernel lacks `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`: it
//! finds the board's virtio-mmio devices (`--disk`, the network card) in
//! its ACPI tables. The guest always gets a user-mode network card (as
//! riscv64's default `--net user`), with `-p`'s forwards.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use x86_machine::{MachineConfig, StopReason};

use crate::vm_x86::Accel;

/// What `virtkit run` was asked to do, for an x86-64 guest.
pub struct Request {
    pub accel: Accel,
    pub cpus: usize,
    pub mem: String,
    pub disk: Option<String>,
    pub publish: Vec<String>,
    /// User-mode networking (`--net user`, the default) or no card.
    pub net: bool,
    pub verbose: bool,
    pub timeout: Option<u64>,
    pub command: Vec<String>,
}

/// A directory holding a built amd64 guest (what `virtkit guest fetch
/// --arch amd64` prints), used instead of the Debian archive: for
/// machines without the archive or an apt configuration, like the nested
/// KVM test's outer guest.
pub const GUEST_DIR_ENV: &str = "VIRTKIT_X86_GUEST";

/// Exit status when the guest did not finish its command (as in run.rs).
const MACHINE_FAILURE: i32 = 125;

/// Whether `virtkit run --arch ARCH` boots the x86-64 guest (`false`:
/// the riscv64 one); refuses unknown architectures and `--accel kvm` for
/// riscv64, which only the emulator runs.
pub fn wants_x86(arch: &str, accel: Accel) -> anyhow::Result<bool> {
    if crate::vm_x86::is_x86_64(arch) {
        return Ok(true);
    }
    if arch != "riscv64" {
        bail!("--arch {arch}: unknown architecture (known: riscv64, x86_64)");
    }
    if accel == Accel::Kvm {
        bail!("--accel kvm: KVM runs x86_64 guests (--arch x86_64); riscv64 guests run on the emulator (--accel tcg or auto)");
    }
    Ok(false)
}

pub fn main(req: Request) -> anyhow::Result<i32> {
    if req.accel == Accel::Tcg {
        bail!(
            "--accel tcg: virtkit has no x86-64 emulator; x86_64 guests run on KVM (--accel kvm)"
        );
    }
    let hostfwd = req
        .publish
        .iter()
        .map(|p| crate::nic::parse_publish(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mem_size = crate::vm::parse_size(&req.mem)?;
    let disks = req
        .disk
        .as_deref()
        .map(|d| {
            crate::vm::open_disk(d).map(|disk| x86_machine::Disk {
                backend: disk.backend,
                read_only: disk.read_only,
                image: disk.image,
            })
        })
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let kvm_path = std::path::PathBuf::from(x86_machine::DEFAULT_KVM_PATH);
    // Before anything is downloaded: a KVM that emulates ring 0 would take
    // hours to boot Linux, so say so at once instead of starting.
    let probe_once = || x86_machine::probe::probe(&kvm_path).map_err(|e| anyhow::anyhow!("{e}"));
    let cache = guest::fetch::default_cache_dir().ok();
    // A usable KVM remembered for this boot is not probed again; one
    // remembered as emulating ring 0 is, before the run is refused.
    let mut probe = match cache
        .as_deref()
        .and_then(|dir| x86_machine::probe::remembered(&kvm_path, dir))
    {
        Some(r) if !r.ring0_emulated => r,
        _ => probe_once()?,
    };
    if probe.ring0_emulated {
        // Once more before refusing: a KVM that is itself emulated (the
        // nested test under QEMU's TCG) can time one loop badly.
        probe = probe_once()?;
    }
    if let Some(dir) = &cache {
        x86_machine::probe::remember(&kvm_path, dir, &probe);
    }
    if probe.ring0_emulated {
        bail!(
            "{} emulates guest ring 0 (about {:.1} million instructions/s): booting Linux would take hours; `virtkit run --arch x86_64` needs hardware virtualization (VT-x/AMD-V)",
            kvm_path.display(),
            probe.ring0_ips() / 1e6
        );
    }
    let assets = match std::env::var_os(GUEST_DIR_ENV) {
        Some(dir) => guest::prebuilt_assets(dir.as_ref())
            .with_context(|| format!("using the guest in ${GUEST_DIR_ENV}"))?,
        None => {
            let mut fetcher =
                guest::Fetcher::new(guest::DEFAULT_SUITE).context("finding the Debian archive")?;
            fetcher.set_progress(Some(crate::progress::downloads()));
            guest::guest_assets(&fetcher, guest::Arch::Amd64)
                .context("preparing the default amd64 guest")?
        }
    };
    let kernel = x86_machine::BootFile::open(&assets.kernel)
        .with_context(|| format!("cannot read {}", assets.kernel.display()))?;
    let initrd = guest::run_initramfs(&assets.initramfs, &req.command)
        .context("building the guest's command archive")?;
    // reboot=k: Linux resets through the i8042, which ends the run;
    // panic=-1 turns a kernel panic into such a reset at once; pci=off and
    // the i8042 options skip probing for hardware the board does not have
    // (as Firecracker's default command line does).
    let mut cmdline = format!(
        "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd {}",
        guest::EXIT_SERIAL_ARG
    );
    if !req.verbose {
        // loglevel=2 beyond quiet: Debian's kernel reports the hardware
        // this board lacks (no PCI, and with i8042.nopnp no keyboard port
        // described) as errors; panics still show.
        cmdline.push_str(" quiet loglevel=2");
    }
    let nics = if req.net {
        crate::vm_x86::open_nics(&[crate::nic::NicSpec {
            kind: crate::nic::NicKind::User {
                restrict: false,
                hostfwd,
            },
            mac: None,
        }])?
    } else {
        Vec::new()
    };
    let status = Arc::new(Mutex::new(None));
    let cfg = MachineConfig {
        kvm_path,
        vcpus: req.cpus,
        mem_size,
        kernel,
        kernel_name: "the default amd64 guest's kernel".into(),
        initrd: Some(initrd.into()),
        cmdline,
        disks,
        rng: false,
        virtio_console: None,
        nics,
        output: Box::new(ExitFilter::new(std::io::stdout(), status.clone())),
        input: Some(0),
        timeout: req.timeout.map(Duration::from_secs),
    };
    let outcome = {
        let _raw = riscv_machine::terminal::RawMode::enter(0);
        x86_machine::run(cfg)
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let reported = *status.lock().unwrap_or_else(|p| p.into_inner());
    Ok(match (outcome.reason, reported) {
        (StopReason::Reset | StopReason::SystemEvent { kind: 1 | 2, .. }, Some(s)) => s & 0xff,
        (StopReason::Reset | StopReason::SystemEvent { .. }, None) => {
            eprintln!("virtkit: the guest rebooted before the command finished (kernel panic?)");
            MACHINE_FAILURE
        }
        (StopReason::SystemEvent { vcpu, kind }, Some(_)) => {
            eprintln!("virtkit: vCPU {vcpu} reported system event {kind} (a guest crash)");
            MACHINE_FAILURE
        }
        (StopReason::Quit, _) => 130,
        (StopReason::Timeout, _) => {
            eprintln!("virtkit: the guest did not finish within the timeout");
            124
        }
        (StopReason::Fatal(m), _) => {
            eprintln!("virtkit: {m}");
            MACHINE_FAILURE
        }
    })
}

/// Longest status the filter parses (the shell's are at most 255).
const MAX_DIGITS: usize = 10;

enum FilterState {
    /// Output passes; `pending` holds a possible start of the marker.
    Passing,
    /// The marker was seen; the status's digits follow.
    Digits(Vec<u8>),
    /// The status line ended: what follows (the kernel's reboot message)
    /// is not the command's output.
    Done,
}

/// The serial output on its way to the user: passes everything up to the
/// guest init's exit marker, parses the status after it into `status`, and
/// drops the rest. Output stays streamed: only bytes that may begin the
/// marker are held back until the next byte decides.
pub struct ExitFilter<W: Write> {
    inner: W,
    pending: Vec<u8>,
    state: FilterState,
    status: Arc<Mutex<Option<i32>>>,
}

impl<W: Write> ExitFilter<W> {
    pub fn new(inner: W, status: Arc<Mutex<Option<i32>>>) -> Self {
        ExitFilter {
            inner,
            pending: Vec::new(),
            state: FilterState::Passing,
            status,
        }
    }
}

impl<W: Write> Write for ExitFilter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let marker = guest::EXIT_MARKER;
        let mut out = Vec::with_capacity(buf.len());
        for &b in buf {
            match &mut self.state {
                FilterState::Passing => {
                    self.pending.push(b);
                    if marker.starts_with(&self.pending) {
                        if self.pending.len() == marker.len() {
                            self.pending.clear();
                            self.state = FilterState::Digits(Vec::new());
                        }
                    } else if b == marker[0] {
                        // The marker's first byte occurs only there: a
                        // new possible start.
                        out.extend_from_slice(&self.pending[..self.pending.len() - 1]);
                        self.pending = vec![b];
                    } else {
                        out.append(&mut self.pending);
                    }
                }
                FilterState::Digits(d) => {
                    if b.is_ascii_digit() && d.len() < MAX_DIGITS {
                        d.push(b);
                    } else {
                        let s = std::str::from_utf8(d).ok().and_then(|s| s.parse().ok());
                        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
                        self.state = FilterState::Done;
                    }
                }
                FilterState::Done => {}
            }
        }
        if !out.is_empty() {
            self.inner.write_all(&out)?;
            self.inner.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` through a filter; returns (output, status).
    fn filter(chunks: &[&[u8]]) -> (Vec<u8>, Option<i32>) {
        let status = Arc::new(Mutex::new(None));
        let mut out = Vec::new();
        {
            let mut f = ExitFilter::new(&mut out, status.clone());
            for c in chunks {
                assert_eq!(f.write(c).unwrap(), c.len());
            }
        }
        let s = *status.lock().unwrap();
        (out, s)
    }

    #[test]
    fn strips_the_marker_and_reads_the_status() {
        let (out, s) =
            filter(&[b"hello\r\n2\r\n\x1evirtkit-exit 7\r\n[ 1.0] reboot: Restarting system\r\n"]);
        assert_eq!(out, b"hello\r\n2\r\n");
        assert_eq!(s, Some(7));
    }

    #[test]
    fn a_marker_split_across_writes_is_found() {
        let (out, s) = filter(&[b"no newline\x1evirt", b"kit-ex", b"it 12", b"5\n", b"after"]);
        assert_eq!(out, b"no newline");
        assert_eq!(s, Some(125));
    }

    #[test]
    fn look_alikes_pass_through() {
        let (out, s) = filter(&[b"virtkit-exit 3\n\x1e\x1evirtkit-ex\x1ex", b"!\n"]);
        assert_eq!(out, b"virtkit-exit 3\n\x1e\x1evirtkit-ex\x1ex!\n");
        assert_eq!(s, None);
    }

    #[test]
    fn arch_and_accel_choose_the_guest() {
        assert!(!wants_x86("riscv64", Accel::Auto).unwrap());
        assert!(!wants_x86("riscv64", Accel::Tcg).unwrap());
        assert!(wants_x86("x86_64", Accel::Kvm).unwrap());
        assert!(wants_x86("amd64", Accel::Auto).unwrap());
        let e = wants_x86("riscv64", Accel::Kvm).unwrap_err().to_string();
        assert!(e.contains("--accel kvm"), "{e}");
        let e = wants_x86("arm64", Accel::Auto).unwrap_err().to_string();
        assert!(e.contains("unknown architecture"), "{e}");
    }
}
