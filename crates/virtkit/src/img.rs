//! `virtkit img`: disk images with qemu-img's command line, output and exit
//! codes. Argument parsing and output formatting only; the work is done by
//! the `image` crate (`image::ops` for the format-independent operations).
//!
//! The arguments are parsed here rather than by the top-level parser so that
//! usage errors exit with 1, as qemu-img's do (clap's default is 2, which
//! for `check` and `compare` would mean "corrupt" and "error").

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand};
use image::ops::options::{apply_create_options, parse_options, CREATE_OPTIONS_HELP};
use image::ops::{
    bench, check, commit, compare, convert, create, map, measure, rebase, resize, size,
};
use image::{
    BlockBackend, CheckReport, Compat, CreateOptions, Format, Image, ImageInfo, OpenOptions,
    Preallocation, Repair, Sharing, SnapshotInfo,
};
use serde_json::{json, Map, Value};

/// `-U`: what qemu-img's man page says, in short.
const FORCE_SHARE_HELP: &str = "Force share: open read-only without refusing other writers, \
     so that an image in use (by a VM, say) can be read; what is read may be inconsistent";

/// Arguments of `virtkit img` (parsed by [`main`]).
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// A qemu-img command and its options (see `virtkit img --help`)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    rest: Vec<String>,
}

#[derive(Parser)]
#[command(
    name = "virtkit img",
    about = "Disk images (qcow2, raw) with qemu-img's commands, options and exit codes",
    disable_version_flag = true
)]
struct Img {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
// Each subcommand's arguments are built only when it runs (as in main.rs).
#[command(defer = true)]
enum Cmd {
    /// Create a new image
    Create(CreateArgs),
    /// Show information about an image
    Info(InfoArgs),
    /// Check an image's metadata (exit 0 ok, 1 check failed, 2 corrupt, 3 leaks)
    Check(CheckArgs),
    /// Copy an image into another format, sparse or compressed
    Convert(ConvertArgs),
    /// List, create, apply or delete internal snapshots
    Snapshot(SnapshotArgs),
    /// Write an overlay's data into its backing file
    Commit(CommitArgs),
    /// Change an image's backing file (safely, or with -u only the header)
    Rebase(RebaseArgs),
    /// Change an image's virtual size
    Resize(ResizeArgs),
    /// Show the allocation map of an image and its backing chain
    Map(MapArgs),
    /// Compare the content of two images (exit 0 same, 1 different, 2 error)
    Compare(CompareArgs),
    /// Compute the file size a new image needs
    Measure(MeasureArgs),
    /// Run a simple I/O benchmark on an image
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Image format (qcow2 or raw)
    #[arg(short = 'f', default_value = "raw")]
    format: String,
    /// Format options, comma separated (cluster_size=, compat=, ...; "help" lists them)
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Backing file
    #[arg(short = 'b')]
    backing: Option<String>,
    /// Backing file format
    #[arg(short = 'F')]
    backing_format: Option<String>,
    /// Do not open the backing file (it may not exist yet)
    #[arg(short = 'u')]
    unsafe_backing: bool,
    /// Quiet
    #[arg(short = 'q')]
    quiet: bool,
    filename: String,
    /// Virtual size (k, M, G, T, P, E suffixes)
    size: Option<String>,
}

#[derive(clap::Args)]
struct InfoArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    /// human or json
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Show every image of the backing chain
    #[arg(long = "backing-chain")]
    backing_chain: bool,
    #[arg(short = 'U', long = "force-share", help = FORCE_SHARE_HELP)]
    force_share: bool,
    filename: String,
}

#[derive(clap::Args)]
struct CheckArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Repair: leaks or all
    #[arg(short = 'r')]
    repair: Option<String>,
    #[arg(short = 'q')]
    quiet: bool,
    #[arg(short = 'U', long = "force-share", help = FORCE_SHARE_HELP)]
    force_share: bool,
    #[arg(short = 'T')]
    _src_cache: Option<String>,
    filename: String,
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// Source format
    #[arg(short = 'f')]
    format: Option<String>,
    /// Output format
    #[arg(short = 'O', default_value = "raw")]
    out_format: String,
    /// Compress the output (qcow2)
    #[arg(short = 'c')]
    compress: bool,
    /// Show a progress bar
    #[arg(short = 'p')]
    progress: bool,
    #[arg(short = 'q')]
    quiet: bool,
    /// Do not create the target; write into an existing image
    #[arg(short = 'n')]
    no_create: bool,
    /// Output format options
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Backing file of the target (only the source's top layer is copied)
    #[arg(short = 'B')]
    backing: Option<String>,
    /// Format of the -B backing file
    #[arg(short = 'F')]
    backing_format: Option<String>,
    /// Smallest zero run left sparse (default 4k; 0 allocates everything)
    #[arg(short = 'S')]
    sparse_size: Option<String>,
    #[arg(short = 'U', long = "force-share", help = FORCE_SHARE_HELP)]
    force_share: bool,
    /// Allow out-of-order writes to the target (with -m)
    #[arg(short = 'W')]
    out_of_order: bool,
    /// Requests in flight: copy with N workers (1 to 16, default 8)
    #[arg(short = 'm', default_value_t = 8)]
    workers: usize,
    /// Target cache mode: unsafe (default), writeback, writethrough,
    /// directsync; none (O_DIRECT) is refused
    #[arg(short = 't', default_value = "unsafe")]
    cache: String,
    /// Source cache mode (none, writeback, writethrough, directsync, unsafe)
    #[arg(short = 'T', default_value = "writeback")]
    src_cache: String,
    /// Source images (copied end to end), then the output image
    #[arg(required = true, num_args = 2..)]
    files: Vec<String>,
}

