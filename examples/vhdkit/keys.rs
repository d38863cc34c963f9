//! Keys of encrypted stores: where the CLI finds them, and `vhdkit key
//! add|list|remove`.
//!
//! A store's key comes from `--key-file FILE`, else a passphrase from
//! `--password-file FILE` (its first line), else `VHDKIT_PASSWORD`, else a
//! prompt on the terminal (only when the store turns out to be encrypted).
//! Never from the command line itself, where other users could read it.
//! A new passphrase (`key add`) comes from `--new-password-file`,
//! `VHDKIT_NEW_PASSWORD` or the terminal, asked twice.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::{Args, Subcommand};
use vhdkit::store::{Argon2Params, KeyKind, StoreKey};

use super::store::open_store;
use super::{Failure, parse_size, to_json as json};

/// Where the key of an encrypted store comes from (global options).
#[derive(Args, Clone, Default)]
pub(crate) struct KeyArgs {
    /// A key file that opens the store (with `store init --encrypt`: the key
    /// file to protect it with, made with 32 random bytes if absent).
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE", conflicts_with = "password_file")]
    key_file: Option<PathBuf>,
    /// A file whose first line is the store's passphrase (else
    /// VHDKIT_PASSWORD, else a prompt on the terminal).
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// The key object to try first (id or prefix; `key list` shows them).
    #[arg(long, global = true, help_heading = "Global options", value_name = "ID")]
    key_id: Option<String>,
    /// Refuse a store that is not encrypted (also VHDKIT_REQUIRE_ENCRYPTION=1):
    /// a plain store in the place of an encrypted one may be an impostor.
    #[arg(long, global = true, help_heading = "Global options")]
    require_encryption: bool,
}

impl KeyArgs {
    /// The key object to try first.
    pub(crate) fn key_id(&self) -> Option<String> {
        self.key_id.clone()
    }
}

/// Whether a plain store is to be refused.
pub(crate) fn encryption_required() -> bool {
    KEY_ARGS.get().is_some_and(|a| a.require_encryption)
        || std::env::var("VHDKIT_REQUIRE_ENCRYPTION").is_ok_and(|v| v == "1")
}

/// The key-id hint given, if any.
pub(crate) fn key_id() -> Option<String> {
    KEY_ARGS.get().and_then(KeyArgs::key_id)
}

/// Argon2id's cost for a new passphrase.
#[derive(Args, Clone)]
pub(crate) struct Argon2Args {
    /// Argon2id memory for a new passphrase (default about one second here).
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    argon2_memory: u32,
    /// Argon2id passes.
    #[arg(long, default_value_t = 5)]
    argon2_iterations: u32,
    /// Argon2id lanes.
    #[arg(long, default_value_t = 1)]
    argon2_parallelism: u32,
}

impl Argon2Args {
    pub(crate) fn params(&self) -> Argon2Params {
        let mut p = Argon2Params::default();
        p.memory_kib = self.argon2_memory / 1024;
        p.iterations = self.argon2_iterations;
        p.parallelism = self.argon2_parallelism;
        p
    }
}

static KEY_ARGS: OnceLock<KeyArgs> = OnceLock::new();
/// The key once found, so a prompt is answered once per process.
static KEY: OnceLock<Option<StoreKey>> = OnceLock::new();

pub(crate) fn set_key_args(args: KeyArgs) {
    let _ = KEY_ARGS.set(args);
}

/// The key the command line or environment gives, if any (no prompt).
pub(crate) fn given_key() -> Result<Option<StoreKey>, Failure> {
    let args = KEY_ARGS.get_or_init(KeyArgs::default);
    if let Some(path) = &args.key_file {
        return Ok(Some(StoreKey::read_key_file(path).map_err(|e| Failure::usage(e.to_string()))?));
    }
    if let Some(path) = &args.password_file {
        return Ok(Some(StoreKey::passphrase(read_password_file(path)?)));
    }
    match std::env::var("VHDKIT_PASSWORD") {
        Ok(p) if !p.is_empty() => Ok(Some(StoreKey::passphrase(p))),
        _ => Ok(None),
    }
}

/// The key for an encrypted store at `store`: given, or asked for on the
/// terminal (once per process).
pub(crate) fn key_for(store: &Path) -> Result<StoreKey, Failure> {
    if let Some(k) = KEY.get() {
        return k.clone().ok_or_else(|| no_key(store));
    }
    let key = match given_key()? {
        Some(k) => Some(k),
        None => prompt(&format!("Passphrase for {}: ", store.display()))?,
    };
    let _ = KEY.set(key.clone());
    key.ok_or_else(|| no_key(store))
}

fn no_key(store: &Path) -> Failure {
    Failure {
        code: 1,
        message: format!(
            "{} is encrypted: give --key-file, --password-file or VHDKIT_PASSWORD (or run on a terminal)",
            store.display()
        ),
    }
}

pub(crate) fn read_password_file(path: &Path) -> Result<String, Failure> {
    // The whole file is wiped when dropped; the line goes on into the key.
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?,
    );
    let line = text.lines().next().unwrap_or_default().to_string();
    if line.is_empty() {
        return Err(Failure::usage(format!("{}: the first line is empty", path.display())));
    }
    Ok(line)
}

/// A passphrase typed on the terminal (not echoed); `None` when standard
/// input is not a terminal (a script, a pipe: no one to ask).
fn prompt(question: &str) -> Result<Option<StoreKey>, Failure> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    match rpassword::prompt_password(question) {
        Ok(p) if !p.is_empty() => Ok(Some(StoreKey::passphrase(p))),
        Ok(_) => Err(Failure::usage("an empty passphrase")),
        Err(_) => Ok(None),
    }
}

