//! The origin: where published titles live. An `ObjectStore` holds the bytes
//! (a local directory by default, or S3); the HTTP server answers GET/HEAD
//! with the semantics edges and players rely on (Range, ETag, 304,
//! immutability), streaming bodies so object size never becomes memory.

pub mod http_object;
pub mod server;
mod stall;
pub mod store;

pub use server::{run, serve, OriginConfig, ServeConfig, ServerLimits};
pub use store::location::StoreLocation;
pub use store::{
    BlockingStore, ByteStream, LocalStore, ObjectMeta, ObjectReader, ObjectStore, PublishTarget, S3Store, StoreError,
};