#[derive(clap::Args)]
struct SnapshotArgs {
    /// List snapshots
    #[arg(short = 'l', group = "action")]
    list: bool,
    /// Create a snapshot
    #[arg(short = 'c', group = "action", value_name = "SNAPSHOT")]
    create: Option<String>,
    /// Apply (revert to) a snapshot
    #[arg(short = 'a', group = "action", value_name = "SNAPSHOT")]
    apply: Option<String>,
    /// Delete a snapshot
    #[arg(short = 'd', group = "action", value_name = "SNAPSHOT")]
    delete: Option<String>,
    #[arg(short = 'f')]
    format: Option<String>,
    #[arg(short = 'q')]
    quiet: bool,
    #[arg(short = 'U', long = "force-share", help = FORCE_SHARE_HELP)]
    force_share: bool,
    filename: String,
}

#[derive(clap::Args)]
struct CommitArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    /// Base to commit into (only the direct backing file is supported)
    #[arg(short = 'b')]
    base: Option<String>,
    /// Keep the overlay's content (do not empty it)
    #[arg(short = 'd')]
    keep: bool,
    #[arg(short = 'p')]
    progress: bool,
    #[arg(short = 'q')]
    quiet: bool,
    #[arg(short = 't')]
    _cache: Option<String>,
    filename: String,
}

#[derive(clap::Args)]
struct RebaseArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    /// New backing file ("" removes it)
    #[arg(short = 'b', required = true)]
    backing: String,
    /// New backing file format
    #[arg(short = 'F')]
    backing_format: Option<String>,
    /// Unsafe: change the header only
    #[arg(short = 'u')]
    unsafe_mode: bool,
    #[arg(short = 'p')]
    progress: bool,
    #[arg(short = 'q')]
    quiet: bool,
    #[arg(short = 'U', long = "force-share", help = FORCE_SHARE_HELP)]
    force_share: bool,
    #[arg(short = 't')]
    _cache: Option<String>,
    #[arg(short = 'T')]
    _src_cache: Option<String>,
    filename: String,
}

#[derive(clap::Args)]
struct ResizeArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    /// Allow shrinking (data past the new end is lost)
    #[arg(long = "shrink")]
    shrink: bool,
    #[arg(long = "preallocation")]
    preallocation: Option<String>,
    #[arg(short = 'q')]
    quiet: bool,
    filename: String,
    /// New size, or +SIZE / -SIZE relative to the current one
    #[arg(allow_hyphen_values = true)]
    size: String,
}

#[derive(clap::Args)]
struct MapArgs {
    #[arg(short = 'f')]
    format: Option<String>,
    #[arg(long = "output", default_value = "human")]
    output: String,
    #[arg(long = "start-offset")]
    start_offset: Option<String>,
    #[arg(long = "max-length")]
    max_length: Option<String>,
    #[arg(short = 'U', long = "force-share", help = FORCE_SHARE_HELP)]
    force_share: bool,
    filename: String,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Format of the first image
    #[arg(short = 'f')]
    format1: Option<String>,
    /// Format of the second image
    #[arg(short = 'F')]
    format2: Option<String>,
    /// Strict: sizes and allocation must match too
    #[arg(short = 's')]
    strict: bool,
    #[arg(short = 'q')]
    quiet: bool,
    /// Show a progress bar
    #[arg(short = 'p')]
    progress: bool,
    #[arg(short = 'U', long = "force-share", help = FORCE_SHARE_HELP)]
    force_share: bool,
    #[arg(short = 'T')]
    _src_cache: Option<String>,
    filename1: String,
    filename2: String,
}

#[derive(clap::Args)]
struct MeasureArgs {
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Output format (default raw)
    #[arg(short = 'O', default_value = "raw")]
    out_format: String,
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Size of a new, empty image
    #[arg(long = "size")]
    size: Option<String>,
    /// Format of the input image
    #[arg(short = 'f')]
    format: Option<String>,
    #[arg(short = 'U', long = "force-share", help = FORCE_SHARE_HELP)]
    force_share: bool,
    filename: Option<String>,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Number of requests
    #[arg(short = 'c', default_value_t = 75000)]
    count: u64,
    /// Requests in flight
    #[arg(short = 'd', default_value_t = 64)]
    depth: usize,
    #[arg(short = 'f')]
    format: Option<String>,
    /// Flush after every N requests (write tests)
    #[arg(long = "flush-interval", default_value_t = 0)]
    flush_interval: u64,
    /// AIO mode: threads (the only one; native and io_uring are accepted and run as threads)
    #[arg(short = 'i')]
    aio: Option<String>,
    /// Native AIO (accepted; requests run on threads)
    #[arg(short = 'n')]
    _native: bool,
    /// Accepted for compatibility
    #[arg(long = "no-drain")]
    _no_drain: bool,
    /// Offset of the first request
    #[arg(short = 'o', default_value = "0")]
    offset: String,
    /// Byte written by write tests: decimal, 0x hex or 0 octal (as C's strtol)
    #[arg(long = "pattern", default_value = "0", value_parser = parse_pattern)]
    pattern: u8,
    /// Quiet (as in qemu-img 7.2, bench prints the same lines with it)
    #[arg(short = 'q')]
    _quiet: bool,
    /// Bytes per request
    #[arg(short = 's', default_value = "4096")]
    buf_size: String,
    /// Distance between requests (default: the buffer size)
    #[arg(short = 'S')]
    step: Option<String>,
    /// Cache mode: writeback (default), unsafe, writethrough, directsync, none
    #[arg(short = 't', default_value = "writeback")]
    cache: String,
    /// Write instead of read
    #[arg(short = 'w')]
    write: bool,
    #[arg(short = 'U', long = "force-share", help = FORCE_SHARE_HELP)]
    force_share: bool,
    filename: String,
}

