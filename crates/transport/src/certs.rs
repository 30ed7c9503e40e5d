//! `strait certs`: a private CA and, signed by it, server certificates for cores and client
//! certificates for edges, plus the shared dedup key. Keys are written with mode 0600; existing
//! files are never overwritten without `force`. An existing CA is reused, so edges can be added
//! later (`strait certs --out certs --edge edge-b`).

use crate::{io_err, Error};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What `generate` wrote.
#[derive(Debug, Default)]
pub struct Generated {
    /// Files created (or overwritten with force).
    pub written: Vec<PathBuf>,
    /// Files that existed and were kept (an existing CA or dedup key reused).
    pub reused: Vec<PathBuf>,
}

/// File name of a core's certificate and key.
pub fn core_files(name: &str) -> (String, String) {
    (format!("core-{name}.pem"), format!("core-{name}.key"))
}

/// File name of an edge's certificate and key.
pub fn edge_files(name: &str) -> (String, String) {
    (format!("edge-{name}.pem"), format!("edge-{name}.key"))
}

fn gen_err(e: rcgen::Error) -> Error {
    Error::CertGen(e.to_string())
}

fn write_file(path: &Path, contents: &[u8], secret: bool, force: bool) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    if secret {
        opts.mode(0o600);
    } else {
        opts.mode(0o644);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Exists(path.to_path_buf())
        } else {
            Error::Io {
                context: format!("creating {}", path.display()),
                source: e,
            }
        }
    })?;
    if secret {
        // A pre-existing file keeps its mode on truncate: force 0600 explicitly.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(format!("chmod {}", path.display())))?;
    }
    f.write_all(contents)
        .map_err(io_err(format!("writing {}", path.display())))?;
    f.sync_all()
        .map_err(io_err(format!("syncing {}", path.display())))
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// Creates (or reuses) the CA in `out` and issues certificates for `cores` and `edges`.
pub fn generate(
    out: &Path,
    cores: &[String],
    edges: &[String],
    force: bool,
) -> Result<Generated, Error> {
    for n in cores.iter().chain(edges) {
        if !valid_name(n) {
            return Err(Error::CertGen(format!(
                "name {n:?} is not valid: use letters, digits, '-', '.', '_'"
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(io_err(format!("creating {}", out.display())))?;
    let mut g = Generated::default();
    // Refuse before writing anything, so a run without --force changes nothing.
    if !force {
        for n in cores {
            let (c, k) = core_files(n);
            for f in [c, k] {
                let p = out.join(f);
                if p.exists() {
                    return Err(Error::Exists(p));
                }
            }
        }
        for n in edges {
            let (c, k) = edge_files(n);
            for f in [c, k] {
                let p = out.join(f);
                if p.exists() {
                    return Err(Error::Exists(p));
                }
            }
        }
    }

    let ca_cert_path = out.join("ca.pem");
    let ca_key_path = out.join("ca.key");
    let (ca_cert, ca_key) = if ca_cert_path.exists() && ca_key_path.exists() && !force {
        let cert_pem = std::fs::read_to_string(&ca_cert_path)
            .map_err(io_err(format!("reading {}", ca_cert_path.display())))?;
        let key_pem = std::fs::read_to_string(&ca_key_path)
            .map_err(io_err(format!("reading {}", ca_key_path.display())))?;
        let key = KeyPair::from_pem(&key_pem).map_err(gen_err)?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(gen_err)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        g.reused.push(ca_cert_path.clone());
        (cert, key)
    } else {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "strait private CA");
        dn.push(DnType::OrganizationName, "strait");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        write_file(&ca_cert_path, cert.pem().as_bytes(), false, true)?;
        write_file(&ca_key_path, key.serialize_pem().as_bytes(), true, true)?;
        g.written.push(ca_cert_path);
        g.written.push(ca_key_path);
        (cert, key)
    };

    let issue = |name: &str, server: bool| -> Result<(String, String), Error> {
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(gen_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    for n in cores {
        let (cert, key) = issue(n, true)?;
        let (c, k) = core_files(n);
        write_file(&out.join(&c), cert.as_bytes(), false, force)?;
        write_file(&out.join(&k), key.as_bytes(), true, force)?;
        g.written.push(out.join(c));
        g.written.push(out.join(k));
    }
    for n in edges {
        let (cert, key) = issue(n, false)?;
        let (c, k) = edge_files(n);
        write_file(&out.join(&c), cert.as_bytes(), false, force)?;
        write_file(&out.join(&k), key.as_bytes(), true, force)?;
        g.written.push(out.join(c));
        g.written.push(out.join(k));
    }

    let key_path = out.join("dedup.key");
    if key_path.exists() && !force {
        g.reused.push(key_path);
    } else {
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut key[..]);
        write_file(
            &key_path,
            format!("{}\n", hex::encode(key)).as_bytes(),
            true,
            force,
        )?;
        g.written.push(key_path);
    }
    Ok(g)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_private_and_existing_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(dir.path(), &["localhost".into()], &["edge-a".into()], false).unwrap();
        assert_eq!(g.written.len(), 7);
        for f in [
            "ca.key",
            "core-localhost.key",
            "edge-edge-a.key",
            "dedup.key",
        ] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let before = std::fs::read(dir.path().join("edge-edge-a.pem")).unwrap();
        let err = generate(dir.path(), &[], &["edge-a".into()], false).unwrap_err();
        assert!(matches!(err, Error::Exists(_)), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("edge-edge-a.pem")).unwrap(),
            before
        );
        // Adding an edge reuses the CA.
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let g = generate(dir.path(), &[], &["edge-b".into()], false).unwrap();
        assert!(g.reused.contains(&dir.path().join("ca.pem")));
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        // --force overwrites.
        generate(dir.path(), &[], &["edge-a".into()], true).unwrap();
        assert_ne!(
            std::fs::read(dir.path().join("edge-edge-a.pem")).unwrap(),
            before
        );
    }
}
