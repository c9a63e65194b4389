//! The tap backend: frames go to and come from a Linux tap device, either
//! an existing one opened by name or an open tap file descriptor handed
//! over by the caller (as libvirt does).
//!
//! With IFF_VNET_HDR the kernel reads and writes the same 12-byte
//! `virtio_net_hdr_v1` the NIC uses (after TUNSETVNETHDRSZ), so checksum
//! and segmentation offloads pass straight through: TUNSETOFFLOAD tells
//! the tap which offloaded packets the guest accepted. A descriptor opened
//! without IFF_VNET_HDR still works, without offloads (the device's header
//! is stripped on the way out and a plain one added on the way in).
//!
//! The fd is nonblocking; a small thread polls it and calls the waker
//! when a frame is ready, then waits until the device has read the tap
//! dry, so a guest with no receive buffers never makes it spin.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::{Backend, Error, Result, Waker, VNET_HDR_LEN};

// virtio-net feature bits (virtio 1.2, 5.1.3) the tap can carry.
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_GUEST_ECN: u64 = 1 << 9;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_HOST_ECN: u64 = 1 << 13;

/// Offloads a tap with a vnet header handles: the kernel accepts partial
/// checksums and GSO packets from us, and produces them for us once told
/// (TUNSETOFFLOAD). UFO is left out: Linux no longer generates it.
const TAP_OFFLOADS: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN;

/// Where the tap comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// An existing tap interface, by name (`ifname=`).
    Name(String),
    /// An open tap file descriptor of this process (`fd=`); it is
    /// duplicated, the caller's stays open.
    Fd(RawFd),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Two plain flags: nothing a panicking holder could leave half-set.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct PollState {
    /// The device read the tap dry: the poller may wait for the next frame.
    armed: bool,
    stop: bool,
}

struct Poller {
    state: Mutex<PollState>,
    cv: Condvar,
    /// An eventfd that interrupts the poller's poll(2) on stop.
    stop_fd: OwnedFd,
}

/// A tap device as a [`Backend`].
pub struct Tap {
    fd: Arc<OwnedFd>,
    name: String,
    vnet_hdr: bool,
    poller: Option<(Arc<Poller>, JoinHandle<()>)>,
}

fn io_err(what: impl Into<String>) -> Error {
    Error::Io {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

/// The interface name in an ifreq.
fn ifr_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// TUNGETIFF: the ifreq of an attached tun/tap fd, or None if `fd` is not
/// one.
fn tun_get_iff(fd: RawFd) -> Option<libc::ifreq> {
    // SAFETY: ifreq is plain data, all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes at most one ifreq to the pointer, which
    // points to one; on a non-tun fd the kernel fails without writing.
    let r = unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut ifr as *mut libc::ifreq) };
    (r == 0).then_some(ifr)
}

impl Tap {
    /// Opens the tap: by name it must already exist (this never creates
    /// interfaces); a descriptor must be an attached tap.
    pub fn open(source: &TapSource) -> Result<Tap> {
        match source {
            TapSource::Name(name) => Tap::open_name(name),
            TapSource::Fd(fd) => Tap::from_fd(*fd),
        }
    }

    fn open_name(name: &str) -> Result<Tap> {
        let cname = CString::new(name)
            .ok()
            .filter(|_| !name.is_empty() && name.len() < libc::IFNAMSIZ)
            .ok_or_else(|| Error::Config(format!("{name:?} is not a valid interface name")))?;
        // SAFETY: cname is a NUL-terminated string that outlives the call.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            // TUNSETIFF would create it (with the right privileges): a
            // typo must not leave a stray interface behind.
            return Err(Error::Config(format!(
                "tap device {name} does not exist (create it first, e.g. `ip tuntap add dev {name} mode tap user $USER`)"
            )));
        }
        // SAFETY: the path is a NUL-terminated literal; open has no other
        // memory effects.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io_err("cannot open /dev/net/tun"));
        }
        // SAFETY: raw was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain data, all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(cname.as_bytes()) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads (and may update) the one ifreq pointed to.
        let r = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETIFF,
                &mut ifr as *mut libc::ifreq,
            )
        };
        if r != 0 {
            let source = std::io::Error::last_os_error();
            let why = match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => format!(
                    "no permission to use tap device {name} (it must belong to this user, or run with CAP_NET_ADMIN)"
                ),
                Some(libc::EBUSY) => format!("tap device {name} is in use by another process"),
                Some(libc::EINVAL) => format!("{name} is not a tap device"),
                _ => format!("cannot attach to tap device {name}"),
            };
            return Err(Error::Io { what: why, source });
        }
        Tap::finish(fd, name.to_string(), true)
    }

    fn from_fd(fd: RawFd) -> Result<Tap> {
        // Our own descriptor for the same open tap: the caller's stays
        // valid and is never closed twice, however often it is named.
        // SAFETY: F_DUPFD_CLOEXEC only reads `fd`; a bad one fails EBADF.
        let raw = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io_err(format!("fd {fd} is not an open file descriptor")));
        }
        // SAFETY: raw was just returned by fcntl and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        let ifr = tun_get_iff(raw)
            .ok_or_else(|| Error::Config(format!("fd {fd} is not a tap device")))?;
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags });
        let name = ifr_name(&ifr);
        if flags & libc::IFF_TAP == 0 {
            return Err(Error::Config(format!(
                "fd {fd} is a tun device ({name}), not a tap device"
            )));
        }
        if flags & libc::IFF_NO_PI == 0 {
            return Err(Error::Config(format!(
                "fd {fd} (tap {name}) was opened without IFF_NO_PI; frames would carry a packet-information prefix"
            )));
        }
        // SAFETY: F_GETFL/F_SETFL only change the file's status flags.
        unsafe {
            let fl = libc::fcntl(raw, libc::F_GETFL);
            if fl < 0 || libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io_err(format!("cannot make fd {fd} nonblocking")));
            }
        }
        Tap::finish(owned, name, flags & libc::IFF_VNET_HDR != 0)
    }

    fn finish(fd: OwnedFd, name: String, vnet_hdr: bool) -> Result<Tap> {
        if vnet_hdr {
            let size = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
            let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
            if r != 0 {
                return Err(io_err(format!(
                    "tap {name}: cannot set the vnet header size"
                )));
            }
        }
        Ok(Tap {
            fd: Arc::new(fd),
            name,
            vnet_hdr,
            poller: None,
        })
    }

    /// The tap interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn stop_poller(&mut self) {
        if let Some((p, thread)) = self.poller.take() {
            lock(&p.state).stop = true;
            p.cv.notify_all();
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from `one` to the eventfd.
            let _ = unsafe {
                libc::write(
                    p.stop_fd.as_raw_fd(),
                    &one as *const u64 as *const libc::c_void,
                    8,
                )
            };
            // A panicked poller has nothing left to clean up.
            let _ = thread.join();
        }
    }

    fn arm(&self) {
        if let Some((p, _)) = &self.poller {
            lock(&p.state).armed = true;
            p.cv.notify_all();
        }
    }
}