/// Entry point: parses the qemu-img style arguments, runs the command and
/// returns its exit code. Errors are printed here as "virtkit img: ..." so
/// that each command can pick qemu-img's exit code for them.
pub fn main(args: Args) -> anyhow::Result<i32> {
    let argv = std::iter::once("virtkit img".to_string()).chain(args.rest);
    let img = match Img::try_parse_from(argv) {
        Ok(img) => img,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => 1,
            };
            let _ = e.print();
            return Ok(if code == 0 && e.use_stderr() { 1 } else { code });
        }
    };
    // qemu-img compare reports errors with 2 (1 means "different").
    let error_code = match img.command {
        Cmd::Compare(_) => 2,
        _ => 1,
    };
    let result = match img.command {
        Cmd::Create(a) => cmd_create(a),
        Cmd::Info(a) => cmd_info(a),
        Cmd::Check(a) => cmd_check(a),
        Cmd::Convert(a) => cmd_convert(a),
        Cmd::Snapshot(a) => cmd_snapshot(a),
        Cmd::Commit(a) => cmd_commit(a),
        Cmd::Rebase(a) => cmd_rebase(a),
        Cmd::Resize(a) => cmd_resize(a),
        Cmd::Map(a) => cmd_map(a),
        Cmd::Compare(a) => cmd_compare(a),
        Cmd::Measure(a) => cmd_measure(a),
        Cmd::Bench(a) => cmd_bench(a),
    };
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("virtkit img: {e:#}");
            Ok(error_code)
        }
    }
}

// ---------------------------------------------------------------- helpers

fn parse_format(name: &str) -> anyhow::Result<Format> {
    match name {
        "raw" => Ok(Format::Raw),
        "qcow2" => Ok(Format::Qcow2),
        other => bail!("Unknown file format '{other}' (supported: raw, qcow2)"),
    }
}

fn parse_opt_format(name: Option<&str>) -> anyhow::Result<Option<Format>> {
    name.map(parse_format).transpose()
}

fn parse_size_arg(what: &str, text: &str) -> anyhow::Result<u64> {
    size::parse_size(text).ok_or_else(|| {
        anyhow!(
            "Invalid {what} '{text}': use a number of bytes with an optional \
             k, M, G, T, P or E suffix"
        )
    })
}

/// Parses bench's `--pattern` as qemu-img does (`qemu_strtoul` with base
/// 0): decimal, `0x` hexadecimal or `0` octal, at most 0xff.
fn parse_pattern(text: &str) -> Result<u8, String> {
    let t = text.trim_start();
    let t = t.strip_prefix('+').unwrap_or(t);
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (h, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        (&t[1..], 8)
    } else {
        (t, 10)
    };
    // from_str_radix would take a sign of its own; strtoul's is handled above.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!("Invalid pattern byte specified: '{text}'"));
    }
    u64::from_str_radix(digits, radix)
        .ok()
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| format!("Invalid pattern byte specified: '{text}' (at most 0xff)"))
}

/// How qemu-img shares an image: as a tool (only what it uses, see
/// [`Sharing::Tool`]), or with `-U` sharing everything (read-only opens
/// only; the library refuses `-U` on a read-write open as QEMU does).
fn sharing(force_share: bool) -> Sharing {
    if force_share {
        Sharing::ForceShare
    } else {
        Sharing::Tool
    }
}

fn open_image(
    path: &str,
    format: Option<Format>,
    read_only: bool,
    force_share: bool,
) -> anyhow::Result<Image> {
    open_with(
        path,
        &OpenOptions {
            read_only,
            format,
            sharing: sharing(force_share),
            ..Default::default()
        },
    )
}

fn open_with(path: &str, opts: &OpenOptions) -> anyhow::Result<Image> {
    image::open(path, opts).map_err(|e| anyhow!("Could not open '{path}': {e}"))
}

