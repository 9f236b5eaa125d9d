//! The site's state directory (`flotilla-client --state-dir DIR`): what must survive a
//! restart of the site. Its privacy ledger (`ledger.json`), so that a restarted site does not
//! start its budget again from zero, and its audit log (`audit.jsonl`).
//!
//! One process at a time: the directory is locked while a site runs. Without a state
//! directory the ledger lives in memory (in-process simulations) and nothing is audited.

pub mod audit;
pub mod ledger;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use audit::{AuditEvent, AuditLog};
pub use ledger::Ledger;

/// Why the state directory cannot be used. The site does not run without it: a budget it
/// cannot read is not a budget.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: another flotilla-client uses this state directory (it is locked)")]
    Locked { path: PathBuf },
}

/// An open, locked state directory.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    /// Held for the process's life: the OS releases the lock when it exits, crash included.
    _lock: File,
}

impl StateDir {
    /// Opens (creating) `dir` and locks it.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("lock");
        let lock = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StateError::Locked { path: dir.to_owned() }),
            Err(std::fs::TryLockError::Error(source)) => return Err(StateError::Io { path: lock_path, source }),
        }
        Ok(Self { dir: dir.to_owned(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.dir.join("ledger.json")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// The ledger as last saved, or an empty one in a new directory.
    pub fn load_ledger(&self) -> Result<Ledger, StateError> {
        Ledger::load(&self.ledger_path())
    }

    /// Saves the ledger durably (a temporary file, fsync, rename, fsync of the directory):
    /// a crash leaves the old ledger or the new one, never half of one.
    pub fn save_ledger(&self, ledger: &Ledger) -> Result<(), StateError> {
        ledger.save(&self.ledger_path())
    }

    pub fn audit(&self) -> Result<AuditLog, StateError> {
        AuditLog::open(&self.audit_path())
    }
}
