//! Encryption at rest for small secrets stored in the daemon's database.
//!
//! Values are sealed with XChaCha20-Poly1305 under a 32-byte key that lives in
//! a key file (64 hex characters, mode 0600). A sealed value is a string:
//!
//! ```text
//! sealed:v1:<base64(24-byte random nonce || ciphertext || 16-byte tag)>
//! ```
//!
//! The caller supplies associated data (`aad`, e.g. the row id) when sealing
//! and opening, which binds a sealed value to its row: copying it into
//! another row makes it fail to open.
//!
//! This module is self-contained: it depends only on `chacha20poly1305`,
//! `base64`, `sha2`, `hex`, `thiserror` and `tracing`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, Generate, Payload};
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// Prefix of every value produced by [`Sealer::seal`].
const PREFIX: &str = "sealed:v1:";
/// Common prefix of all (present and future) sealed formats.
pub(super) const FAMILY_PREFIX: &str = "sealed:";
const KEY_LEN: usize = 32;
const KEY_HEX_LEN: usize = KEY_LEN * 2;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Domain-separation label for the key fingerprint, so the fingerprint is
/// never equal to a hash of the key used anywhere else.
const FINGERPRINT_LABEL: &[u8] = b"sealer key fingerprint v1\0";

/// How long `load_or_create` waits for a concurrently created key file to be
/// fully written before giving up.
const CONCURRENT_CREATE_RETRIES: u32 = 20;
const CONCURRENT_CREATE_WAIT: Duration = Duration::from_millis(50);

/// Errors from loading keys and sealing/opening values.
///
/// Messages never contain key material or plaintext. Each message spells its
/// cause out and marks no `#[source]`, so a report that walks the chain
/// (anyhow in `main`) does not print the cause twice.
#[derive(Debug, thiserror::Error)]
pub enum SealerError {
    /// The key file could not be opened or read.
    #[error("cannot read secrets key file {}: {error}", path.display())]
    ReadKey { path: PathBuf, error: io::Error },

    /// The key file could not be created or written.
    #[error("cannot create secrets key file {}: {error}", path.display())]
    CreateKey { path: PathBuf, error: io::Error },

    /// The key file is readable or writable by group or others.
    #[error(
        "secrets key file {} has insecure permissions {mode:04o} (accessible by group/others); \
         run `chmod 600 {}` and restart",
        path.display(),
        path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },

    /// The key file does not hold exactly 64 hex characters.
    #[error(
        "secrets key file {} is invalid: {reason}; it must contain exactly 64 hex characters \
         (a 32-byte key), e.g. generated with `openssl rand -hex 32`",
        path.display()
    )]
    InvalidKey { path: PathBuf, reason: String },

    /// The operating system's random number generator failed.
    #[error("cannot generate a random secrets key: the OS random number generator failed: {0}")]
    Rng(String),

    /// The value does not start with the `sealed:` prefix at all: it was never
    /// sealed (e.g. a legacy plaintext value).
    #[error("value is not sealed (expected prefix `sealed:v1:`)")]
    NotSealed,

    /// The value is `sealed:` but in a format version this build does not know.
    #[error("sealed value uses an unsupported format version (this build only reads `sealed:v1:`)")]
    UnsupportedVersion,

    /// The value has the `sealed:v1:` prefix but its payload is not valid
    /// (bad base64, or too short to hold a nonce and a tag).
    #[error("sealed value is malformed: {0}")]
    Malformed(String),

    /// The value is well-formed but does not authenticate: wrong key, wrong
    /// associated data (row binding), or it was modified/truncated.
    #[error(
        "sealed value does not decrypt with the current key (fingerprint {fingerprint}): \
         either the key file changed since it was sealed, it was sealed for a different row, \
         or it was tampered with"
    )]
    Decrypt { fingerprint: String },
}

