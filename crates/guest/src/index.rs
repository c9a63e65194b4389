//! The Debian archive's indices: the signed Release file and Packages.
//!
//! As apt does: `dists/SUITE/InRelease` is verified with `gpgv` against the
//! archive keyring; only the text gpgv certifies as signed is parsed (so
//! nothing appended outside the signature can sneak in); Packages files are
//! checked against the SHA256 listed there, and .debs against Packages.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The file list of a Release file: path -> (sha256 hex, size).
#[derive(Debug, Clone, Default)]
pub struct Release {
    pub codename: String,
    pub suite: String,
    pub files: HashMap<String, (String, u64)>,
}

/// Parses the (already verified) text of a Release file.
pub fn parse_release(text: &str) -> Result<Release> {
    let mut rel = Release::default();
    let mut in_sha256 = false;
    for line in text.lines() {
        if line.starts_with(' ') {
            if in_sha256 {
                let mut w = line.split_whitespace();
                let (Some(hash), Some(size), Some(path), None) =
                    (w.next(), w.next(), w.next(), w.next())
                else {
                    return Err(Error::format(
                        "Release",
                        format!("bad SHA256 line {line:?}"),
                    ));
                };
                if !is_sha256_hex(hash) {
                    return Err(Error::format(
                        "Release",
                        format!("bad SHA256 hash {hash:?}"),
                    ));
                }
                let size = size
                    .parse()
                    .map_err(|_| Error::format("Release", format!("bad size in {line:?}")))?;
                rel.files
                    .insert(path.to_string(), (hash.to_ascii_lowercase(), size));
            }
            continue;
        }
        in_sha256 = false;
        if let Some((field, value)) = line.split_once(':') {
            match field {
                "Codename" => rel.codename = value.trim().to_string(),
                "Suite" => rel.suite = value.trim().to_string(),
                "SHA256" => in_sha256 = true,
                _ => {}
            }
        }
    }
    if rel.files.is_empty() {
        return Err(Error::format("Release", "no SHA256 file list"));
    }
    Ok(rel)
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks the clearsigned `inrelease` with `gpgv` against `keyring` and
/// returns the signed text.
///
/// Why gpgv and not an OpenPGP crate: gpgv is what apt itself runs, it is
/// present on every Debian system (package gpgv, Priority: important), and a
/// verification-only tool keeps us out of the business of implementing
/// OpenPGP. Its `--output` hands back exactly the signed part.
pub fn verify_inrelease(inrelease: &Path, keyring: &Path, what: &str) -> Result<String> {
    if !keyring.exists() {
        return Err(Error::Signature {
            what: what.into(),
            keyring: keyring.into(),
            message: "keyring file not found (install debian-archive-keyring)".into(),
        });
    }
    let out = Command::new("gpgv")
        .arg("--status-fd")
        .arg("2")
        .arg("--keyring")
        .arg(keyring)
        .arg("--output")
        .arg("-")
        .arg(inrelease)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("running gpgv (install the gpgv package)", e))?;
    let status = String::from_utf8_lossy(&out.stderr);
    let mut valid = 0;
    let mut bad = Vec::new();
    let mut missing = Vec::new();
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        match (w.next(), w.next()) {
            (Some("VALIDSIG"), _) => valid += 1,
            (Some("BADSIG"), Some(k)) => bad.push(k.to_string()),
            (Some("NO_PUBKEY"), Some(k)) => missing.push(k.to_string()),
            _ => {}
        }
    }
    // Like apt: one good signature from the keyring suffices (Release files
    // carry signatures of several archive keys), a bad one never passes.
    if !bad.is_empty() {
        return Err(Error::Signature {
            what: what.into(),
            keyring: keyring.into(),
            message: format!("BAD signature from key {}", bad.join(", ")),
        });
    }
    if valid == 0 {
        if !missing.is_empty() {
            return Err(Error::MissingKey {
                what: what.into(),
                keyring: keyring.into(),
                keys: missing.join(", "),
            });
        }
        let msg: Vec<&str> = status
            .lines()
            .filter(|l| !l.starts_with("[GNUPG:]"))
            .collect();
        return Err(Error::Signature {
            what: what.into(),
            keyring: keyring.into(),
            message: if msg.is_empty() {
                "no valid signature".into()
            } else {
                msg.join("; ")
            },
        });
    }
    String::from_utf8(out.stdout).map_err(|_| Error::format(what, "signed text is not UTF-8"))
}

/// One binary package of a Packages index (the fields we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Path relative to the archive root (`pool/main/...`).
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// Raw `Depends` field.
    pub depends: String,
}

