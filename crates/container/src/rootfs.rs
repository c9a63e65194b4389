//! The container's root filesystem: mounts from the spec, /dev, pivot_root,
//! masked and read-only paths.
//!
//! Every destination inside the rootfs is resolved with openat2(2) and
//! RESOLVE_IN_ROOT, so a symlink planted in the image (`/proc -> /etc` or
//! `/x -> ../../..`) resolves inside the rootfs, never out of it; the mount
//! then targets the opened directory through /proc/self/fd, not a path that
//! could be swapped in between.

use crate::error::{spec_err, Context, Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub const KNOWN_MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "tmpcopyup",
    "unbindable",
];

/// (path, type, major, minor, mode) of the devices every container gets.
pub const DEFAULT_DEVICES: &[(&str, char, u64, u64, u32)] = &[
    ("/dev/null", 'c', 1, 3, 0o666),
    ("/dev/zero", 'c', 1, 5, 0o666),
    ("/dev/full", 'c', 1, 7, 0o666),
    ("/dev/random", 'c', 1, 8, 0o666),
    ("/dev/urandom", 'c', 1, 9, 0o666),
    ("/dev/tty", 'c', 5, 0, 0o666),
];

/// Flags and data of a mount's `options`.
#[derive(Debug)]
pub struct MountOpts {
    pub flags: MsFlags,
    pub clear: MsFlags,
    pub propagation: MsFlags,
    pub bind: bool,
    pub data: Vec<String>,
}

pub fn parse_options(opts: &[String]) -> MountOpts {
    let mut m = MountOpts {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: MsFlags::empty(),
        bind: false,
        data: Vec::new(),
    };
    for o in opts {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "defaults" | "tmpcopyup" => (MsFlags::empty(), MsFlags::empty()),
            "bind" => {
                m.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                m.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            p @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
            | "unbindable" | "runbindable") => {
                m.propagation |= propagation_flags(p).unwrap_or(MsFlags::empty());
                continue;
            }
            other => {
                m.data.push(other.to_string());
                continue;
            }
        };
        m.flags |= set;
        m.flags &= !clear;
        m.clear |= clear;
    }
    m
}

pub fn propagation_flags(p: &str) -> Option<MsFlags> {
    Some(match p {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Usage(format!("path {p:?} contains a NUL byte")))
}

/// openat2(dirfd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS).
pub fn open_in_root(root: RawFd, path: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `c` and `how` are valid for the duration of the call; the
    // returned fd is new and owned by us.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat2 and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Create `path` (and parents) inside the root, as directories, or as an
/// empty file for the last component when `file` is set; return an O_PATH
/// fd of it. Symlinks resolve inside the root.
pub fn mkdir_all_in_root(root: RawFd, path: &Path, file: bool) -> Result<OwnedFd> {
    let mut want = normalize(path);
    // Dangling symlinks are followed by rewriting the path (inside the
    // root); this bounds how many, like the kernel's 40 for lookups.
    for _ in 0..40 {
        match mkdir_walk(root, &want, file)? {
            Walk::Done(fd) => return Ok(fd),
            Walk::Restart(p) => want = p,
        }
    }
    Err(Error::Usage(format!(
        "{}: too many levels of symbolic links",
        path.display()
    )))
}

/// `path` made absolute and free of `.` and `..` (which cannot go above
/// the root), lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

enum Walk {
    Done(OwnedFd),
    Restart(PathBuf),
}

fn mkdir_walk(root: RawFd, path: &Path, file: bool) -> Result<Walk> {
    if let Ok(fd) = open_in_root(root, path, libc::O_PATH) {
        return Ok(Walk::Done(fd));
    }
    let comps: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut cur = PathBuf::from("/");
    let mut parent = open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY)
        .ctx(|| "opening the rootfs".into())?;
    for (i, name) in comps.iter().enumerate() {
        let parent_path = cur.clone();
        cur.push(name);
        let last = i + 1 == comps.len();
        match open_in_root(root, &cur, libc::O_PATH) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).ctx(|| format!("resolving {}", cur.display())),
        }
        let cname = cstr(Path::new(name))?;
        // A dangling symlink: continue at its target, inside the root.
        if let Ok(target) = nix::fcntl::readlinkat(Some(parent.as_raw_fd()), Path::new(name)) {
            let mut next = if Path::new(&target).is_absolute() {
                PathBuf::from(&target)
            } else {
                parent_path.join(&target)
            };
            for rest in &comps[i + 1..] {
                next.push(rest);
            }
            return Ok(Walk::Restart(normalize(&next)));
        }
        // The parent may be an O_PATH fd: mkdirat/openat accept those as dirfd.
        if last && file {
            // SAFETY: valid dirfd and NUL-terminated name; O_NOFOLLOW keeps
            // a racing symlink from being followed.
            let fd = unsafe {
                libc::openat(
                    parent.as_raw_fd(),
                    cname.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd >= 0 {
                // SAFETY: we own the new fd.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        } else {
            // SAFETY: as above.
            let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), cname.as_ptr(), 0o755) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e).ctx(|| format!("creating {}", cur.display()));
                }
            }
        }
        parent = open_in_root(root, &cur, libc::O_PATH)
            .ctx(|| format!("resolving {}", cur.display()))?;
    }
    Ok(Walk::Done(parent))
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Mount flags a bind remount must keep (the kernel locks them on mounts
/// inherited into a user namespace).
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (s, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(s) {
            m |= ms;
        }
    }
    m
}

