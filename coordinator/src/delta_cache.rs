//! Delta downloads at the coordinator: the difference between the previous and the current
//! global model, encoded once a round and shared by every site that holds the previous one.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flotilla_common::FlatParams;
use flotilla_common::compress::delta;
use tokio::sync::OnceCell;

/// The last encoded difference (a round asks for one pair, previous → current).
#[derive(Debug, Clone, Default)]
pub struct DeltaCache {
    last: Arc<Mutex<Option<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    base: String,
    target: String,
    /// `None` when the difference would not be smaller than the model itself.
    encoded: Arc<OnceCell<Option<Bytes>>>,
}

impl DeltaCache {
    /// The encoded difference from `base` to `target`, or `None` when sending it would not
    /// save bytes. The first site to ask encodes it on a blocking thread; the others wait
    /// for that and share the bytes.
    pub async fn get(&self, base_hash: &str, base: Arc<FlatParams>, target_hash: &str, target: Arc<FlatParams>) -> Option<Bytes> {
        let cell = {
            let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*last {
                Some(e) if e.base == base_hash && e.target == target_hash => e.encoded.clone(),
                _ => {
                    let encoded = Arc::new(OnceCell::new());
                    *last = Some(Entry { base: base_hash.to_owned(), target: target_hash.to_owned(), encoded: encoded.clone() });
                    encoded
                }
            }
        };
        cell.get_or_init(|| async move {
            let full = 4 * target.values().len();
            let encoded = tokio::task::spawn_blocking(move || delta::encode(base.values(), target.values())).await;
            match encoded {
                Ok(Ok(bytes)) if bytes.len() < full => Some(Bytes::from(bytes)),
                Ok(Ok(_)) => None,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not encode a delta download; sending full models");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the delta encoder stopped; sending full models");
                    None
                }
            }
        })
        .await
        .clone()
    }
}