fn json_pretty(value: &Value) -> String {
    use serde::Serialize as _;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // Serialising a Value into memory cannot fail.
    let _ = value.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

fn output_is_json(output: &str) -> anyhow::Result<bool> {
    match output {
        "human" => Ok(false),
        "json" => Ok(true),
        other => bail!("--output must be used with human or json as argument (got '{other}')"),
    }
}

/// qemu-img's "Formatting ..." line.
fn formatting_line(path: &str, o: &CreateOptions, size: u64) -> String {
    let onoff = |b: bool| if b { "on" } else { "off" };
    match o.format {
        Format::Raw => {
            let mut s = format!("Formatting '{path}', fmt=raw size={size}");
            if o.preallocation != Preallocation::Off {
                s += &format!(" preallocation={}", o.preallocation.name());
            }
            s
        }
        Format::Qcow2 => {
            let mut s = format!(
                "Formatting '{path}', fmt=qcow2 cluster_size={} extended_l2={}",
                o.cluster_size,
                onoff(o.extended_l2)
            );
            if o.preallocation != Preallocation::Off {
                s += &format!(" preallocation={}", o.preallocation.name());
            }
            s += &format!(
                " compression_type={} size={size}",
                o.compression_type.name()
            );
            if let Some(b) = &o.backing_file {
                s += &format!(" backing_file={b}");
            }
            if let Some(f) = o.backing_format {
                s += &format!(" backing_fmt={f}");
            }
            if o.compat == Compat::V2 {
                s += " compat=0.10";
            }
            s += &format!(
                " lazy_refcounts={} refcount_bits={}",
                onoff(o.lazy_refcounts),
                o.refcount_bits
            );
            s
        }
    }
}

// ---------------------------------------------------------------- create

fn cmd_create(a: CreateArgs) -> anyhow::Result<i32> {
    let pairs = parse_options(&a.options);
    if pairs.iter().any(|(k, _)| k == "help") {
        print!("{CREATE_OPTIONS_HELP}");
        return Ok(0);
    }
    let mut o = CreateOptions {
        format: parse_format(&a.format).with_context(|| a.filename.clone())?,
        ..Default::default()
    };
    apply_create_options(&mut o, &pairs).with_context(|| a.filename.clone())?;
    if let Some(b) = a.backing {
        o.backing_file = Some(b);
    }
    if let Some(f) = a.backing_format.as_deref() {
        o.backing_format = Some(parse_format(f)?);
    }
    if let Some(s) = a.size.as_deref() {
        o.size = Some(size::parse_size(s).ok_or_else(|| {
            anyhow!(
                "Invalid image size specified. You may use k, M, G, T, P or E suffixes for \
                 kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."
            )
        })?);
    }
    let size = match create::prepare(Path::new(&a.filename), &mut o, !a.unsafe_backing) {
        Ok(size) => size,
        Err(create::CreateError::NoBackingFormat { backing }) => bail!(
            "{}: Backing file specified without backing format\n\
             Detect the format with 'virtkit img info {backing}' and pass it with -F",
            a.filename
        ),
        Err(e) => bail!("{}: {e}", a.filename),
    };
    if !a.quiet {
        println!("{}", formatting_line(&a.filename, &o, size));
    }
    image::create(&a.filename, &o).map_err(|e| anyhow!("{}: {e}", a.filename))?;
    Ok(0)
}

// ---------------------------------------------------------------- info

fn snapshot_json(s: &SnapshotInfo) -> Value {
    let mut m = Map::new();
    if let Some(ic) = s.icount {
        m.insert("icount".into(), json!(ic));
    }
    m.insert(
        "vm-clock-nsec".into(),
        json!(s.vm_clock_nsec % 1_000_000_000),
    );
    m.insert("name".into(), json!(s.name));
    m.insert("date-sec".into(), json!(s.date_sec));
    m.insert("date-nsec".into(), json!(s.date_nsec));
    m.insert(
        "vm-clock-sec".into(),
        json!(s.vm_clock_nsec / 1_000_000_000),
    );
    m.insert("id".into(), json!(s.id));
    m.insert("vm-state-size".into(), json!(s.vm_state_size));
    Value::Object(m)
}

/// `qemu-img info --output=json` for one image, keys in qemu's order.
fn info_json(info: &ImageInfo) -> Value {
    let mut m = Map::new();
    if !info.snapshots.is_empty() {
        m.insert(
            "snapshots".into(),
            Value::Array(info.snapshots.iter().map(snapshot_json).collect()),
        );
    }
    if let Some(f) = &info.backing_filename_format {
        m.insert("backing-filename-format".into(), json!(f));
    }
    m.insert("virtual-size".into(), json!(info.virtual_size));
    m.insert("filename".into(), json!(info.filename));
    if let Some(cs) = info.cluster_size {
        m.insert("cluster-size".into(), json!(cs));
    }
    m.insert("format".into(), json!(info.format.name()));
    m.insert("actual-size".into(), json!(info.actual_size));
    if let Some(q) = &info.qcow2 {
        let mut d = Map::new();
        d.insert("compat".into(), json!(q.compat));
        d.insert("compression-type".into(), json!(q.compression_type));
        if q.compat != "0.10" {
            d.insert("lazy-refcounts".into(), json!(q.lazy_refcounts));
        }
        d.insert("refcount-bits".into(), json!(q.refcount_bits));
        if q.compat != "0.10" {
            d.insert("corrupt".into(), json!(q.corrupt));
            d.insert("extended-l2".into(), json!(q.extended_l2));
        }
        m.insert(
            "format-specific".into(),
            json!({"type": "qcow2", "data": Value::Object(d)}),
        );
    }
    if let Some(f) = &info.full_backing_filename {
        m.insert("full-backing-filename".into(), json!(f));
    }
    if let Some(f) = &info.backing_filename {
        m.insert("backing-filename".into(), json!(f));
    }
    m.insert("dirty-flag".into(), json!(info.dirty_flag.unwrap_or(false)));
    Value::Object(m)
}

/// Local time of a snapshot, as qemu prints it ("%Y-%m-%d %H:%M:%S").
fn local_time(secs: u32) -> String {
    let t: libc::time_t = secs as libc::time_t;
    // SAFETY: localtime_r writes only into the `tm` we own and reads `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return secs.to_string();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn snapshot_table(snaps: &[SnapshotInfo]) -> String {
    let mut s = format!(
        "{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}\n",
        "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
    );
    for sn in snaps {
        let ns = sn.vm_clock_nsec;
        let secs = ns / 1_000_000_000;
        let clock = format!(
            "{:02}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            (ns / 1_000_000) % 1000
        );
        let icount = sn.icount.map(|i| i.to_string()).unwrap_or_default();
        s += &format!(
            "{:<9} {:<16} {:>8}{:>20}{:>13}{:>11}\n",
            sn.id,
            sn.name,
            size::human_size(sn.vm_state_size),
            local_time(sn.date_sec),
            clock,
            icount
        );
    }
    s
}

fn info_human(info: &ImageInfo) -> String {
    let mut s = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        info.filename,
        info.format,
        size::human_size(info.virtual_size),
        info.virtual_size,
        size::human_size(info.actual_size)
    );
    if let Some(cs) = info.cluster_size {
        s += &format!("cluster_size: {cs}\n");
    }
    if info.dirty_flag == Some(true) {
        s += "cleanly shut down: no\n";
    }
    if let Some(b) = &info.backing_filename {
        s += &format!("backing file: {b}");
        match &info.full_backing_filename {
            Some(full) if full != b => s += &format!(" (actual path: {full})\n"),
            _ => s += "\n",
        }
    }
    if let Some(f) = &info.backing_filename_format {
        s += &format!("backing file format: {f}\n");
    }
    if !info.snapshots.is_empty() {
        s += "Snapshot list:\n";
        s += &snapshot_table(&info.snapshots);
    }
    if let Some(q) = &info.qcow2 {
        s += "Format specific information:\n";
        s += &format!("    compat: {}\n", q.compat);
        s += &format!("    compression type: {}\n", q.compression_type);
        if q.compat != "0.10" {
            s += &format!("    lazy refcounts: {}\n", q.lazy_refcounts);
        }
        s += &format!("    refcount bits: {}\n", q.refcount_bits);
        if q.compat != "0.10" {
            s += &format!("    corrupt: {}\n", q.corrupt);
            s += &format!("    extended l2: {}\n", q.extended_l2);
        }
    }
    s
}