/// Encrypts and decrypts small secrets (a JSON document of header/env values) with XChaCha20-Poly1305.
#[derive(Clone)]
pub struct Sealer {
    /// Holds the only long-lived copy of the key.
    cipher: XChaCha20Poly1305,
    /// Precomputed so the key never needs to be read back out of `cipher`.
    fingerprint: String,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Loads a 32-byte key from `path`: the file holds 64 hex characters (surrounding whitespace allowed).
    /// Refuses a file readable by group/others (unix mode & 0o077 != 0) with an error telling the operator to `chmod 600 PATH`.
    pub fn load(path: &Path) -> Result<Sealer, SealerError> {
        let contents = read_key_file(path)?;
        Sealer::from_key_file_contents(path, &contents)
    }

    /// Loads the key at `path`, or when the file does not exist creates it with a fresh random key (mode 0600, created with create_new so two processes cannot both write it) and returns (sealer, true).
    pub fn load_or_create(path: &Path) -> Result<(Sealer, bool), SealerError> {
        let mut waits = 0;
        loop {
            match read_key_file(path) {
                // Another process may have just created the file with
                // create_new and not finished writing the key yet: give it a
                // moment before reporting the file as invalid.
                Ok(contents)
                    if waits < CONCURRENT_CREATE_RETRIES && looks_partially_written(&contents) =>
                {
                    waits += 1;
                    std::thread::sleep(CONCURRENT_CREATE_WAIT);
                    continue;
                }
                Ok(contents) => {
                    return Sealer::from_key_file_contents(path, &contents).map(|s| (s, false));
                }
                Err(SealerError::ReadKey { error, .. })
                    if error.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }

            let key = Key::try_generate().map_err(|e| SealerError::Rng(e.to_string()))?;
            match create_key_file(path, &key) {
                Ok(()) => {
                    let sealer = Sealer::from_key_ref(&key);
                    tracing::info!(
                        path = %path.display(),
                        fingerprint = %sealer.fingerprint,
                        "generated new secrets key; back up this file: secrets sealed with it \
                         cannot be recovered without it"
                    );
                    return Ok((sealer, true));
                }
                // Lost the race against another process: load its key.
                Err(source) if source.kind() == io::ErrorKind::AlreadyExists => {
                    tracing::debug!(
                        path = %path.display(),
                        "secrets key file was created concurrently; loading it"
                    );
                }
                Err(error) => {
                    return Err(SealerError::CreateKey {
                        path: path.to_path_buf(),
                        error,
                    });
                }
            }
        }
    }

    fn from_key_file_contents(path: &Path, contents: &str) -> Result<Sealer, SealerError> {
        let key = parse_key_hex(contents).map_err(|reason| SealerError::InvalidKey {
            path: path.to_path_buf(),
            reason,
        })?;
        let sealer = Sealer::from_key(key);
        tracing::debug!(
            path = %path.display(),
            fingerprint = %sealer.fingerprint,
            "loaded secrets key"
        );
        Ok(sealer)
    }

    /// Builds a sealer from a raw 32-byte key (tests, or a key obtained elsewhere).
    pub fn from_key(key: [u8; 32]) -> Sealer {
        Sealer::from_key_ref(&Key::from(key))
    }

    fn from_key_ref(key: &Key) -> Sealer {
        let digest = Sha256::new()
            .chain_update(FINGERPRINT_LABEL)
            .chain_update(key.as_slice())
            .finalize();
        Sealer {
            cipher: XChaCha20Poly1305::new(key),
            fingerprint: hex::encode(&digest[..8]),
        }
    }

    /// "sealed:v1:" + base64(24-byte random nonce || ciphertext+tag). `aad` binds the ciphertext to its row (e.g. the row id) so a sealed value cannot be moved to another row.
    ///
    /// # Panics
    /// Only if the OS random number generator fails, which does not happen
    /// on supported platforms.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let nonce = XNonce::generate();
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Only fails for plaintexts of ~256 GiB, far beyond any secret.
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory inputs");

        let mut payload = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        payload.extend_from_slice(nonce.as_slice());
        payload.extend_from_slice(&ciphertext);