/// The poller thread: waits until armed, then until the tap is readable,
/// then wakes the device and disarms.
fn poll_loop(tap: Arc<OwnedFd>, p: Arc<Poller>, waker: Waker) {
    loop {
        {
            let mut st = lock(&p.state);
            while !st.armed && !st.stop {
                st = p.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.stop {
                return;
            }
        }
        let mut fds = [
            libc::pollfd {
                fd: tap.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: p.stop_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is an array of two pollfd, its length passed along.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
            && fds[0].revents & libc::POLLIN == 0
        {
            // The interface went away: nothing more will come.
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            lock(&p.state).armed = false;
            waker();
        }
    }
}

impl Backend for Tap {
    fn offloads(&self) -> u64 {
        if self.vnet_hdr {
            TAP_OFFLOADS
        } else {
            0
        }
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if !self.vnet_hdr {
            return Ok(());
        }
        // What the tap may hand us is what the guest accepts.
        let mut off: libc::c_uint = 0;
        if features & F_GUEST_CSUM != 0 {
            off |= libc::TUN_F_CSUM;
            if features & F_GUEST_TSO4 != 0 {
                off |= libc::TUN_F_TSO4;
            }
            if features & F_GUEST_TSO6 != 0 {
                off |= libc::TUN_F_TSO6;
            }
            if features & F_GUEST_ECN != 0 {
                off |= libc::TUN_F_TSO_ECN;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(off),
            )
        };
        if r != 0 {
            return Err(io_err(format!("tap {}: cannot set offloads", self.name)));
        }
        Ok(())
    }

    fn start(&mut self, waker: Waker) -> Result<()> {
        self.stop_poller();
        // SAFETY: eventfd has no memory effects.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io_err("cannot create an eventfd"));
        }
        let poller = Arc::new(Poller {
            state: Mutex::new(PollState {
                armed: true,
                stop: false,
            }),
            cv: Condvar::new(),
            // SAFETY: efd was just returned by eventfd, owned by nobody else.
            stop_fd: unsafe { OwnedFd::from_raw_fd(efd) },
        });
        let (fd, p) = (self.fd.clone(), poller.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tap-{}", self.name))
            .spawn(move || poll_loop(fd, p, waker))
            .map_err(|source| Error::Io {
                what: "cannot start the tap thread".into(),
                source,
            })?;
        self.poller = Some((poller, thread));
        Ok(())
    }

    fn send(&mut self, packet: &[u8]) -> Result<()> {
        let data = if self.vnet_hdr {
            packet
        } else {
            packet.get(VNET_HDR_LEN..).unwrap_or_default()
        };
        // SAFETY: writes data.len() bytes from data, a live slice.
        let r = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                data.as_ptr() as *const libc::c_void,
                data.len(),
            )
        };
        if r < 0 {
            // EAGAIN (the tap's queue is full) drops the frame like a busy
            // wire; the caller decides what an error is worth.
            return Err(io_err(format!("tap {}: write", self.name)));
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        let skip = if self.vnet_hdr { 0 } else { VNET_HDR_LEN };
        if buf.len() <= skip {
            return Ok(None);
        }
        let dst = &mut buf[skip..];
        // SAFETY: reads at most dst.len() bytes into dst, a live slice.
        let r = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                dst.as_mut_ptr() as *mut libc::c_void,
                dst.len(),
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                self.arm();
                return Ok(None);
            }
            self.arm();
            return Err(Error::Io {
                what: format!("tap {}: read", self.name),
                source: e,
            });
        }
        buf[..skip].fill(0);
        Ok(Some(r as usize + skip))
    }

    fn stop(&mut self) {
        self.stop_poller();
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop_poller();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tap_is_named_in_the_error() {
        let e = Tap::open(&TapSource::Name("vk-no-such0".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tap device vk-no-such0 does not exist"), "{e}");
        let e = Tap::open(&TapSource::Name("a/b".repeat(10))).err().unwrap();
        assert!(e.to_string().contains("not a valid interface name"), "{e}");
    }

    #[test]
    fn an_fd_that_is_not_a_tap_is_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        let e = Tap::open(&TapSource::Fd(fd)).err().unwrap().to_string();
        assert_eq!(e, format!("fd {fd} is not a tap device"));
        let e = Tap::open(&TapSource::Fd(987_654))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("fd 987654 is not an open file descriptor"),
            "{e}"
        );
    }
}
