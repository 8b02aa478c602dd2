//! One run per tenant at a time. Two runs of one tenant (an operator's manual run beside the scheduled one) would
//! both write the central folder from the same snapshot, so a run first takes the tenant's lease: on the broker in
//! fleet mode ([`shared::mq::take_lease`], an exclusive queue the broker drops with its holder's connection), a
//! file lock in the state directory in embedded mode ([`FileLeases`], released by the OS when the holder exits).
//! A lease that is taken stops that tenant with [`LeaseError::Held`]; the other tenants of the run go on.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a run could not take a tenant's lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another run holds it.
    #[error(
        "another contactmirror run is syncing tenant {tenant} (it holds {holder}); this run left the tenant \
         alone. Run again once that run has finished; a run that crashed releases the lease by itself"
    )]
    Held {
        /// The tenant.
        tenant: String,
        /// What the lease is (the broker queue or the lock file), so the operator can find the holder.
        holder: String,
    },
    /// The lease could not be asked for at all.
    #[error("could not take the lease on tenant {tenant}: {detail}")]
    Unavailable {
        /// The tenant.
        tenant: String,
        /// What failed.
        detail: String,
    },
}

/// File locks on tenants, held until this value is dropped (or the process exits).
#[derive(Debug)]
pub struct FileLeases {
    dir: PathBuf,
    held: Vec<File>,
}

impl FileLeases {
    /// Leases kept as lock files in `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            held: Vec::new(),
        }
    }

    /// The lock file of `tenant_id` in `dir`.
    pub fn path(dir: &Path, tenant_id: &str) -> PathBuf {
        dir.join(format!("tenant-{}.lock", file_safe(tenant_id)))
    }

    /// Takes `tenant_id`'s lease, without waiting.
    pub fn take(&mut self, tenant_id: &str) -> Result<(), LeaseError> {
        let unavailable = |detail: String| LeaseError::Unavailable {
            tenant: tenant_id.to_owned(),
            detail,
        };
        crate::files::create_private_dir(&self.dir)
            .map_err(|e| unavailable(format!("creating {}: {e}", self.dir.display())))?;
        let path = Self::path(&self.dir, tenant_id);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| unavailable(format!("opening {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {
                // Who holds it, for the run that is refused (best effort: the lock is what counts).
                let _ = file
                    .set_len(0)
                    .and_then(|()| (&file).write_all(holder_note().as_bytes()));
                self.held.push(file);
                Ok(())
            }
            Err(TryLockError::WouldBlock) => {
                let note = std::fs::read_to_string(&path).unwrap_or_default();
                let note: String = note
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                let holder = if note.is_empty() {
                    format!("the lock file {}", path.display())
                } else {
                    format!("the lock file {}: {note}", path.display())
                };
                Err(LeaseError::Held {
                    tenant: tenant_id.to_owned(),
                    holder,
                })
            }
            Err(TryLockError::Error(e)) => {
                Err(unavailable(format!("locking {}: {e}", path.display())))
            }
        }
    }

    /// Releases every lease.
    pub fn release(&mut self) {
        self.held.clear();
    }
}

/// What a lock file says about its holder: process, host and since when.
fn holder_note() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unknown host".to_owned());
    format!(
        "taken by process {} on {host} at {}",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// A tenant id as a file-name part: lower case, anything but letters, digits, dots and dashes replaced.
pub fn file_safe(tenant_id: &str) -> String {
    tenant_id
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_releases() {
        let dir = std::env::temp_dir().join(format!("cm-lease-{}", uuid::Uuid::new_v4()));
        let mut first = FileLeases::new(&dir);
        let mut second = FileLeases::new(&dir);
        first.take("Contoso.onmicrosoft.com").expect("free");
        let refused = second
            .take("contoso.onmicrosoft.com")
            .expect_err("held by the first");
        assert!(matches!(refused, LeaseError::Held { .. }));
        assert!(
            refused.to_string().contains("contoso.onmicrosoft.com"),
            "{refused}"
        );
        // It names the holder, so the operator knows which run to wait for.
        assert!(
            refused
                .to_string()
                .contains(&format!("taken by process {} on ", std::process::id())),
            "{refused}"
        );
        // Another tenant is not affected.
        second.take("fabrikam.onmicrosoft.com").expect("free");
        first.release();
        second.take("contoso.onmicrosoft.com").expect("released");
        std::fs::remove_dir_all(&dir).ok();
    }
}