        let mut out = String::with_capacity(PREFIX.len() + payload.len().div_ceil(3) * 4);
        out.push_str(PREFIX);
        BASE64.encode_string(&payload, &mut out);
        out
    }

    /// Inverse of seal; wrong key, wrong aad, tampering, truncation, bad prefix or bad base64 → SealerError (distinguish "not sealed by this format" from "does not decrypt with this key").
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, SealerError> {
        let Some(encoded) = sealed.strip_prefix(PREFIX) else {
            return Err(if sealed.starts_with(FAMILY_PREFIX) {
                SealerError::UnsupportedVersion
            } else {
                SealerError::NotSealed
            });
        };
        let payload = BASE64
            .decode(encoded)
            .map_err(|e| SealerError::Malformed(format!("invalid base64 payload ({e})")))?;
        if payload.len() < NONCE_LEN + TAG_LEN {
            return Err(SealerError::Malformed(format!(
                "payload is {} bytes, shorter than the {} bytes of nonce and tag (truncated?)",
                payload.len(),
                NONCE_LEN + TAG_LEN
            )));
        }
        let (nonce, ciphertext) = payload.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce)
            .map_err(|_| SealerError::Malformed("invalid nonce length".to_string()))?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealerError::Decrypt {
                fingerprint: self.fingerprint.clone(),
            })
    }

    /// Whether `value` looks like the output of [`Sealer::seal`] (has the
    /// `sealed:v1:` prefix). Does not check that it decrypts.
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }

    /// Short hex fingerprint of the key (first 8 bytes of SHA-256 over a fixed label + key) for logs.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

/// Parses 64 hex characters (surrounding whitespace allowed) into a key.
/// The error reason never contains characters from the file.
fn parse_key_hex(contents: &str) -> Result<[u8; KEY_LEN], String> {
    let trimmed = contents.trim();
    if trimmed.is_empty() {
        return Err("file is empty".to_string());
    }
    if let Some(pos) = trimmed.chars().position(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "character {} is not a hex digit (0-9, a-f)",
            pos + 1
        ));
    }
    if trimmed.len() != KEY_HEX_LEN {
        return Err(format!(
            "found {} hex characters, expected {KEY_HEX_LEN}",
            trimmed.len()
        ));
    }
    let mut key = [0u8; KEY_LEN];
    hex::decode_to_slice(trimmed, &mut key).map_err(|_| "invalid hex".to_string())?;
    Ok(key)
}

/// Opens the key file, checks its permissions and reads its (small) contents.
fn read_key_file(path: &Path) -> Result<String, SealerError> {
    let read_err = |error| SealerError::ReadKey {
        path: path.to_path_buf(),
        error,
    };
    let mut file = File::open(path).map_err(read_err)?;
    // Check the permissions of the file we actually opened (no race between
    // checking and reading).
    let metadata = file.metadata().map_err(read_err)?;
    if !metadata.is_file() {
        return Err(SealerError::InvalidKey {
            path: path.to_path_buf(),
            reason: "not a regular file".to_string(),
        });
    }
    check_permissions(path, &metadata)?;

    // A valid file is ~65 bytes; refuse to slurp something huge.
    let mut contents = String::new();
    (&mut file)
        .take(4096)
        .read_to_string(&mut contents)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::InvalidData {
                SealerError::InvalidKey {
                    path: path.to_path_buf(),
                    reason: "file is not valid UTF-8 text".to_string(),
                }
            } else {
                read_err(source)
            }
        })?;
    Ok(contents)
}

/// Whether key file contents are a strict prefix of a valid key (empty, or
/// fewer than 64 hex digits), i.e. possibly still being written by a
/// concurrent `load_or_create`.
fn looks_partially_written(contents: &str) -> bool {
    let trimmed = contents.trim();
    trimmed.len() < KEY_HEX_LEN && trimmed.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(unix)]
fn check_permissions(path: &Path, metadata: &std::fs::Metadata) -> Result<(), SealerError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SealerError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _metadata: &std::fs::Metadata) -> Result<(), SealerError> {
    Ok(())
}