/// What rootfs setup needs besides the spec.
pub struct Ctx<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub cgroup: &'a crate::cgroups::Config,
    /// A new user namespace: device nodes cannot be created, bind them.
    pub userns: bool,
}

/// Everything before pivot_root: propagation, the rootfs bind, the spec's
/// mounts, /dev.
pub fn prepare(c: &Ctx) -> Result<()> {
    let linux = c.spec.linux().as_ref();
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_ref())
        .map(|p| {
            propagation_flags(p)
                .ok_or_else(|| spec_err("linux.rootfsPropagation", format!("{p:?} is unknown")))
        })
        .transpose()?;
    // Nothing we mount may propagate back to the host.
    let base = match prop {
        Some(p) if p.contains(MsFlags::MS_PRIVATE) => MsFlags::MS_PRIVATE,
        _ => MsFlags::MS_SLAVE,
    };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        base | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| "making / a slave mount".into())?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(c.rootfs),
        c.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("bind-mounting rootfs {}", c.rootfs.display()))?;
    let root = std::fs::File::open(c.rootfs).ctx(|| format!("opening {}", c.rootfs.display()))?;
    let rootfd = root.as_raw_fd();

    let mut have_dev = false;
    let mut have_pts = false;
    for (i, m) in c.spec.mounts().iter().flatten().enumerate() {
        if m.destination() == Path::new("/dev") {
            have_dev = true;
        }
        if m.destination() == Path::new("/dev/pts") {
            have_pts = true;
        }
        mount_one(c, rootfd, m).map_err(|e| match e {
            Error::Spec { .. } => e,
            other => spec_err(
                format!("mounts[{i}]"),
                format!("{}: {other}", m.destination().display()),
            ),
        })?;
    }
    let _ = have_dev;
    let devices = linux.and_then(|l| l.devices().as_ref());
    create_devices(c, rootfd, devices.map(|d| d.as_slice()).unwrap_or(&[]))?;
    dev_symlinks(rootfd, have_pts)?;
    Ok(())
}

