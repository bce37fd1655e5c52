//! The encoder: turns a source file into a CMAF ABR ladder with HLS and DASH
//! manifests and publishes it to an object store, catalog last.

pub mod audio;
pub mod error;
pub mod fmp4;
pub mod mux;
pub mod package;
pub mod transcode;
pub mod video;
pub mod video_filter;

use std::path::Path;

use bytes::Bytes;
use origin::PublishTarget;
use vod::{Catalog, ObjectKey, TitleId};

pub use error::EncodeError;
pub use transcode::EncodeSettings;

/// Encodes `input` as `title` and publishes it to `store`: every segment,
/// init segment and manifest first, `catalog.json` last, so a reader that
/// sees the catalog sees a whole title. Nothing is written if the encode fails.
/// `store` is any publish target: a `LocalStore`, or a `BlockingStore` over S3.
pub fn encode_and_publish(
    input: &Path,
    title: &TitleId,
    store: &dyn PublishTarget,
    settings: &EncodeSettings,
) -> Result<Catalog, EncodeError> {
    let catalog_key = ObjectKey::Catalog(title.clone());
    if store.exists_blocking(&catalog_key)? {
        return Err(EncodeError::AlreadyPublished(title.to_string()));
    }
    let work = tempfile::Builder::new().prefix("encode-").tempdir()?;
    let files = transcode::encode(input, work.path(), settings)?;
    let pkg = package::package(title, &files, settings.segment_ms)?;
    for (key, body) in &pkg.objects {
        store.put_blocking(key, body)?;
    }
    let json = serde_json::to_vec_pretty(&pkg.catalog).map_err(|e| EncodeError::Io(e.into()))?;
    store.put_blocking(&catalog_key, &Bytes::from(json))?;
    Ok(pkg.catalog)
}