impl Package {
    /// The package as a Packages stanza with the fields this crate reads
    /// ([`find_packages`] parses it back to the same value).
    pub fn to_stanza(&self) -> String {
        format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nFilename: {}\nSize: {}\nSHA256: {}\nDepends: {}\n",
            self.name,
            self.version,
            self.architecture,
            self.filename,
            self.size,
            self.sha256,
            self.depends
        )
    }

    /// Names in `Depends`, first alternative of each, without versions.
    pub fn depends_names(&self) -> Vec<String> {
        self.depends
            .split(',')
            .filter_map(|d| d.split('|').next())
            .map(|d| {
                d.split(['(', ' '])
                    .find(|s| !s.is_empty())
                    .unwrap_or("")
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Finds the stanzas of `names` in a Packages index. When a name occurs
/// more than once, the first stanza wins (Debian's main suites carry one
/// version per package and architecture).
pub fn find_packages(text: &str, names: &[&str]) -> Result<HashMap<String, Package>> {
    let mut found = HashMap::new();
    for stanza in text.split("\n\n") {
        let stanza = stanza.trim_start_matches('\n');
        let Some(first) = stanza.lines().next() else {
            continue;
        };
        let Some(name) = first.strip_prefix("Package: ") else {
            continue;
        };
        let name = name.trim();
        if !names.contains(&name) || found.contains_key(name) {
            continue;
        }
        found.insert(name.to_string(), parse_stanza(stanza)?);
    }
    Ok(found)
}

fn parse_stanza(stanza: &str) -> Result<Package> {
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for line in stanza.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((f, v)) = line.split_once(':') {
            fields.insert(f, v.trim());
        }
    }
    let name = fields.get("Package").copied().unwrap_or("?").to_string();
    let what = format!("Packages entry {name}");
    let get = |f: &str| -> Result<String> {
        fields
            .get(f)
            .map(|s| s.to_string())
            .ok_or_else(|| Error::format(what.clone(), format!("missing field {f}")))
    };
    let sha256 = get("SHA256")?.to_ascii_lowercase();
    if !is_sha256_hex(&sha256) {
        return Err(Error::format(what, format!("bad SHA256 {sha256:?}")));
    }
    let filename = get("Filename")?;
    if filename.starts_with('/') || filename.split('/').any(|c| c == "..") {
        return Err(Error::format(what, format!("unsafe Filename {filename:?}")));
    }
    Ok(Package {
        version: get("Version")?,
        architecture: get("Architecture")?,
        size: get("Size")?
            .parse()
            .map_err(|_| Error::format(what.clone(), "bad Size"))?,
        sha256,
        filename,
        depends: fields.get("Depends").copied().unwrap_or("").to_string(),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "Origin: Debian\nSuite: stable\nCodename: trixie\nMD5Sum:\n \
3e498904a30e240573dac8ddac594e6f  1961125 contrib/Contents-all\nSHA256:\n \
0f29f58fb195d4e44daefa1a416ea34d1fd5f4908f54968286ad115384372298 54322586 main/binary-riscv64/Packages\n \
7778d3e3f303b7ddb8ce0fe7c8d57473a076c6bf2e8f241f75421d2396352498  9678380 main/binary-amd64/Packages.xz\n";

    #[test]
    fn stanza_round_trip() {
        let p = Package {
            name: "linux-image-riscv64".into(),
            version: "6.12.1-1".into(),
            architecture: "riscv64".into(),
            filename: "pool/main/l/x.deb".into(),
            size: 1234,
            sha256: "ab".repeat(32),
            depends: "linux-image-6.12-riscv64 (= 6.12.1-1), a | b".into(),
        };
        let two = format!(
            "{}\n{}",
            p.to_stanza(),
            Package {
                name: "other".into(),
                ..p.clone()
            }
            .to_stanza()
        );
        let found = find_packages(&two, &["linux-image-riscv64", "other"]).unwrap();
        assert_eq!(found["linux-image-riscv64"], p);
        assert_eq!(found["other"].name, "other");
    }

    #[test]
    fn release_sha256_list() {
        let r = parse_release(RELEASE).unwrap();
        assert_eq!(r.codename, "trixie");
        assert_eq!(r.suite, "stable");
        assert_eq!(r.files.len(), 2, "MD5Sum entries are not taken");
        assert_eq!(r.files["main/binary-amd64/Packages.xz"].1, 9678380);
    }

    #[test]
    fn release_bad_lines() {
        assert!(parse_release("Codename: x\n").is_err());
        let e = parse_release("SHA256:\n zz 12 a\n").unwrap_err();
        assert!(e.to_string().contains("bad SHA256 hash"), "{e}");
        let h = "a".repeat(64);
        let e = parse_release(&format!("SHA256:\n {h} twelve a\n")).unwrap_err();
        assert!(e.to_string().contains("bad size"), "{e}");
    }

    const PACKAGES: &str = "Package: linux-image-riscv64\nSource: linux\nVersion: 6.12.107-1\n\
Architecture: riscv64\nDepends: linux-image-6.12.107+deb13-riscv64 (= 6.12.107-1)\n\
Description: meta\n continued\nFilename: pool/main/l/linux/linux-image-riscv64_6.12.107-1_riscv64.deb\n\
Size: 1436\nSHA256: 1b458cc5b1d13b946bdca67bdca891fccf57882f8af972276d1346b24fa8285b\n\n\
Package: kmodx\nVersion: 1\nArchitecture: riscv64\nDepends: a:any (>= 1) | b, c\nFilename: pool/k.deb\n\
Size: 1\nSHA256: 1b458cc5b1d13b946bdca67bdca891fccf57882f8af972276d1346b24fa8285b\n\n\
Package: evil\nVersion: 1\nArchitecture: riscv64\nFilename: pool/../../etc/passwd\n\
Size: 1\nSHA256: 1b458cc5b1d13b946bdca67bdca891fccf57882f8af972276d1346b24fa8285b\n";

    #[test]
    fn packages_lookup_and_depends() {
        let p = find_packages(PACKAGES, &["linux-image-riscv64", "kmodx", "absent"]).unwrap();
        assert_eq!(p.len(), 2);
        let k = &p["linux-image-riscv64"];
        assert_eq!(k.size, 1436);
        assert_eq!(
            k.depends_names(),
            vec!["linux-image-6.12.107+deb13-riscv64"]
        );
        assert_eq!(p["kmodx"].depends_names(), vec!["a", "c"]);
    }

    #[test]
    fn packages_unsafe_filename_rejected() {
        let e = find_packages(PACKAGES, &["evil"]).unwrap_err();
        assert!(e.to_string().contains("unsafe Filename"), "{e}");
    }

    #[test]
    fn packages_missing_field() {
        let e = find_packages("Package: x\nVersion: 1\n", &["x"]).unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
    }
}