fn cmd_info(a: InfoArgs) -> anyhow::Result<i32> {
    let json = output_is_json(&a.output)?;
    let fmt = parse_opt_format(a.format.as_deref())?;
    let img = open_image(&a.filename, fmt, true, a.force_share)?;
    let mut infos = Vec::new();
    let mut layer = Some(&img);
    while let Some(l) = layer {
        infos.push(
            l.info()
                .with_context(|| format!("reading '{}'", l.filename()))?,
        );
        if !a.backing_chain {
            break;
        }
        layer = l.backing();
    }
    if json {
        let v = if a.backing_chain {
            Value::Array(infos.iter().map(info_json).collect())
        } else {
            info_json(&infos[0])
        };
        println!("{}", json_pretty(&v));
    } else {
        let parts: Vec<String> = infos.iter().map(info_human).collect();
        print!("{}", parts.join("\n"));
    }
    Ok(0)
}

// ---------------------------------------------------------------- check

fn check_json(r: &CheckReport, filename: &str, format: Format) -> Value {
    let mut m = Map::new();
    let opt = |m: &mut Map<String, Value>, k: &str, v: u64| {
        if v != 0 {
            m.insert(k.to_string(), json!(v));
        }
    };
    opt(&mut m, "image-end-offset", r.image_end_offset);
    opt(&mut m, "total-clusters", r.total_clusters);
    // Key order as qemu-img 7.2 prints them.
    opt(&mut m, "corruptions", r.corruptions);
    m.insert("check-errors".into(), json!(r.check_errors));
    opt(&mut m, "leaks", r.leaks);
    opt(&mut m, "leaks-fixed", r.leaks_fixed);
    opt(&mut m, "corruptions-fixed", r.corruptions_fixed);
    opt(&mut m, "allocated-clusters", r.allocated_clusters);
    opt(&mut m, "fragmented-clusters", r.fragmented_clusters);
    opt(&mut m, "compressed-clusters", r.compressed_clusters);
    m.insert("filename".into(), json!(filename));
    m.insert("format".into(), json!(format.name()));
    Value::Object(m)
}

fn check_human(r: &CheckReport) -> String {
    let mut s = String::new();
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        s += "No errors were found on the image.\n";
    } else {
        if r.corruptions != 0 {
            s += &format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            );
        }
        if r.leaks != 0 {
            s += &format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            );
        }
        if r.check_errors != 0 {
            s += &format!(
                "\n{} internal errors have occurred during the check.\n",
                r.check_errors
            );
        }
    }
    if r.total_clusters != 0 && r.allocated_clusters != 0 {
        let alloc = r.allocated_clusters as f64;
        s += &format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            r.allocated_clusters,
            r.total_clusters,
            alloc * 100.0 / r.total_clusters as f64,
            r.fragmented_clusters as f64 * 100.0 / alloc,
            r.compressed_clusters as f64 * 100.0 / alloc
        );
    }
    if r.image_end_offset != 0 {
        s += &format!("Image end offset: {}\n", r.image_end_offset);
    }
    s
}

fn cmd_check(a: CheckArgs) -> anyhow::Result<i32> {
    let json = output_is_json(&a.output)?;
    let repair = match a.repair.as_deref() {
        None => Repair::None,
        Some("leaks") => Repair::Leaks,
        Some("all") => Repair::All,
        Some(other) => bail!("Unknown option value for -r (expecting 'leaks' or 'all'): {other}"),
    };
    let fmt = parse_opt_format(a.format.as_deref())?;
    let run = match check::check(Path::new(&a.filename), fmt, sharing(a.force_share), repair) {
        Ok(r) => r,
        Err(check::CheckError::Unsupported) => {
            eprintln!("virtkit img: This image format does not support checks");
            return Ok(63);
        }
        Err(e @ check::CheckError::Check(_)) => {
            eprintln!("virtkit img: {e}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    for m in &run.first.messages {
        eprintln!("{m}");
    }
    if let Some(again) = &run.recheck {
        if !json && !a.quiet {
            print!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                again.leaks_fixed, again.corruptions_fixed
            );
        }
        for m in &again.messages {
            eprintln!("{m}");
        }
    }
    let report = run.result();
    if json {
        println!(
            "{}",
            json_pretty(&check_json(report, &a.filename, Format::Qcow2))
        );
    } else if !a.quiet {
        print!("{}", check_human(report));
    }
    Ok(if report.check_errors != 0 {
        1
    } else if report.corruptions != 0 {
        2
    } else if report.leaks != 0 {
        3
    } else {
        0
    })
}

// ---------------------------------------------------------------- convert

fn progress_bar(enabled: bool, total: u64) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "    [{bar:40}] {percent:>3}% {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    Some(bar)
}