/// Creates `path` exclusively (fails with `AlreadyExists` if it exists) with
/// mode 0600 and writes the hex key. On a write failure the partial file is
/// removed so a later start does not find a truncated key.
fn create_key_file(path: &Path, key: &Key) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;

    let result = (|| {
        let mut line = hex::encode(key.as_slice());
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.sync_all()
    })();
    if let Err(e) = result {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    drop(file);

    // Make the new directory entry durable too (best effort).
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: [u8; 32] = [0x11; 32];
    const KEY_B: [u8; 32] = [0x22; 32];

    fn sealer_a() -> Sealer {
        Sealer::from_key(KEY_A)
    }

    fn write_key_file(dir: &Path, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join("secrets.key");
        std::fs::write(&path, contents).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = mode;
        path
    }

    /// Replaces the base64 payload of a sealed value.
    fn with_payload(sealed: &str, f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut payload = BASE64.decode(sealed.strip_prefix(PREFIX).unwrap()).unwrap();
        f(&mut payload);
        format!("{PREFIX}{}", BASE64.encode(payload))
    }

    #[test]
    fn round_trip() {
        let s = sealer_a();
        let plaintext = br#"{"headers":{"Authorization":"Bearer xyz"},"env":{"TOKEN":"abc"}}"#;
        let sealed = s.seal(plaintext, b"row:42");
        assert!(sealed.starts_with("sealed:v1:"));
        assert!(Sealer::is_sealed(&sealed));
        assert!(!sealed.contains("Bearer"));
        assert_eq!(s.open(&sealed, b"row:42").unwrap(), plaintext);
    }

    #[test]
    fn round_trip_empty_plaintext_and_aad() {
        let s = sealer_a();
        let sealed = s.seal(b"", b"");
        assert_eq!(s.open(&sealed, b"").unwrap(), b"");
    }

    #[test]
    fn clone_opens_original() {
        let s = sealer_a();
        let sealed = s.seal(b"x", b"a");
        assert_eq!(s.clone().open(&sealed, b"a").unwrap(), b"x");
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let s = sealer_a();
        let a = s.seal(b"same", b"row:1");
        let b = s.seal(b"same", b"row:1");
        assert_ne!(a, b);
        let nonce =
            |v: &str| BASE64.decode(v.strip_prefix(PREFIX).unwrap()).unwrap()[..NONCE_LEN].to_vec();
        assert_ne!(nonce(&a), nonce(&b));
        assert_eq!(s.open(&a, b"row:1").unwrap(), b"same");
        assert_eq!(s.open(&b, b"row:1").unwrap(), b"same");
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = sealer_a().seal(b"secret", b"row:1");
        let err = Sealer::from_key(KEY_B).open(&sealed, b"row:1").unwrap_err();
        assert!(matches!(err, SealerError::Decrypt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&Sealer::from_key(KEY_B).fingerprint()),
            "{msg}"
        );
        assert!(!msg.contains("secret"));
    }

    #[test]
    fn wrong_aad_fails() {
        let s = sealer_a();
        let sealed = s.seal(b"secret", b"row:1");
        let err = s.open(&sealed, b"row:2").unwrap_err();
        assert!(matches!(err, SealerError::Decrypt { .. }), "{err:?}");
        let err = s.open(&sealed, b"").unwrap_err();
        assert!(matches!(err, SealerError::Decrypt { .. }), "{err:?}");
    }

    #[test]
    fn tampered_byte_fails() {
        let s = sealer_a();
        let sealed = s.seal(b"secret value", b"row:1");
        let len = BASE64
            .decode(sealed.strip_prefix(PREFIX).unwrap())
            .unwrap()
            .len();
        // Flip one bit in every position: nonce, ciphertext and tag.
        for i in 0..len {
            let tampered = with_payload(&sealed, |p| p[i] ^= 0x01);
            let err = s.open(&tampered, b"row:1").unwrap_err();
            assert!(
                matches!(err, SealerError::Decrypt { .. }),
                "byte {i}: {err:?}"
            );
        }
        // Appending a byte fails as well.
        let extended = with_payload(&sealed, |p| p.push(0));
        assert!(matches!(
            s.open(&extended, b"row:1"),
            Err(SealerError::Decrypt { .. })
        ));
    }

    #[test]
    fn truncated_fails() {
        let s = sealer_a();
        let sealed = s.seal(b"secret value", b"row:1");
        let len = BASE64
            .decode(sealed.strip_prefix(PREFIX).unwrap())
            .unwrap()
            .len();
        for keep in 0..len {
            let truncated = with_payload(&sealed, |p| p.truncate(keep));
            let err = s.open(&truncated, b"row:1").unwrap_err();
            if keep < NONCE_LEN + TAG_LEN {
                assert!(
                    matches!(err, SealerError::Malformed(_)),
                    "keep {keep}: {err:?}"
                );
            } else {
                assert!(
                    matches!(err, SealerError::Decrypt { .. }),
                    "keep {keep}: {err:?}"
                );
            }
        }
        // Truncating the string itself (breaking the base64) also fails.
        for cut in 1..8 {
            assert!(s.open(&sealed[..sealed.len() - cut], b"row:1").is_err());
        }
        assert!(matches!(
            s.open(PREFIX, b"row:1"),
            Err(SealerError::Malformed(_))
        ));
    }

    #[test]
    fn not_sealed_string() {
        let s = sealer_a();
        for value in [
            "",
            "plain text",
            "{\"a\":1}",
            "SEALED:v1:abcd",
            " sealed:v1:",
        ] {
            assert!(!Sealer::is_sealed(value));
            let err = s.open(value, b"row:1").unwrap_err();
            assert!(matches!(err, SealerError::NotSealed), "{value:?}: {err:?}");
            assert!(err.to_string().contains("not sealed"));
        }
        let err = s.open("sealed:v2:AAAA", b"row:1").unwrap_err();
        assert!(matches!(err, SealerError::UnsupportedVersion), "{err:?}");
        assert!(!Sealer::is_sealed("sealed:v2:AAAA"));
    }

    #[test]
    fn bad_base64_is_malformed() {
        let s = sealer_a();
        let err = s.open("sealed:v1:not base64!!", b"row:1").unwrap_err();
        assert!(matches!(err, SealerError::Malformed(_)), "{err:?}");
        assert!(err.to_string().contains("base64"));
    }

    #[test]
    fn fingerprint_is_short_stable_and_key_dependent() {
        let a = sealer_a().fingerprint();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, sealer_a().fingerprint());
        assert_ne!(a, Sealer::from_key(KEY_B).fingerprint());
        assert!(!hex::encode(KEY_A).contains(&a));
    }

    #[test]
    fn debug_does_not_print_key() {
        let key: [u8; 32] = core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(5));
        let s = Sealer::from_key(key);
        for out in [format!("{s:?}"), format!("{s:#?}")] {
            assert!(!out.to_lowercase().contains(&hex::encode(key)), "{out}");
            assert!(
                !out.to_uppercase().contains(&hex::encode_upper(key)),
                "{out}"
            );
            // Nor as a decimal byte list.
            assert!(!out.contains("5, 42, 79"), "{out}");
            assert!(out.contains(&s.fingerprint()), "{out}");
        }
    }

    #[test]
    fn load_valid_key_with_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key_file(
            dir.path(),
            &format!("\n  {}  \n\n", hex::encode(KEY_A)),
            0o600,
        );
        let loaded = Sealer::load(&path).unwrap();
        assert_eq!(loaded.fingerprint(), sealer_a().fingerprint());
        let sealed = sealer_a().seal(b"x", b"r");
        assert_eq!(loaded.open(&sealed, b"r").unwrap(), b"x");
        // Upper-case hex is accepted too.
        let path = write_key_file(dir.path(), &hex::encode_upper(KEY_A), 0o600);
        assert_eq!(
            Sealer::load(&path).unwrap().fingerprint(),
            sealer_a().fingerprint()
        );
    }

    #[test]
    fn load_rejects_bad_hex() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = hex::encode(KEY_A);
        bad.replace_range(10..11, "g");
        let path = write_key_file(dir.path(), &bad, 0o600);
        let err = Sealer::load(&path).unwrap_err();
        assert!(matches!(err, SealerError::InvalidKey { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("64 hex characters"), "{msg}");
        assert!(msg.contains("character 11"), "{msg}");
        assert!(!msg.contains("1111"), "message leaks key material: {msg}");
    }

    #[test]
    fn load_rejects_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        for contents in [
            String::new(),
            "   \n".to_string(),
            hex::encode([0x11u8; 31]),
            hex::encode([0x11u8; 33]),
            format!("{}1", hex::encode(KEY_A)),
            format!(
                "{} {}",
                hex::encode(&KEY_A[..16]),
                hex::encode(&KEY_A[16..])
            ),
        ] {
            let path = write_key_file(dir.path(), &contents, 0o600);
            let err = Sealer::load(&path).unwrap_err();
            assert!(
                matches!(err, SealerError::InvalidKey { .. }),
                "{contents:?}: {err:?}"
            );
            assert!(!err.to_string().contains("1111"), "{err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn load_rejects_group_or_world_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o660] {
            let path = write_key_file(dir.path(), &hex::encode(KEY_A), mode);
            let err = Sealer::load(&path).unwrap_err();
            assert!(
                matches!(err, SealerError::InsecurePermissions { mode: m, .. } if m == mode),
                "{mode:o}: {err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
        }
        // 0400 is fine.
        let path = write_key_file(dir.path(), &hex::encode(KEY_A), 0o400);
        assert!(Sealer::load(&path).is_ok());
    }

    #[test]
    fn load_missing_file_is_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.key");
        let err = Sealer::load(&path).unwrap_err();
        match &err {
            SealerError::ReadKey { error, .. } => {
                assert_eq!(error.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("missing.key"));
    }

    #[test]
    fn load_or_create_creates_0600_key_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");

        let (first, created) = Sealer::load_or_create(&path).unwrap();
        assert!(created);

        let contents = std::fs::read_to_string(&path).unwrap();
        let trimmed = contents.trim();
        assert_eq!(trimmed.len(), 64);
        assert!(trimmed.chars().all(|c| c.is_ascii_hexdigit()));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "mode {mode:o}");
        }

        let sealed = first.seal(b"{\"env\":{\"K\":\"v\"}}", b"row:7");

        let (second, created) = Sealer::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(second.fingerprint(), first.fingerprint());
        assert_eq!(
            second.open(&sealed, b"row:7").unwrap(),
            b"{\"env\":{\"K\":\"v\"}}"
        );

        let third = Sealer::load(&path).unwrap();
        assert_eq!(
            third.open(&sealed, b"row:7").unwrap(),
            b"{\"env\":{\"K\":\"v\"}}"
        );

        // Debug of a loaded sealer does not contain the key from the file.
        assert!(!format!("{second:?}").contains(trimmed));
    }

    #[test]
    fn load_or_create_generates_distinct_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = Sealer::load_or_create(&dir.path().join("a.key")).unwrap();
        let (b, _) = Sealer::load_or_create(&dir.path().join("b.key")).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[cfg(unix)]
    #[test]
    fn load_or_create_does_not_overwrite_insecure_or_invalid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key_file(dir.path(), &hex::encode(KEY_A), 0o644);
        assert!(matches!(
            Sealer::load_or_create(&path),
            Err(SealerError::InsecurePermissions { .. })
        ));
        let path = write_key_file(dir.path(), "garbage", 0o600);
        assert!(matches!(
            Sealer::load_or_create(&path),
            Err(SealerError::InvalidKey { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");
    }

    #[test]
    fn load_or_create_missing_directory_is_create_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("secrets.key");
        let err = Sealer::load_or_create(&path).unwrap_err();
        assert!(matches!(err, SealerError::CreateKey { .. }), "{err:?}");
    }

    #[test]
    fn load_or_create_concurrent_callers_agree() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("secrets.key");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let path = path.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        Sealer::load_or_create(&path).unwrap()
                    })
                })
                .collect();
            let results: Vec<(Sealer, bool)> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
            let fp = results[0].0.fingerprint();
            assert!(results.iter().all(|(s, _)| s.fingerprint() == fp));
            assert_eq!(Sealer::load(&path).unwrap().fingerprint(), fp);
        }
    }

    #[test]
    fn load_or_create_does_not_overwrite_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key_file(dir.path(), "", 0o600);
        let err = Sealer::load_or_create(&path).unwrap_err();
        assert!(matches!(err, SealerError::InvalidKey { .. }), "{err:?}");
        assert!(err.to_string().contains("file is empty"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
