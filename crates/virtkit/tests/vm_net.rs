//! virtio-net on tap devices, in a network namespace the test makes (the
//! host's own interfaces are never touched): one boot with two cards, one
//! on a tap opened by name, one on a tap fd handed over as libvirt does;
//! the guest pings the host end of both and fetches a file over one
//! (checksum compared). `virtkit run`'s default user-mode network: DHCP
//! addresses, a fetch from the host through 10.0.2.2 and a -p forward into
//! the guest. Plus the command line's bad input.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const VIRTKIT: &str = env!("CARGO_BIN_EXE_virtkit");
/// A safety net against hangs, not a timing check.
const TIMEOUT: &str = "900";

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &str, args: &[&str]) -> Output {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(o.status.success(), "{cmd} {args:?}: {}", describe(&o));
    o
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A network namespace of this test, deleted (with its taps) on drop, and
/// the processes started in it.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("vk-test-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        Netns {
            name,
            children: Vec::new(),
        }
    }

    /// Runs `args` inside the namespace.
    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// A persistent tap `dev` with host address `addr`/24, up.
    fn tap(&self, dev: &str, addr: &str) {
        self.exec(&["ip", "tuntap", "add", "dev", dev, "mode", "tap"]);
        self.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]);
        self.exec(&["ip", "link", "set", dev, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn sha256(path: &Path) -> String {
    let o = run("sha256sum", &[path.to_str().unwrap()]);
    String::from_utf8_lossy(&o.stdout)[..64].to_string()
}

/// Opens the existing tap named in argv[1] the way libvirt does (IFF_TAP,
/// IFF_NO_PI, IFF_VNET_HDR), then runs the rest of argv with every "FD"
/// replaced by the descriptor number.
const OPEN_TAP_AND_EXEC: &str = r#"
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", sys.argv[1].encode(), 0x0002 | 0x1000 | 0x4000))
os.set_inheritable(fd, True)
args = [a.replace("FD", str(fd)) for a in sys.argv[2:]]
os.execv(args[0], args)
"#;

#[test]
fn tap_by_name_and_by_fd_ping_and_transfer() {
    let dir = tmpdir("tapnet");
    let mut ns = Netns::new();
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    ns.tap("vktap0", "10.0.3.1");
    ns.tap("vktap1", "10.0.4.1");

    // 8 MiB the guest fetches from a server on the first tap's host end.
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let blob: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let want = sha256(&www.join("blob"));
    let mut server = ns
        .command(&[
            "python3",
            "-u",
            "-m",
            "http.server",
            "--bind",
            "10.0.3.1",
            "--directory",
            www.to_str().unwrap(),
            "8000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // It prints its banner once it listens.
    let mut banner = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    ns.children.push(server);
    assert!(banner.contains("Serving HTTP"), "server: {banner:?}");

    // The guest finds each card by its MAC (probe order names them).
    let script = r#"
dev() { for d in /sys/class/net/*; do [ "$(cat $d/address)" = "$1" ] && basename $d; done; }
a=$(dev 52:54:00:00:00:10); b=$(dev 52:54:00:00:00:11)
echo "cards: $a $b"
ip link set "$a" up; ip link set "$b" up
ip addr add 10.0.3.15/24 dev "$a"; ip addr add 10.0.4.15/24 dev "$b"
ping -c 2 -W 5 10.0.3.1 >/dev/null && echo PING-NAME-OK
ping -c 2 -W 5 10.0.4.1 >/dev/null && echo PING-FD-OK
wget -qO /tmp/blob http://10.0.3.1:8000/blob && echo "SUM $(sha256sum /tmp/blob | cut -c1-64)"
"#;
    let assets = guest::default_riscv64().unwrap();
    let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let initrd = dir.join("initrd.cpio");
    std::fs::write(
        &initrd,
        guest::run_initramfs(&assets.initramfs, &argv).unwrap(),
    )
    .unwrap();
    let o = ns
        .command(&[
            "python3",
            "-c",
            OPEN_TAP_AND_EXEC,
            "vktap1",
            VIRTKIT,
            "vm",
            "run",
            "--kernel",
            assets.kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            // Static addresses: no DHCP server on these taps.
            "--append",
            "console=ttyS0 quiet virtkit.dhcp=0",
            "--nic",
            "tap,ifname=vktap0,mac=52:54:00:00:00:10",
            "--nic",
            "tap,fd=FD,mac=52:54:00:00:00:11",
            "--timeout",
            TIMEOUT,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(out.contains("PING-NAME-OK"), "{}", describe(&o));
    assert!(out.contains("PING-FD-OK"), "{}", describe(&o));
    assert!(out.contains(&format!("SUM {want}")), "{}", describe(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `virtkit ARGS` fails with status 1 and a message containing `want`.
fn refused(args: &[&str], want: &str) {
    let o = Command::new(VIRTKIT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", describe(&o));
    assert!(err.contains(want), "{args:?}: {}", describe(&o));
    assert!(!err.contains("panicked"), "{}", describe(&o));
}

#[test]
fn bad_nics_are_refused_with_the_reason() {
    for (nic, want) in [
        ("bogus", "unknown network type \"bogus\""),
        ("tap", "a tap card needs ifname=NAME or fd=N"),
        ("user,hostfwd=tcp:1-", "hostfwd"),
        ("user,mac=ff:ff:ff:ff:ff:ff", "multicast"),
        (
            "tap,ifname=vk-nosuch0",
            "tap device vk-nosuch0 does not exist",
        ),
        // Descriptor 0 is /dev/null here (stdin).
        ("tap,fd=0", "fd 0 is not a tap device"),
        ("tap,fd=999", "fd 999 is not an open file descriptor"),
    ] {
        refused(&["vm", "run", "--kernel", "/bin/true", "--nic", nic], want);
    }
    // Seven cards, the rng and the console: one more than the slots.
    let mut many = vec!["vm", "run", "--kernel", "/bin/true"];
    for _ in 0..7 {
        many.extend(["--nic", "user"]);
    }
    refused(&many, "9 virtio devices requested");
    refused(&["run", "-p", "80", "--", "true"], "-p \"80\"");
    // A host port that is taken, TCP and UDP: the error names it.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    refused(
        &[
            "vm",
            "run",
            "--kernel",
            "/bin/true",
            "--nic",
            &format!("user,hostfwd=tcp::{port}-:22"),
        ],
        &format!("host address 127.0.0.1:{port}: the port is already in use"),
    );
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    refused(
        &["run", "-p", &format!("{port}:53/udp"), "--", "true"],
        &format!("host address 127.0.0.1:{port}: the port is already in use"),
    );
    // A privileged port without CAP_NET_BIND_SERVICE (dropped from the
    // bounding set, so not even root has it after exec).
    let unprivileged_start: u32 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    if unprivileged_start > 1 {
        let o = Command::new("setpriv")
            .args([
                "--bounding-set=-net_bind_service",
                "--inh-caps=-net_bind_service",
                VIRTKIT,
            ])
            .args([
                "vm",
                "run",
                "--kernel",
                "/bin/true",
                "--nic",
                "user,hostfwd=tcp::1-:22",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
        assert!(err.contains("port 1 is privileged"), "{}", describe(&o));
    }
    refused(
        &["run", "--net", "none", "-p", "8080:80", "--", "true"],
        "cannot be used with --net none",
    );
}

/// A TCP port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn run_has_user_networking_by_default() {
    // Guest to host: a server on the host's loopback, reached at 10.0.2.2.
    let dir = tmpdir("usernet");
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("blob"), &payload).unwrap();
    let want = sha256(&dir.join("blob"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut server = Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1"])
        .arg("--directory")
        .arg(&dir)
        .arg(http_port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();

    // Host to guest: -p to a one-shot `nc -l` in the guest; the host
    // retries until the guest listens.
    let fwd_port = free_port();
    let script = format!(
        "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default; cat /etc/resolv.conf; \
         echo SUM $(wget -qO- http://10.0.2.2:{http_port}/blob | sha256sum | cut -c1-64); \
         echo from-guest | nc -l -p 7777"
    );
    let vm = Command::new(VIRTKIT)
        .args(["run", "--timeout", TIMEOUT, "-p"])
        .arg(format!("{fwd_port}:7777"))
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = String::new();
    for _ in 0..3000 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", fwd_port)) {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            got.clear();
            // Closing our end (the drop) lets the guest's nc finish.
            let _ = BufReader::new(s).read_line(&mut got);
            if got.contains("from-guest") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = vm.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(got, "from-guest\n", "{}", describe(&o));
    assert!(out.contains("inet 10.0.2.15/24"), "{}", describe(&o));
    assert!(out.contains("default via 10.0.2.2"), "{}", describe(&o));
    assert!(out.contains("nameserver 10.0.2.3"), "{}", describe(&o));
    assert!(out.contains(&format!("SUM {want}")), "{}", describe(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two guest tools busybox lacks: `vktool echo PORT`, a UDP echo server
/// (busybox's nc has no UDP) answering every datagram to its sender, and
/// `vktool glink IF`, the link state by ETHTOOL_GLINK as `ethtool IF`
/// reads it (which also applies the kernel's pending link-watch event).
const GUEST_TOOL_C: &str = r#"
#include <arpa/inet.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
	if (argc < 3) return 2;
	if (strcmp(argv[1], "glink") == 0) {
		struct ethtool_value v = {.cmd = ETHTOOL_GLINK};
		struct ifreq r;
		memset(&r, 0, sizeof r);
		strncpy(r.ifr_name, argv[2], IFNAMSIZ - 1);
		r.ifr_data = (void *)&v;
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		if (s < 0 || ioctl(s, SIOCETHTOOL, &r) < 0) return 1;
		printf("GLINK %u\n", v.data);
		return 0;
	}
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) return 1;
	for (;;) {
		char b[2048];
		struct sockaddr_in p;
		socklen_t l = sizeof p;
		ssize_t n = recvfrom(s, b, sizeof b, 0, (struct sockaddr *)&p, &l);
		if (n >= 0) sendto(s, b, n, 0, (struct sockaddr *)&p, l);
	}
}
"#;

/// A DNS server on 127.0.0.1 (port printed first) that answers every A
/// query with 192.0.2.123 and every other query with no records.
const DNS_PY: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    q, peer = s.recvfrom(512)
    end = 12
    while q[end] != 0:
        end += q[end] + 1
    end += 5
    a = q[end - 4:end - 2] == b"\x00\x01"
    hdr = q[:2] + b"\x81\x80" + q[4:6] + (b"\x00\x01" if a else b"\x00\x00") + b"\x00" * 4
    ans = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 123]) if a else b""
    s.sendto(hdr + q[12:end] + ans, peer)
"#;

/// Kills and reaps the host helpers when the test ends, however it ends.
struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `cmd`, reads its first stdout line (a banner or a port) and
/// keeps it for the reaper.
fn start_helper(reaper: &mut Reaper, cmd: &mut Command) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    reaper.0.push(child);
    line
}

/// `virtkit vm run` of the default guest running `script`, with `nics`.
fn spawn_vm(
    dir: &Path,
    name: &str,
    script: &str,
    nics: &[String],
    extra: &[(&str, &[u8])],
) -> Child {
    let assets = guest::default_riscv64().unwrap();
    let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let mut initrd = guest::run_initramfs(&assets.initramfs, &argv).unwrap();
    if !extra.is_empty() {
        // One more archive after the others (4-aligned, as the kernel's
        // unpacker wants): the extra files under /opt.
        while !initrd.len().is_multiple_of(4) {
            initrd.push(0);
        }
        let mut w = guest::cpio::CpioWriter::new();
        w.dir("opt", 0o755).unwrap();
        for (path, data) in extra {
            w.file(path, 0o755, data).unwrap();
        }
        initrd.extend(w.finish());
    }
    let initrd_path = dir.join(format!("{name}.cpio"));
    std::fs::write(&initrd_path, initrd).unwrap();
    let mut cmd = Command::new(VIRTKIT);
    cmd.args(["vm", "run", "--kernel"])
        .arg(&assets.kernel)
        .arg("--initrd")
        .arg(&initrd_path)
        .args(["--append", "console=ttyS0 quiet", "--timeout", TIMEOUT]);
    for n in nics {
        cmd.args(["--nic", n]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Connects to 127.0.0.1:`port` until the guest behind the forward
/// answers: `request` is sent, the reply read to the end and returned once
/// it contains `want` (the guest's server may not be listening yet).
fn fetch_through(port: u16, request: &[u8], want: &str) -> String {
    use std::io::{Read, Write};
    let mut got = String::new();
    for _ in 0..3000 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let _ = s.write_all(request);
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            got = String::from_utf8_lossy(&buf).into_owned();
            if got.contains(want) {
                return got;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    got
}

/// Whether net.ipv4.ping_group_range admits this process's group.
fn ping_sockets_allowed() -> bool {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
    let v: Vec<u32> = range
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // SAFETY: getgid has no preconditions and cannot fail.
    let gid = unsafe { libc::getgid() };
    v.len() == 2 && v[0] <= gid && gid <= v[1]
}

/// One boot of `--nic user` does every guest-side check of the user-mode
/// network while a second, restricted VM runs at the same time with
/// forwards of its own.
///
/// VM A (forwards tcp->80, udp->7, tcp->9): the DHCP lease (10.0.2.15/24,
/// gateway 10.0.2.2, DNS 10.0.2.3); a name resolved through 10.0.2.3 by a
/// test DNS server the card forwards to (`resolver=`); ping to the gateway
/// (and to the host's own address when ping sockets are allowed); 50 MB
/// from a host HTTP server through 10.0.2.2, sha256 compared; then busybox
/// httpd and a UDP echo server the host reaches through the forwards.
/// VM B (restrict=on, tcp->80): its connection to the same host server
/// fails, its forward works.
#[test]
fn user_net_guest_both_ways_dns_ping_restrict_two_vms() {
    let dir = tmpdir("usercheck");
    let mut reaper = Reaper(Vec::new());
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let blob: Vec<u8> = (0..50_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("blob"), &blob).unwrap();
    drop(blob);
    let want = sha256(&www.join("blob"));
    let http_port = free_port();
    let banner = start_helper(
        &mut reaper,
        Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&www)
            .arg(http_port.to_string()),
    );
    assert!(banner.contains("Serving HTTP"), "server: {banner:?}");
    let dns_port = start_helper(&mut reaper, Command::new("python3").args(["-c", DNS_PY]));
    let dns_port: u16 = dns_port.trim().parse().expect("DNS helper's port");

    // The guest's tools, built for riscv64.
    let src = dir.join("vktool.c");
    std::fs::write(&src, GUEST_TOOL_C).unwrap();
    let exe = dir.join("vktool");
    run(
        "riscv64-linux-gnu-gcc",
        &[
            "-static",
            "-Os",
            "-s",
            "-o",
            exe.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    let vktool = std::fs::read(&exe).unwrap();

    let ping_host = if ping_sockets_allowed() {
        // The host's own address: the ping leaves through a ping socket
        // and stays on this machine.
        let o = run("ip", &["-4", "-o", "addr", "show", "scope", "global"]);
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next().map(str::to_string))
    } else {
        None
    };
    if ping_host.is_none() {
        eprintln!(
            "note: net.ipv4.ping_group_range does not admit this group (or the host has no \
             global address): only the gateway's own ping answer is checked"
        );
    }
    let ping_cmd = match &ping_host {
        Some(h) => format!("ping -c 2 -W 5 {h} >/dev/null && echo PING-HOST-OK;"),
        None => String::new(),
    };

    let (a_http, a_udp, a_done, b_http) = (free_port(), free_port(), free_port(), free_port());
    let script_a = format!(
        "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default; cat /etc/resolv.conf; \
         cat /sys/class/net/eth0/carrier; /opt/vktool glink eth0; ip link show eth0 | head -1; \
         nslookup vk-test.example | grep -q 192.0.2.123 && echo DNS-OK; \
         ping -c 2 -W 5 10.0.2.2 >/dev/null && echo PING-GW-OK; {ping_cmd} \
         echo SUM $(wget -qO- http://10.0.2.2:{http_port}/blob | sha256sum | cut -c1-64); \
         mkdir -p /www && echo served-by-guest-a >/www/index.html && httpd -p 80 -h /www; \
         /opt/vktool echo 7 & \
         echo done | nc -l -p 9"
    );
    let vm_a = spawn_vm(
        &dir,
        "a",
        &script_a,
        &[format!(
            "user,hostfwd=tcp::{a_http}-:80,hostfwd=udp:127.0.0.1:{a_udp}-:7,hostfwd=tcp::{a_done}-:9,resolver=127.0.0.1:{dns_port}"
        )],
        &[("opt/vktool", &vktool)],
    );
    let script_b = format!(
        "wget -qO- -T 10 http://10.0.2.2:{http_port}/ >/dev/null 2>&1 && echo RESTRICT-LEAKED || echo RESTRICT-BLOCKED; \
         echo served-by-guest-b | nc -l -p 80"
    );
    let vm_b = spawn_vm(
        &dir,
        "b",
        &script_b,
        &[format!("user,restrict=on,hostfwd=tcp::{b_http}-:80")],
        &[],
    );

    // Host to guest: each VM's forward reaches that VM's server.
    let got_b = fetch_through(b_http, b"", "served-by-guest-b");
    let got_a = fetch_through(a_http, b"GET / HTTP/1.0\r\n\r\n", "served-by-guest-a");
    // A UDP echo through the UDP forward (retried: the first datagrams may
    // come before the echo server is up).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let mut echo = String::new();
    for i in 0..300 {
        let msg = format!("udp-echo-{i}");
        udp.send_to(msg.as_bytes(), ("127.0.0.1", a_udp)).unwrap();
        let mut b = [0u8; 64];
        if let Ok(n) = udp.recv(&mut b) {
            echo = String::from_utf8_lossy(&b[..n]).into_owned();
            if echo.starts_with("udp-echo-") {
                break;
            }
        }
    }
    // Lets VM A finish.
    let done = fetch_through(a_done, b"", "done");

    let oa = vm_a.wait_with_output().unwrap();
    let ob = vm_b.wait_with_output().unwrap();
    let out_a = String::from_utf8_lossy(&oa.stdout).replace('\r', "");
    let out_b = String::from_utf8_lossy(&ob.stdout).replace('\r', "");
    assert_eq!(oa.status.code(), Some(0), "A: {}", describe(&oa));
    assert_eq!(ob.status.code(), Some(0), "B: {}", describe(&ob));
    assert!(
        got_a.contains("served-by-guest-a"),
        "{got_a:?}\n{}",
        describe(&oa)
    );
    assert!(
        got_b.contains("served-by-guest-b"),
        "{got_b:?}\n{}",
        describe(&ob)
    );
    assert!(echo.starts_with("udp-echo-"), "{echo:?}\n{}", describe(&oa));
    assert!(done.contains("done"), "{}", describe(&oa));
    for want in [
        "inet 10.0.2.15/24",
        "default via 10.0.2.2",
        "nameserver 10.0.2.3",
        "DNS-OK",
        // The device reports the link up; once the kernel applied that
        // (ETHTOOL_GLINK does at once), eth0 is RUNNING, not NO-CARRIER.
        "GLINK 1",
        "<BROADCAST,MULTICAST,UP,LOWER_UP>",
        "PING-GW-OK",
        &format!("SUM {want}"),
    ] {
        assert!(out_a.contains(want), "A lacks {want:?}: {}", describe(&oa));
    }
    if ping_host.is_some() {
        assert!(out_a.contains("PING-HOST-OK"), "{}", describe(&oa));
    }
    assert!(out_b.contains("RESTRICT-BLOCKED"), "{}", describe(&ob));
    drop(reaper);
    let _ = std::fs::remove_dir_all(&dir);
}