fn cmd_convert(a: ConvertArgs) -> anyhow::Result<i32> {
    let (output, sources) = match a.files.split_last() {
        Some((o, s)) if !s.is_empty() => (o.clone(), s.to_vec()),
        _ => bail!("Expecting at least one source image and an output image"),
    };
    // Every write goes through the host page cache and the target is
    // flushed at the end; qemu's O_DIRECT mode (none) for the target is not
    // available. The source is only read, so its cache mode changes
    // nothing in the result and every mode is accepted.
    match a.cache.as_str() {
        "unsafe" | "writeback" | "writethrough" | "directsync" => {}
        "none" => bail!(
            "cache mode 'none' (O_DIRECT) is not supported for the target; use unsafe \
             (the default), writeback, writethrough or directsync"
        ),
        other => bail!("Invalid cache option: {other}"),
    }
    if !matches!(
        a.src_cache.as_str(),
        "none" | "unsafe" | "writeback" | "writethrough" | "directsync"
    ) {
        bail!("Invalid source cache option: {}", a.src_cache);
    }
    let src_fmt = parse_opt_format(a.format.as_deref())?;
    let out_fmt = parse_format(&a.out_format)?;
    let sparse_size = match a.sparse_size.as_deref() {
        Some(s) => {
            let v = parse_size_arg("sparse size", s)?;
            if !v.is_multiple_of(512) {
                bail!("Invalid buffer size for sparse output specified ('{s}'): must be a multiple of 512");
            }
            v
        }
        None => convert::DEFAULT_SPARSE_SIZE,
    };
    if a.compress && out_fmt != Format::Qcow2 {
        bail!("Compression not supported for format '{out_fmt}'");
    }
    let srcs = sources
        .iter()
        .map(|f| open_image(f, src_fmt, true, a.force_share))
        .collect::<anyhow::Result<Vec<Image>>>()?;
    let src_size: u64 = srcs.iter().map(|s| s.len()).sum();
    let pairs = parse_options(&a.options);
    if pairs.iter().any(|(k, _)| k == "help") {
        print!("{CREATE_OPTIONS_HELP}");
        return Ok(0);
    }
    let mut o = CreateOptions {
        format: out_fmt,
        ..Default::default()
    };
    apply_create_options(&mut o, &pairs)?;
    if let Some(b) = a.backing.clone() {
        o.backing_file = Some(b);
    }
    if let Some(f) = a.backing_format.as_deref() {
        o.backing_format = Some(parse_format(f)?);
    }
    let has_backing = o.backing_file.is_some();
    create::prepare_convert_backing(Path::new(&output), &mut o)?;
    let opts = convert::ConvertOptions {
        sparse_size,
        compress: a.compress,
        target_is_zero: !a.no_create && !has_backing,
        target_has_backing: has_backing,
        workers: a.workers,
        out_of_order: a.out_of_order,
    };
    opts.validate(srcs.len())?;
    o.size = Some(src_size);
    if !a.no_create {
        image::create(&output, &o).map_err(|e| anyhow!("{output}: {e}"))?;
    }
    let dst = open_with(
        &output,
        &OpenOptions {
            read_only: false,
            format: Some(out_fmt),
            sharing: Sharing::Tool,
            ..Default::default()
        },
    )?;
    let bar = progress_bar(a.progress && !a.quiet, src_size);
    let mut tick = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total.max(1));
            b.set_position(done);
        }
    };
    let src_refs: Vec<&Image> = srcs.iter().collect();
    convert::convert(&src_refs, &dst, &opts, &mut tick)
        .map_err(|e| anyhow!("error while converting {output}: {e}"))?;
    if let Some(b) = bar {
        b.finish();
    }
    Ok(0)
}

// ---------------------------------------------------------------- snapshot

fn cmd_snapshot(a: SnapshotArgs) -> anyhow::Result<i32> {
    let fmt = parse_opt_format(a.format.as_deref())?;
    let list = a.list || (a.create.is_none() && a.apply.is_none() && a.delete.is_none());
    let img = open_with(
        &a.filename,
        &OpenOptions {
            read_only: list,
            format: fmt,
            sharing: sharing(a.force_share),
            ..Default::default()
        },
    )?;
    if list {
        let snaps = img.snapshots();
        if !snaps.is_empty() {
            print!("Snapshot list:\n{}", snapshot_table(&snaps));
        }
        return Ok(0);
    }
    if let Some(name) = &a.create {
        img.snapshot_create(name)
            .map_err(|e| anyhow!("Could not create snapshot '{name}': {e}"))?;
    } else if let Some(name) = &a.apply {
        img.snapshot_apply(name)
            .map_err(|e| anyhow!("Could not apply snapshot '{name}': {e}"))?;
    } else if let Some(name) = &a.delete {
        img.snapshot_delete(name)
            .map_err(|e| anyhow!("Could not delete snapshot '{name}': {e}"))?;
    }
    img.flush().context("flushing the image")?;
    Ok(0)
}

