//! HLS and DASH manifest text from a catalog.
