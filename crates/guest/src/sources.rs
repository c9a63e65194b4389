//! Finding the Debian archive in the host's apt configuration.
//!
//! apt knows two formats: the one-line `sources.list` format
//! (`deb [opts] URI SUITE COMPONENT...`) and the deb822 `.sources` format
//! (paragraphs of `Field: value`). We read both and pick the source that is
//! the Debian archive itself: suites named after Debian releases, component
//! `main`, not the security archive and not a third-party repository. The
//! choice is only a convenience: everything fetched from it is checked
//! against the Debian archive keyring, so a wrong pick fails loudly.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The keyring apt itself uses for the Debian archive.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Debian release code names and aliases, as they appear as suites.
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

/// One `deb` source line or paragraph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Only `deb` sources are kept (deb-src is dropped while parsing).
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// `Signed-By` when it names a key file (inline keys are ignored).
    pub signed_by: Option<PathBuf>,
}

/// A Debian archive to fetch from: its URI and the keyring that signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Base URI without trailing slash, e.g. the one apt uses for `bookworm`.
    pub uri: String,
    /// OpenPGP keyring (binary `.gpg`) that `gpgv` checks InRelease against.
    pub keyring: PathBuf,
}

/// Parses the one-line format. `file` is only for error messages.
pub fn parse_one_line(text: &str, file: &Path) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: &str| Error::Sources {
            file: file.to_path_buf(),
            line: i + 1,
            message: message.to_string(),
        };
        let (kind, rest) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| err("incomplete line"))?;
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let (opts, after) = r
                .split_once(']')
                .ok_or_else(|| err("unterminated [options]"))?;
            for opt in opts.split_whitespace() {
                if let Some(v) = opt.strip_prefix("signed-by=") {
                    if v.starts_with('/') {
                        signed_by = Some(PathBuf::from(v));
                    }
                }
            }
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let uri = words.next().ok_or_else(|| err("missing URI"))?;
        let suite = words.next().ok_or_else(|| err("missing suite"))?;
        if kind != "deb" {
            continue;
        }
        out.push(Source {
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            signed_by,
        });
    }
    Ok(out)
}

/// Parses the deb822 format. `file` is only for error messages.
pub fn parse_deb822(text: &str, file: &Path) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    // (field, value, line) of the current paragraph.
    let mut para: Vec<(String, String, usize)> = Vec::new();
    let flush = |para: &mut Vec<(String, String, usize)>, out: &mut Vec<Source>| {
        if para.is_empty() {
            return;
        }
        let get = |name: &str| {
            para.iter()
                .find(|(f, _, _)| f.eq_ignore_ascii_case(name))
                .map(|(_, v, _)| v.as_str())
        };
        let words = |name: &str| -> Vec<String> {
            get(name)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let enabled = get("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no"));
        if enabled && words("Types").iter().any(|t| t == "deb") {
            let signed_by = get("Signed-By")
                .map(str::trim)
                .filter(|v| v.starts_with('/') && !v.contains('\n'))
                .map(PathBuf::from);
            out.push(Source {
                uris: words("URIs"),
                suites: words("Suites"),
                components: words("Components"),
                signed_by,
            });
        }
        para.clear();
    };
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut para, &mut out);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Continuation of the previous field (e.g. an inline Signed-By key).
            let Some(last) = para.last_mut() else {
                return Err(Error::Sources {
                    file: file.to_path_buf(),
                    line: i + 1,
                    message: "continuation line without a field".into(),
                });
            };
            last.1.push('\n');
            last.1.push_str(line.trim());
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            return Err(Error::Sources {
                file: file.to_path_buf(),
                line: i + 1,
                message: format!("expected `Field: value`, found {line:?}"),
            });
        };
        para.push((field.trim().to_string(), value.trim().to_string(), i + 1));
    }
    flush(&mut para, &mut out);
    Ok(out)
}

fn is_debian_suite(suite: &str) -> bool {
    DEBIAN_SUITES.contains(&suite)
}

/// Picks the Debian archive among parsed sources.
pub fn choose_mirror(sources: &[Source]) -> Option<Mirror> {
    // Prefer a source whose suites are plain release names (not -updates,
    // -backports, -security) with component main.
    let candidate = sources.iter().find(|s| {
        s.suites.iter().any(|x| is_debian_suite(x)) && s.components.iter().any(|c| c == "main")
    })?;
    let uri = candidate
        .uris
        .iter()
        .find(|u| u.starts_with("http://") || u.starts_with("https://"))?;
    let keyring = candidate
        .signed_by
        .clone()
        .filter(|p| p.extension().is_some_and(|e| e == "gpg") && p.exists())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEYRING));
    Some(Mirror {
        uri: uri.trim_end_matches('/').to_string(),
        keyring,
    })
}