// ---------------------------------------------------------------- commit

fn cmd_commit(a: CommitArgs) -> anyhow::Result<i32> {
    let fmt = parse_opt_format(a.format.as_deref())?;
    if let Some(base) = &a.base {
        commit::check_base(Path::new(&a.filename), fmt, Path::new(base))?;
    }
    let bar = progress_bar(a.progress && !a.quiet, 0);
    let mut tick = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total.max(1));
            b.set_position(done);
        }
    };
    // qemu-img commit with -b keeps the overlay's data too.
    let keep = a.keep || a.base.is_some();
    commit::commit(Path::new(&a.filename), fmt, keep, &mut tick)
        .map_err(|e| anyhow!("{}: {e}", a.filename))?;
    if let Some(b) = bar {
        b.finish();
    }
    if !a.quiet {
        println!("Image committed.");
    }
    Ok(0)
}

// ---------------------------------------------------------------- rebase

fn cmd_rebase(a: RebaseArgs) -> anyhow::Result<i32> {
    let fmt = parse_opt_format(a.format.as_deref())?;
    let bfmt = parse_opt_format(a.backing_format.as_deref())?;
    if !a.backing.is_empty() && bfmt.is_none() {
        bail!(
            "Could not change the backing file to '{}': backing format must be specified (-F)",
            a.backing
        );
    }
    let bar = progress_bar(a.progress && !a.quiet, 0);
    let mut tick = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total.max(1));
            b.set_position(done);
        }
    };
    let opts = rebase::RebaseOptions {
        format: fmt,
        backing: Some(a.backing.as_str()),
        backing_format: bfmt,
        unsafe_mode: a.unsafe_mode,
        force_share: a.force_share,
    };
    rebase::rebase(Path::new(&a.filename), &opts, &mut tick)
        .map_err(|e| anyhow!("{}: {e}", a.filename))?;
    if let Some(b) = bar {
        b.finish();
    }
    Ok(0)
}

// ---------------------------------------------------------------- resize

fn cmd_resize(a: ResizeArgs) -> anyhow::Result<i32> {
    if let Some(p) = a.preallocation.as_deref() {
        if p != "off" {
            bail!("Unsupported preallocation mode for resize: '{p}' (only 'off')");
        }
    }
    let fmt = parse_opt_format(a.format.as_deref())?;
    let change = resize::SizeChange::parse(&a.size)?;
    let img = open_with(
        &a.filename,
        &OpenOptions {
            read_only: false,
            format: fmt,
            sharing: Sharing::Tool,
            ..Default::default()
        },
    )?;
    match resize::resize(&img, change, a.shrink) {
        Ok(_) => {}
        Err(resize::ResizeError::ShrinkNotAllowed) => bail!(
            "Use the --shrink option to perform a shrink operation.\n\
             virtkit img: warning: Shrinking an image will delete all data beyond the shrunken \
             image's end. Before performing such an operation, make sure there is no important \
             data there."
        ),
        Err(resize::ResizeError::Image(e)) => bail!("{}: {e}", a.filename),
        Err(e) => return Err(e.into()),
    }
    if !a.quiet {
        println!("Image resized.");
    }
    Ok(0)
}

// ---------------------------------------------------------------- map

fn cmd_map(a: MapArgs) -> anyhow::Result<i32> {
    let json = output_is_json(&a.output)?;
    let fmt = parse_opt_format(a.format.as_deref())?;
    let start = match a.start_offset.as_deref() {
        Some(s) => parse_size_arg("start offset", s)?,
        None => 0,
    };
    let max_len = a
        .max_length
        .as_deref()
        .map(|s| parse_size_arg("max length", s))
        .transpose()?;
    let img = open_image(&a.filename, fmt, true, a.force_share)?;
    if json {
        let entries = map::map(&img, start, max_len)?;
        print!("{}", map_json(&entries));
    } else {
        print!("{}", map_human(&map::map_human(&img, start, max_len)?));
    }
    Ok(0)
}

/// `qemu-img map --output=json`: one entry a line, in qemu's layout.
fn map_json(entries: &[map::MapEntry]) -> String {
    let mut s = String::from("[");
    for (i, e) in entries.iter().enumerate() {
        let _ = write!(
            s,
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}",
            e.start, e.length, e.depth, e.present, e.zero, e.data
        );
        if let Some(o) = e.offset {
            let _ = write!(s, ", \"offset\": {o}");
        }
        s.push('}');
        if i + 1 < entries.len() {
            s.push_str(",\n");
        }
    }
    s.push_str("]\n");
    s
}

/// C's `%#-16x`: `0x` prefix except for zero, left-justified in 16 columns.
fn hex16(v: u64) -> String {
    let h = if v == 0 {
        "0".to_string()
    } else {
        format!("{v:#x}")
    };
    format!("{h:<16}")
}

/// `qemu-img map` (human): the extents that hold data, with where they live.
fn map_human(entries: &[map::MapEntry]) -> String {
    let mut s = String::from("Offset          Length          Mapped to       File\n");
    for e in entries.iter().filter(|e| e.data && !e.zero) {
        let _ = writeln!(
            s,
            "{}{}{}{}",
            hex16(e.start),
            hex16(e.length),
            hex16(e.offset.unwrap_or(0)),
            e.filename
        );
    }
    s
}

// ---------------------------------------------------------------- compare