fn mount_one(c: &Ctx, rootfd: RawFd, m: &Mount) -> Result<()> {
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let dest = m.destination();
    let bind = opts.bind || typ == "bind";
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(c, rootfd, m, &opts);
    }
    if bind {
        let src = m
            .source()
            .as_ref()
            .ok_or_else(|| spec_err("mounts[].source", "a bind mount needs a source"))?;
        let src = if src.is_absolute() {
            src.clone()
        } else {
            c.bundle.join(src)
        };
        let meta = std::fs::metadata(&src).ctx(|| format!("bind source {}", src.display()))?;
        let fd = mkdir_all_in_root(rootfd, dest, !meta.is_dir())?;
        let target = fd_path(&fd);
        let rec = opts.flags & MsFlags::MS_REC;
        mount(
            Some(&src),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .ctx(|| format!("bind-mounting {} on {}", src.display(), dest.display()))?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            // The new mount is at the same fd path; reopen it so the
            // remount targets the bind, not the directory below it.
            let fd2 = open_in_root(rootfd, dest, libc::O_PATH)
                .ctx(|| format!("reopening {}", dest.display()))?;
            let t2 = fd_path(&fd2);
            let keep = if c.userns {
                locked_flags(&t2)
            } else {
                MsFlags::empty()
            };
            mount(
                None::<&str>,
                &t2,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | (keep & !opts.clear),
                None::<&str>,
            )
            .ctx(|| format!("remounting {} with {:?}", dest.display(), extra))?;
        }
        if !opts.propagation.is_empty() {
            let fd2 = open_in_root(rootfd, dest, libc::O_PATH)
                .ctx(|| format!("reopening {}", dest.display()))?;
            mount(
                None::<&str>,
                &fd_path(&fd2),
                None::<&str>,
                opts.propagation,
                None::<&str>,
            )
            .ctx(|| format!("setting propagation of {}", dest.display()))?;
        }
        return Ok(());
    }
    let fd = mkdir_all_in_root(rootfd, dest, false)?;
    let target = fd_path(&fd);
    let data = opts.data.join(",");
    let src = m
        .source()
        .clone()
        .unwrap_or_else(|| PathBuf::from(if typ.is_empty() { "none" } else { typ }));
    let flags = opts.flags & !MsFlags::MS_REMOUNT;
    let r = mount(
        Some(&src),
        &target,
        Some(typ),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    );
    match r {
        // In a user namespace without its own net namespace, sysfs cannot
        // be mounted (EPERM); runc binds the host's /sys read-only then.
        Err(nix::Error::EPERM) if typ == "sysfs" => {
            mount(
                Some("/sys"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| "binding /sys".into())?;
        }
        // mqueue needs an ipc namespace we own; without one, skip it like runc.
        Err(nix::Error::EPERM) if typ == "mqueue" => {}
        r => r.ctx(|| format!("mounting {typ} on {}", dest.display()))?,
    }
    if !opts.propagation.is_empty() {
        let fd2 = open_in_root(rootfd, dest, libc::O_PATH)
            .ctx(|| format!("reopening {}", dest.display()))?;
        mount(
            None::<&str>,
            &fd_path(&fd2),
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .ctx(|| format!("setting propagation of {}", dest.display()))?;
    }
    Ok(())
}

/// A `cgroup` mount: a tmpfs with the container's own cgroup directory of
/// every v1 hierarchy bound below it (v1), or the container's cgroup2
/// directory (v2). Binding the container's directory gives the same view
/// as a fresh cgroup mount in a cgroup namespace, and works in user
/// namespaces where mounting cgroupfs is refused.
fn mount_cgroup(c: &Ctx, rootfd: RawFd, m: &Mount, opts: &MountOpts) -> Result<()> {
    let dest = m.destination();
    let fd = mkdir_all_in_root(rootfd, dest, false)?;
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    let base = opts.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let rel = c.cgroup.path.trim_start_matches('/');
    let bind_ro = |src: &Path, dst: &Path| -> Result<()> {
        let fd = mkdir_all_in_root(rootfd, dst, false)?;
        let t = fd_path(&fd);
        mount(
            Some(src),
            &t,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| format!("binding {} on {}", src.display(), dst.display()))?;
        let fd = open_in_root(rootfd, dst, libc::O_PATH)
            .ctx(|| format!("reopening {}", dst.display()))?;
        let extra = if ro {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        mount(
            None::<&str>,
            &fd_path(&fd),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | base | extra,
            None::<&str>,
        )
        .ctx(|| format!("remounting {}", dst.display()))
    };
    if c.cgroup.version == 2 {
        return bind_ro(&Path::new("/sys/fs/cgroup").join(rel), dest);
    }
    mount(
        Some("tmpfs"),
        &fd_path(&fd),
        Some("tmpfs"),
        base,
        Some("mode=755"),
    )
    .ctx(|| format!("mounting tmpfs on {}", dest.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("");
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let Some(name) = mp.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if name.contains('/') || !(fstype == "cgroup" || fstype == "cgroup2") {
            continue;
        }
        let src = Path::new(mp).join(rel);
        // Hierarchies we did not create a cgroup in (name=systemd, the
        // empty unified one) are shown at their root, read-only, like runc.
        let src = if src.exists() { src } else { PathBuf::from(mp) };
        bind_ro(&src, &dest.join(name))?;
    }
    if ro {
        let fd = open_in_root(rootfd, dest, libc::O_PATH)
            .ctx(|| format!("reopening {}", dest.display()))?;
        mount(
            None::<&str>,
            &fd_path(&fd),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
            None::<&str>,
        )
        .ctx(|| format!("remounting {} read-only", dest.display()))?;
    }
    Ok(())
}

fn create_devices(c: &Ctx, rootfd: RawFd, extra: &[LinuxDevice]) -> Result<()> {
    let mut list: Vec<(PathBuf, char, u64, u64, u32, u32, u32)> = DEFAULT_DEVICES
        .iter()
        .map(|&(p, t, ma, mi, mode)| (PathBuf::from(p), t, ma, mi, mode, 0, 0))
        .collect();
    for (i, d) in extra.iter().enumerate() {
        let t = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::P => 'p',
            LinuxDeviceType::A => {
                return Err(spec_err(
                    format!("linux.devices[{i}].type"),
                    "\"a\" is not a device type",
                ))
            }
        };
        if !d.path().starts_with("/dev") {
            return Err(spec_err(
                format!("linux.devices[{i}].path"),
                "must be below /dev",
            ));
        }
        list.retain(|x| x.0 != *d.path());
        list.push((
            d.path().clone(),
            t,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        ));
    }
    for (path, t, major, minor, mode, uid, gid) in list {
        let parent = path.parent().unwrap_or(Path::new("/dev"));
        let pfd = mkdir_all_in_root(rootfd, parent, false)?;
        let name = cstr(Path::new(path.file_name().unwrap_or_default()))?;
        if c.userns {
            // mknod is refused in a user namespace: bind the host's node.
            let fd = mkdir_all_in_root(rootfd, &path, true)?;
            mount(
                Some(&path),
                &fd_path(&fd),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .ctx(|| format!("binding device {}", path.display()))?;
            continue;
        }
        let kind = match t {
            'b' => libc::S_IFBLK,
            'p' => libc::S_IFIFO,
            _ => libc::S_IFCHR,
        };
        // The directory fd from openat2 is O_PATH; mknodat needs a real one.
        let dfd = open_in_root(rootfd, parent, libc::O_DIRECTORY | libc::O_RDONLY)
            .ctx(|| format!("opening {}", parent.display()))?;
        drop(pfd);
        // SAFETY: valid dirfd and name; an existing entry is replaced below.
        unsafe { libc::unlinkat(dfd.as_raw_fd(), name.as_ptr(), 0) };
        let dev = libc::makedev(major as u32, minor as u32);
        let kind_mode = kind | (mode & 0o7777);
        // SAFETY: a valid directory fd and NUL-terminated name; plain
        // integers otherwise.
        let rc = unsafe { libc::mknodat(dfd.as_raw_fd(), name.as_ptr(), kind_mode, dev) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .ctx(|| format!("mknod {}", path.display()));
        }
        // SAFETY: as above; umask may have cut the mode, set it exactly.
        unsafe {
            libc::fchmodat(dfd.as_raw_fd(), name.as_ptr(), mode & 0o7777, 0);
            libc::fchownat(
                dfd.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            );
        }
    }
    Ok(())
}

fn dev_symlinks(rootfd: RawFd, have_pts: bool) -> Result<()> {
    let dfd = open_in_root(
        rootfd,
        Path::new("/dev"),
        libc::O_DIRECTORY | libc::O_RDONLY,
    )
    .ctx(|| "opening /dev".into())?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    if have_pts {
        links.push(("pts/ptmx", "ptmx"));
    }
    for (target, name) in links {
        let t = CString::new(target).unwrap_or_default();
        let n = CString::new(name).unwrap_or_default();
        if name == "ptmx" {
            // SAFETY: valid dirfd and names.
            unsafe { libc::unlinkat(dfd.as_raw_fd(), n.as_ptr(), 0) };
        }
        // SAFETY: valid dirfd and NUL-terminated strings.
        let rc = unsafe { libc::symlinkat(t.as_ptr(), dfd.as_raw_fd(), n.as_ptr()) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e).ctx(|| format!("symlink /dev/{name}"));
            }
        }
    }
    Ok(())
}

/// pivot_root into the rootfs and detach the old root (or, with
/// `no_pivot`, move the rootfs over / and chroot, for ramfs roots).
pub fn enter(rootfs: &Path, no_pivot: bool) -> Result<()> {
    if no_pivot {
        nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
        mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .ctx(|| "moving the rootfs to /".into())?;
        nix::unistd::chroot(".").ctx(|| "chroot".into())?;
        nix::unistd::chdir("/").ctx(|| "chdir /".into())?;
        return Ok(());
    }
    let old = std::fs::File::open("/").ctx(|| "opening /".into())?;
    nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
    // pivot_root(".", "."): the old root ends up mounted on top of the new
    // one, then detached; no directory for it is needed in the image.
    nix::unistd::pivot_root(".", ".").ctx(|| "pivot_root".into())?;
    nix::unistd::fchdir(old.as_raw_fd()).ctx(|| "fchdir old root".into())?;
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| "making the old root a slave".into())?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detaching the old root".into())?;
    nix::unistd::chdir("/").ctx(|| "chdir /".into())?;
    Ok(())
}

