//! Download progress of the `guest` crate, drawn for a person: a bar on a
//! terminal, one line per large download otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use guest::{Progress, ProgressFn};

/// Downloads smaller than this get no line when stderr is not a terminal
/// (index files and small packages would only add noise to logs).
const NOTE_MIN_BYTES: u64 = 1 << 20;

/// A [`ProgressFn`] that draws on stderr.
pub fn downloads() -> ProgressFn {
    let tty = std::io::stderr().is_terminal();
    let bar: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);
    Box::new(move |event| {
        let mut bar = bar.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Progress::Note(msg) => match bar.as_ref() {
                Some(b) => b.println(format!("virtkit: {msg}")),
                None => eprintln!("virtkit: {msg}"),
            },
            Progress::Start { name, total } if tty => {
                let b = indicatif::ProgressBar::new(total.unwrap_or(0));
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg:40!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_message(name.to_string());
                *bar = Some(b);
            }
            Progress::Start { name, total } => {
                if let Some(n) = total.filter(|&n| n >= NOTE_MIN_BYTES) {
                    eprintln!("virtkit: downloading {name} ({} MB)", n >> 20);
                }
            }
            Progress::Advance { done } => {
                if let Some(b) = bar.as_ref() {
                    b.set_position(done);
                }
            }
            Progress::Finish => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
        }
    })
}