/// A new passphrase: from `file`, VHDKIT_NEW_PASSWORD (or `env`), or asked
/// twice on the terminal.
fn new_passphrase(file: Option<&Path>, env: &str) -> Result<StoreKey, Failure> {
    if let Some(path) = file {
        return Ok(StoreKey::passphrase(read_password_file(path)?));
    }
    if let Ok(p) = std::env::var(env)
        && !p.is_empty()
    {
        return Ok(StoreKey::passphrase(p));
    }
    let Some(first) = prompt("New passphrase: ")? else {
        return Err(Failure::usage(format!("no new passphrase: give a file, {env}, or run on a terminal")));
    };
    let Some(second) = prompt("The same again: ")? else { return Err(Failure::usage("no passphrase")) };
    if !first.same_as(&second) {
        return Err(Failure::usage("the two passphrases differ"));
    }
    Ok(first)
}

/// The key a new encrypted store (`store init --encrypt`) is protected
/// with: a key file (made if absent) or a new passphrase.
pub(crate) fn init_key(encrypt: bool) -> Result<Option<StoreKey>, Failure> {
    let args = KEY_ARGS.get_or_init(KeyArgs::default);
    if !encrypt {
        let in_env = std::env::var("VHDKIT_PASSWORD").is_ok_and(|p| !p.is_empty());
        if args.key_file.is_some() || args.password_file.is_some() || in_env {
            return Err(Failure::usage(
                "a key was given (--key-file, --password-file or VHDKIT_PASSWORD) for a store without --encrypt",
            ));
        }
        if encryption_required() {
            return Err(Failure::usage("--require-encryption, but the new store is not encrypted (--encrypt)"));
        }
        return Ok(None);
    }
    if let Some(path) = &args.key_file {
        if !path.exists() {
            let key =
                StoreKey::generate_key_file(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
            note!("wrote a new key file {} (keep a copy: without it the store cannot be read)", path.display());
            return Ok(Some(key));
        }
        return Ok(Some(StoreKey::read_key_file(path).map_err(|e| Failure::usage(e.to_string()))?));
    }
    new_passphrase(args.password_file.as_deref(), "VHDKIT_PASSWORD").map(Some)
}

/// `vhdkit key ...`
#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Add a passphrase or key file that opens STORE (the store's key is
    /// needed to add one).
    Add {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// Add this key file (made with 32 random bytes if absent).
        #[arg(long, value_name = "FILE", conflicts_with = "new_password_file")]
        new_key_file: Option<PathBuf>,
        /// Add the passphrase on this file's first line (else
        /// VHDKIT_NEW_PASSWORD, else asked twice on the terminal).
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        argon2: Argon2Args,
    },
    /// The keys that open STORE (readable without the key).
    List {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// Print the keys as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a key (by id or a unique prefix); the last one cannot go.
    Remove {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// The key's id or a unique prefix (`key list` shows them).
        id: String,
    },
    /// Write a new key file of 32 random bytes (FILE must not exist).
    Generate {
        /// Where to write the key file (must not exist).
        file: PathBuf,
    },
}

pub(crate) fn key_command(cmd: KeyCommand) -> Result<u8, Failure> {
    match cmd {
        KeyCommand::Add { store, new_key_file, new_password_file, argon2 } => {
            let s = open_store(&store)?;
            let new = match &new_key_file {
                Some(path) if !path.exists() => {
                    let k = StoreKey::generate_key_file(path)
                        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
                    note!("wrote a new key file {}", path.display());
                    k
                }
                Some(path) => StoreKey::read_key_file(path).map_err(|e| Failure::usage(e.to_string()))?,
                None => new_passphrase(new_password_file.as_deref(), "VHDKIT_NEW_PASSWORD")?,
            };
            let id = s.add_key(&new, &argon2.params())?;
            out!("{id}");
            Ok(0)
        }
        KeyCommand::List { store, json: as_json } => {
            // With the key (when one is given) the listing says which key
            // objects the store's key holders made.
            let s = match given_key()? {
                Some(key) => {
                    // Kept for open_store, which would read it again.
                    let _ = KEY.set(Some(key));
                    open_store(&store)?
                }
                None => super::store::open_store_keyless(&store)?,
            };
            let keys = s.keys()?;
            if as_json {
                out!("{}", json(&keys)?);
                return Ok(0);
            }
            for k in &keys {
                let kind = match k.kind {
                    KeyKind::Passphrase => match &k.argon2 {
                        Some(a) => format!(
                            "passphrase (argon2id {} MiB, {} passes, {} lanes)",
                            a.memory_kib / 1024,
                            a.iterations,
                            a.parallelism
                        ),
                        None => "passphrase".into(),
                    },
                    _ => "key file".into(),
                };
                let flag = match k.authentic {
                    Some(false) => "  NOT MADE WITH THE STORE'S KEY (planted?)",
                    _ => "",
                };
                let used = if k.in_use { "  (in use)" } else { "" };
                out!("{}  {}  {:<12} {}{used}{flag}", k.id, k.created, k.host, kind);
            }
            Ok(0)
        }
        KeyCommand::Remove { store, id } => {
            let s = open_store(&store)?;
            out!("removed key {}", s.remove_key(&id)?);
            Ok(0)
        }
        KeyCommand::Generate { file } => {
            StoreKey::generate_key_file(&file).map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
            out!("wrote {} (32 random bytes, readable by its owner only)", file.display());
            Ok(0)
        }
    }
}