/// Enter the rootfs without a mount namespace of the container's own:
/// chroot, as runc does then (pivot_root would move the caller's root).
pub fn enter_chroot(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
    nix::unistd::chroot(".").ctx(|| "chroot".into())?;
    nix::unistd::chdir("/").ctx(|| "chdir /".into())
}

/// After pivot_root: masked and read-only paths, read-only root,
/// propagation of the new root.
pub fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .ctx(|| format!("masking {p}"))?,
            Ok(_) => mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .ctx(|| format!("masking {p}"))?,
            Err(_) => {}
        }
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        if !path.exists() {
            continue;
        }
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| format!("binding read-only path {p}"))?;
        let keep = locked_flags(path);
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | keep,
            None::<&str>,
        )
        .ctx(|| format!("remounting {p} read-only"))?;
    }
    if let Some(p) = linux.and_then(|l| l.rootfs_propagation().as_ref()) {
        if let Some(f) = propagation_flags(p) {
            mount(None::<&str>, "/", None::<&str>, f, None::<&str>)
                .ctx(|| format!("rootfs propagation {p}"))?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        let keep = locked_flags(Path::new("/"));
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep,
            None::<&str>,
        )
        .ctx(|| "remounting / read-only".into())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_options(
            &["nosuid", "noexec", "mode=755", "size=65536k", "rprivate"].map(String::from),
        );
        assert!(o.flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC));
        assert_eq!(o.data, ["mode=755", "size=65536k"]);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        let o = parse_options(&["rbind", "ro"].map(String::from));
        assert!(o.bind && o.flags.contains(MsFlags::MS_REC | MsFlags::MS_RDONLY));
    }

    #[test]
    fn resolution_stays_in_root() {
        let dir = std::env::temp_dir().join(format!("virtkit-rootfs-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/../../../../tmp-escape", root.join("evil")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        let r = std::fs::File::open(&root).unwrap();
        // A symlink pointing out of the root lands inside it.
        let fd = mkdir_all_in_root(r.as_raw_fd(), Path::new("/evil/x"), false).unwrap();
        drop(fd);
        assert!(root.join("tmp-escape/x").is_dir());
        assert!(!Path::new("/tmp-escape").exists());
        let fd = mkdir_all_in_root(r.as_raw_fd(), Path::new("/up/etc"), false).unwrap();
        let real = std::fs::read_link(fd_path(&fd)).unwrap();
        assert_eq!(real, root.join("etc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
