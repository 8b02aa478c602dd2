//! The central contacts' photos phase 2 sends to managed copies (issue 14, mirrored persons), each read at most
//! once per worker per run, and only when some copy needs it: a re-run where no photo changed reads none.
//! Bounded and emptied like the central folder ([`RunCache`]: one entry per tenant, dropped when idle), so a
//! worker between runs holds no photo.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::run_cache::RunCache;

/// A photo's bytes as read, `None` when the contact has none.
pub type Bytes = Option<Arc<Vec<u8>>>;

/// One tenant's photos of one run, by central contact id.
#[derive(Default)]
pub struct RunPhotos(Mutex<HashMap<String, Arc<OnceCell<Bytes>>>>);

/// A per-process cache of central photos: at most one run's entry per tenant.
#[derive(Default)]
pub struct CentralPhotos(RunCache<RunPhotos>);

impl CentralPhotos {
    /// The photo of central contact `contact_id` of `tenant`'s folder `folder` in `run`, read with `read` by the
    /// first caller (concurrent callers wait for it). A failed read is not kept: the next caller reads again.
    pub async fn get_or_read<F, Fut, E>(
        &self,
        tenant: &str,
        run: Uuid,
        folder: Option<&str>,
        contact_id: &str,
        read: F,
    ) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Vec<u8>>, E>>,
    {
        let photos = self
            .0
            .get_or_load(tenant, run, folder, || async {
                Ok::<_, E>(RunPhotos::default())
            })
            .await?;
        let cell = {
            let mut map = photos.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(contact_id.to_owned()).or_default().clone()
        };
        cell.get_or_try_init(|| async { read().await.map(|b| b.map(Arc::new)) })
            .await
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every copy of a run asks; the photo is read once, a failure is not kept, another run reads again.
    #[tokio::test]
    async fn a_photo_is_read_once_per_run_and_a_failure_is_not_kept() {
        let cache = CentralPhotos::default();
        let reads = AtomicUsize::new(0);
        let run = Uuid::now_v7();
        let failed = cache
            .get_or_read("t", run, Some("f"), "c1", || async {
                Err::<Option<Vec<u8>>, _>("down")
            })
            .await;
        assert_eq!(failed, Err("down"));
        for _ in 0..3 {
            let got = cache
                .get_or_read("t", run, Some("f"), "c1", || async {
                    reads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, &str>(Some(vec![1, 2]))
                })
                .await;
            assert_eq!(got, Ok(Some(Arc::new(vec![1, 2]))));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        let next = cache
            .get_or_read("t", Uuid::now_v7(), Some("f"), "c1", || async {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, &str>(None)
            })
            .await;
        assert_eq!(next, Ok(None));
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }
}