fn cmd_compare(a: CompareArgs) -> anyhow::Result<i32> {
    let f1 = parse_opt_format(a.format1.as_deref())?;
    let f2 = parse_opt_format(a.format2.as_deref())?;
    let img1 = open_image(&a.filename1, f1, true, a.force_share)?;
    let img2 = open_image(&a.filename2, f2, true, a.force_share)?;
    let side1 = compare::Side {
        backend: &img1,
        status: &img1,
    };
    let side2 = compare::Side {
        backend: &img2,
        status: &img2,
    };
    let bar = progress_bar(a.progress && !a.quiet, img1.len().max(img2.len()));
    let mut tick = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total.max(1));
            b.set_position(done);
        }
    };
    let outcome =
        compare::compare(&side1, &side2, a.strict, &mut tick).context("comparing images")?;
    if let Some(b) = bar {
        b.finish();
    }
    if !a.quiet {
        println!("{}", outcome.message());
    }
    Ok(outcome.exit_code())
}

// ---------------------------------------------------------------- measure

fn cmd_measure(a: MeasureArgs) -> anyhow::Result<i32> {
    let json = output_is_json(&a.output)?;
    let out_fmt = parse_format(&a.out_format)?;
    let pairs = parse_options(&a.options);
    let mut o = CreateOptions {
        format: out_fmt,
        ..Default::default()
    };
    apply_create_options(&mut o, &pairs)?;
    let target = measure::MeasureTarget::from_create_options(&o);
    let m = match (&a.size, &a.filename) {
        (Some(_), Some(_)) => bail!("--size N cannot be used together with a filename."),
        (None, None) => bail!("Either --size N or one filename must be specified."),
        (Some(s), None) => {
            let size = parse_size_arg("image size", s)?;
            measure::measure(&target, size, None)?
        }
        (None, Some(f)) => {
            let fmt = parse_opt_format(a.format.as_deref())?;
            let img = open_image(f, fmt, true, a.force_share)?;
            measure::measure_image(&target, &img)?
        }
    };
    if json {
        let mut v = Map::new();
        if let Some(b) = m.bitmaps {
            v.insert("bitmaps".into(), json!(b));
        }
        v.insert("required".into(), json!(m.required));
        v.insert("fully-allocated".into(), json!(m.fully_allocated));
        println!("{}", json_pretty(&Value::Object(v)));
    } else {
        println!("required size: {}", m.required);
        println!("fully allocated size: {}", m.fully_allocated);
        if let Some(b) = m.bitmaps {
            println!("bitmaps size: {b}");
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------- bench

fn cmd_bench(a: BenchArgs) -> anyhow::Result<i32> {
    // (flush after every write, ignore flushes) for qemu's cache modes:
    // writeback and unsafe go through the host page cache without a flush
    // per write, unsafe also ignores every flush (--flush-interval's and
    // the one at the end); writethrough/directsync flush after each write.
    let (writethrough, no_flush) = match a.cache.as_str() {
        "writeback" => (false, false),
        "unsafe" => (false, true),
        "writethrough" | "directsync" => (true, false),
        "none" => bail!(
            "cache mode 'none' (O_DIRECT) is not supported; use writeback (the default) \
             or writethrough"
        ),
        other => bail!("Invalid cache option: {other}"),
    };
    if let Some(aio) = a.aio.as_deref() {
        if !matches!(aio, "threads" | "native" | "io_uring") {
            bail!("Invalid aio option: {aio}");
        }
    }
    let params = bench::BenchParams {
        count: a.count,
        depth: a.depth,
        buf_size: usize::try_from(parse_size_arg("buffer size", &a.buf_size)?)
            .unwrap_or(usize::MAX),
        offset: parse_size_arg("offset", &a.offset)?,
        step: a
            .step
            .as_deref()
            .map(|s| parse_size_arg("step size", s))
            .transpose()?
            .unwrap_or(0),
        write: a.write,
        pattern: a.pattern,
        flush_interval: a.flush_interval,
        writethrough,
        no_flush,
    };
    params.validate()?;
    let fmt = parse_opt_format(a.format.as_deref())?;
    let img = open_image(&a.filename, fmt, !a.write, a.force_share)?;
    // qemu-img 7.2 prints these lines with -q too (its -q only silences
    // messages bench never prints), so -q changes nothing here either.
    println!(
        "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
        params.count,
        if params.write { "write" } else { "read" },
        params.buf_size,
        params.depth,
        params.offset,
        params.effective_step()
    );
    if params.flush_interval != 0 {
        println!("Sending flush every {} requests", params.flush_interval);
    }
    let elapsed: Duration = bench::run(&img, &params)?;
    println!("Run completed in {:.3} seconds.", elapsed.as_secs_f64());
    // Like qemu-img, the data is flushed when the image is closed, untimed
    // (and not at all with cache=unsafe).
    if !no_flush {
        img.flush()?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(start: u64, length: u64, offset: Option<u64>) -> map::MapEntry {
        map::MapEntry {
            start,
            length,
            depth: 0,
            present: true,
            zero: false,
            data: true,
            compressed: false,
            offset,
            filename: "a".into(),
        }
    }

    #[test]
    fn map_json_layout() {
        let s = map_json(&[e(0, 65536, Some(327680)), e(65536, 10, None)]);
        assert_eq!(
            s,
            "[{ \"start\": 0, \"length\": 65536, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"offset\": 327680},\n\
             { \"start\": 65536, \"length\": 10, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true}]\n"
        );
        assert_eq!(hex16(0), "0               ");
        assert_eq!(hex16(0x50000), "0x50000         ");
    }
}
