//! The origin: where published titles live. An `ObjectStore` holds the bytes
//! (a local directory by default); the HTTP server answers GET/HEAD with the
//! semantics edges and players rely on (Range, ETag, 304, immutability).

pub mod http_object;
pub mod server;
pub mod store;

pub use server::{run, OriginConfig};
pub use store::{LocalStore, ObjectMeta, ObjectStore, StoreError};