/// Reads every sources file under `etc_apt` (normally `/etc/apt`).
pub fn read_sources(etc_apt: &Path) -> Result<(Vec<Source>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let main = etc_apt.join("sources.list");
    if main.exists() {
        files.push(main);
    }
    let dir = etc_apt.join("sources.list.d");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        files.extend(
            names
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources")),
        );
    }
    let mut sources = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).ctx(|| format!("reading {}", f.display()))?;
        if f.extension().is_some_and(|e| e == "sources") {
            sources.extend(parse_deb822(&text, f)?);
        } else {
            sources.extend(parse_one_line(&text, f)?);
        }
    }
    Ok((sources, files))
}

/// The Debian archive of this host: `VIRTKIT_DEBIAN_MIRROR` if set, else the
/// one named by `/etc/apt`.
pub fn host_mirror() -> Result<Mirror> {
    if let Some(uri) = std::env::var_os("VIRTKIT_DEBIAN_MIRROR") {
        let uri = uri.to_string_lossy().trim_end_matches('/').to_string();
        return Ok(Mirror {
            uri,
            keyring: PathBuf::from(DEFAULT_KEYRING),
        });
    }
    let etc = Path::new("/etc/apt");
    let (sources, files) = read_sources(etc)?;
    choose_mirror(&sources).ok_or_else(|| Error::NoMirror {
        searched: if files.is_empty() {
            "no sources files under /etc/apt".into()
        } else {
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n\
# a comment\n\
URIs: http://mirror.example/debian\n\
Suites: bookworm bookworm-updates\n\
Components: main\n\
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
\n\
Types: deb\n\
URIs: http://mirror.example/debian-security\n\
Suites: bookworm-security\n\
Components: main\n\
\n\
Types: deb-src\n\
URIs: http://src.example/debian\n\
Suites: bookworm\n\
Components: main\n";

    #[test]
    fn deb822_picks_the_archive_not_security() {
        let s = parse_deb822(DEB822, Path::new("x.sources")).unwrap();
        assert_eq!(s.len(), 2, "deb-src paragraphs are dropped");
        let m = choose_mirror(&s).unwrap();
        assert_eq!(m.uri, "http://mirror.example/debian");
    }

    #[test]
    fn security_first_is_skipped() {
        let text = DEB822.split("\n\n").collect::<Vec<_>>();
        let reordered = format!("{}\n\n{}", text[1], text[0]);
        let s = parse_deb822(&reordered, Path::new("x.sources")).unwrap();
        assert_eq!(
            choose_mirror(&s).unwrap().uri,
            "http://mirror.example/debian"
        );
    }

    #[test]
    fn deb822_inline_key_and_disabled() {
        let text = "Types: deb\nURIs: http://a.example/debian/\nSuites: trixie\nComponents: main contrib\n\
Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\nEnabled: yes\n\n\
Types: deb\nURIs: http://b.example/debian\nSuites: sid\nComponents: main\nEnabled: no\n";
        let s = parse_deb822(text, Path::new("x.sources")).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].signed_by, None);
        let m = choose_mirror(&s).unwrap();
        assert_eq!(m.uri, "http://a.example/debian");
        assert_eq!(m.keyring, PathBuf::from(DEFAULT_KEYRING));
    }

    #[test]
    fn deb822_garbage_is_an_error_with_line() {
        let e =
            parse_deb822("Types: deb\nthis is not a field\n", Path::new("f.sources")).unwrap_err();
        assert!(e.to_string().contains("f.sources:2"), "{e}");
    }

    #[test]
    fn one_line_format() {
        let text = "# comment\n\
deb https://packages.example.com/apt cloud-sdk-bookworm main\n\
deb [arch=amd64 signed-by=/etc/k.gpg] https://download.example.com/linux/debian bookworm stable\n\
deb-src http://deb.example/debian bookworm main\n\
deb http://deb.example/debian/ bookworm main contrib # trailing\n\
deb http://security.example/debian-security bookworm-security main\n";
        let s = parse_one_line(text, Path::new("sources.list")).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[1].signed_by, Some(PathBuf::from("/etc/k.gpg")));
        assert_eq!(s[1].components, vec!["stable"]);
        let m = choose_mirror(&s).unwrap();
        assert_eq!(m.uri, "http://deb.example/debian");
    }

    #[test]
    fn one_line_errors() {
        let e =
            parse_one_line("deb [arch=amd64 http://x bookworm main\n", Path::new("l")).unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
        let e = parse_one_line("deb http://x\n", Path::new("l")).unwrap_err();
        assert!(e.to_string().contains("missing suite"), "{e}");
    }

    #[test]
    fn no_debian_source() {
        let s =
            parse_one_line("deb https://x.example/apt nodistro main\n", Path::new("l")).unwrap();
        assert_eq!(choose_mirror(&s), None);
    }

    #[test]
    fn reads_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(dir.path().join("sources.list.d/debian.sources"), DEB822).unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/old.list.disabled"),
            "garbage",
        )
        .unwrap();
        let (s, files) = read_sources(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            choose_mirror(&s).unwrap().uri,
            "http://mirror.example/debian"
        );
    }
}
