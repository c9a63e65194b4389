//! runc's command line, defined once for both `virtkit ctr` and
//! `virtkit-runc`, and its dispatch into the `container` crate (which
//! holds the logic; this module parses, prints and logs).

use clap::{Args, Parser, Subcommand};
use container::error::{Context, Error, Result};
use container::exec_request::{self, ExecRequest};
use container::runtime::{self, CreateOpts, ExecOpts};
use container::state::Root;
use std::io::Write;
use std::path::PathBuf;

pub const DEFAULT_ROOT: &str = "/run/virtkit-runc";

/// `virtkit-runc`: runc's command line at the top level.
#[derive(Parser, Debug)]
#[command(
    name = "virtkit-runc",
    version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: ", "1.2.0"),
    about = "An OCI runtime with runc's command line (virtkit's container runtime)"
)]
pub struct RuncCli {
    #[command(flatten)]
    pub args: RuncArgs,
}

/// Global flags and a subcommand, as runc takes them.
#[derive(Args, Debug)]
pub struct RuncArgs {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalOpts {
    /// Directory for the containers' state
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Write errors (and debug messages) to this file instead of stderr only
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of --log: text or json
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Log debug messages
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd for cgroups (not supported: an error says so)
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// runc's rootless mode selector, before the subcommand (accepted;
    /// rootless setups come from the spec)
    #[arg(long = "rootless", value_name = "true|false|auto")]
    pub rootless_mode: Option<String>,
    /// Path to criu (accepted for compatibility; checkpointing is not supported)
    #[arg(long, global = true, hide = true)]
    pub criu: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Path to the bundle (the directory with config.json)
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the pty master (process.terminal)
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// File to write the container process's pid to
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Use chroot (after moving the rootfs to /) instead of pivot_root
    #[arg(long)]
    pub no_pivot: bool,
    /// Do not create a session keyring (accepted; none is created anyway)
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass this many fds after stdio (3, 4, ...) to the container
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Container id
    pub id: String,
}

#[derive(Subcommand, Debug)]
// Each subcommand's arguments are built only when it runs (as in main.rs).
#[command(defer = true)]
pub enum Command {
    /// Create a container (its process waits for `start`)
    Create(CreateArgs),
    /// Start a created container
    Start { id: String },
    /// Create, start and (unless --detach) wait for a container
    Run {
        #[command(flatten)]
        create: Box<CreateArgs>,
        /// Return once started
        #[arg(short, long)]
        detach: bool,
        /// Do not delete the container after it exits (as runc: with
        /// --detach it changes nothing, a detached container stays anyway)
        #[arg(long)]
        keep: bool,
        /// Accepted for compatibility
        #[arg(long)]
        no_subreaper: bool,
    },
    /// Print the state JSON of a container
    State { id: String },
    /// Send a signal (name or number; default SIGTERM) to a container
    Kill {
        /// Signal every process of the container
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container's resources
    Delete {
        /// Kill it first if it is running
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run a process in a running container
    Exec(Box<ExecArgs>),
    /// List the processes of a container
    Ps {
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        id: String,
        /// Options for ps (accepted; the table shows PID and CMD)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers
    #[command(alias = "ls")]
    List {
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Only ids
        #[arg(short, long)]
        quiet: bool,
    },
    /// Freeze all processes of a container
    Pause { id: String },
    /// Thaw a paused container
    Resume { id: String },
    /// Write a default config.json
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// A spec for an unprivileged user (user namespace, mappings)
        #[arg(long)]
        rootless: bool,
    },
    /// Print the runtime's features JSON
    Features,
}

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// JSON file with the process (runtime-spec `process` object)
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment, KEY=VALUE (repeatable)
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Allocate a terminal (needs --console-socket)
    #[arg(short, long)]
    pub tty: bool,
    /// uid[:gid]
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional gids (repeatable)
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// Return once the process is started
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Add a capability to the process's sets (repeatable)
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Set no_new_privs
    #[arg(long)]
    pub no_new_privs: bool,
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for compatibility (no LSM support)
    #[arg(long)]
    pub process_label: Option<String>,
    /// Accepted for compatibility (no LSM support)
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Accepted for compatibility
    #[arg(long)]
    pub ignore_paused: bool,
    /// Accepted for compatibility (the container's cgroup is used)
    #[arg(long)]
    pub cgroup: Vec<String>,
    pub id: String,
    /// Command and arguments (when no --process)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Where errors go: stderr, and the --log file in its format.
struct Log {
    file: Option<std::fs::File>,
    json: bool,
}

impl Log {
    /// Open --log; like runc, a log that cannot be opened is an error
    /// (silently losing the errors a caller asked for is worse).
    fn open(g: &GlobalOpts) -> Result<Log> {
        let file = match &g.log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .ctx(|| format!("--log {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Log {
            file,
            json: g.log_format == "json",
        })
    }

    fn write(&self, level: &str, msg: &str) {
        let Some(mut f) = self.file.as_ref() else {
            return;
        };
        let time = container::state::now_rfc3339();
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            format!("time=\"{time}\" level={level} msg={msg:?}")
        };
        let _ = writeln!(f, "{line}");
    }
}

/// Run a parsed command line; the exit code of the process.
pub fn run(a: RuncArgs) -> i32 {
    let log = match Log::open(&a.global) {
        Ok(l) => std::sync::Arc::new(l),
        Err(e) => {
            eprintln!("virtkit-runc: {e}");
            return 1;
        }
    };
    if a.global.debug {
        log.write("debug", &format!("{:?}", a.command));
    }
    // The runtime's warnings: on stderr (where runc says them) and in the log.
    let warn_log = log.clone();
    let warnings: container::state::WarnFn = std::sync::Arc::new(move |msg: &str| {
        warn_log.write("warning", msg);
        eprintln!("virtkit-runc: warning: {msg}");
    });
    match dispatch(a, warnings) {
        Ok(code) => code,
        Err(e) => {
            let msg = e.to_string();
            log.write("error", &msg);
            eprintln!("virtkit-runc: {msg}");
            1
        }
    }
}

fn opts(c: &CreateArgs) -> CreateOpts {
    CreateOpts {
        id: c.id.clone(),
        bundle: c.bundle.clone(),
        pid_file: c.pid_file.clone(),
        console_socket: c.console_socket.clone(),
        no_pivot: c.no_pivot,
        preserve_fds: c.preserve_fds,
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}").ctx(|| "stdout".into())
}

fn dispatch(a: RuncArgs, warnings: container::state::WarnFn) -> Result<i32> {
    let g = a.global;
    if g.systemd_cgroup {
        return Err(Error::Usage(
            "--systemd-cgroup: the systemd cgroup driver is not supported; use cgroupfs \
             (podman --cgroup-manager=cgroupfs)"
                .into(),
        ));
    }
    let root = Root::new(&g.root).with_warnings(warnings);
    // Commands that put a process into a container run from a sealed copy
    // of the runtime (CVE-2019-5736).
    if matches!(
        a.command,
        Command::Create(_) | Command::Run { .. } | Command::Exec(_)
    ) {
        container::exeseal::ensure_sealed()?;
    }
    match a.command {
        Command::Create(c) => {
            runtime::create(&root, &opts(&c))?;
            Ok(0)
        }
        Command::Start { id } => runtime::start(&root, &id).map(|_| 0),
        Command::Run {
            create,
            detach,
            keep,
            ..
        } => runtime::run(&root, &opts(&create), detach, keep),
        Command::State { id } => {
            print_json(&runtime::state(&root, &id)?)?;
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = runtime::parse_signal(&signal)?;
            runtime::kill_container(&root, &id, sig, all)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            match runtime::delete(&root, &id, force) {
                // runc: deleting a missing container with --force succeeds.
                Err(Error::NotFound(_)) if force => Ok(0),
                r => r.map(|_| 0),
            }
        }
        Command::Exec(e) => exec(&root, *e),
        Command::Ps { format, id, .. } => {
            let pids = runtime::pids(&root, &id)?;
            if format == "json" {
                print_json(&pids)?;
            } else {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{:>8} CMD", "PID");
                for p in pids {
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                        .map(|b| {
                            String::from_utf8_lossy(&b)
                                .trim_end_matches('\0')
                                .replace('\0', " ")
                        })
                        .unwrap_or_default();
                    let _ = writeln!(out, "{p:>8} {cmd}");
                }
            }
            Ok(0)
        }
        Command::List { format, quiet } => {
            let all = runtime::list(&root)?;
            let mut out = std::io::stdout().lock();
            if quiet {
                for (st, _) in &all {
                    let _ = writeln!(out, "{}", st.id);
                }
            } else if format == "json" {
                let v: Vec<_> = all
                    .iter()
                    .map(|(st, s)| runtime::state_json(st, *s))
                    .collect();
                drop(out);
                print_json(&v)?;
            } else {
                let _ = writeln!(
                    out,
                    "{:<20} {:<8} {:<10} {:<40} {:<31} OWNER",
                    "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                );
                for (st, s) in &all {
                    let pid = if *s == container::state::Status::Stopped {
                        0
                    } else {
                        st.pid
                    };
                    let _ = writeln!(
                        out,
                        "{:<20} {:<8} {:<10} {:<40} {:<31} {}",
                        st.id,
                        pid,
                        s,
                        st.bundle.display(),
                        st.created,
                        if st.owner.is_empty() {
                            "root"
                        } else {
                            &st.owner
                        }
                    );
                }
            }
            Ok(0)
        }
        Command::Pause { id } => runtime::pause(&root, &id, true).map(|_| 0),
        Command::Resume { id } => runtime::pause(&root, &id, false).map(|_| 0),
        Command::Spec { bundle, rootless } => {
            exec_request::write_default_spec(&bundle, rootless)?;
            Ok(0)
        }
        Command::Features => {
            print_json(&container::spec::features_json())?;
            Ok(0)
        }
    }
}

fn exec(root: &Root, e: ExecArgs) -> Result<i32> {
    let req = ExecRequest {
        process_file: e.process.clone(),
        command: e.command.clone(),
        tty: e.tty,
        env: e.env.clone(),
        cwd: e.cwd.clone(),
        user: e.user.clone(),
        additional_gids: e.additional_gids.clone(),
        no_new_privs: e.no_new_privs,
        caps: e.cap.clone(),
    };
    let process = exec_request::process(root, &e.id, &req)?;
    runtime::exec(
        root,
        &ExecOpts {
            id: e.id.clone(),
            process,
            console_socket: e.console_socket.clone(),
            pid_file: e.pid_file.clone(),
            detach: e.detach,
            preserve_fds: e.preserve_fds,
        },
    )
}
