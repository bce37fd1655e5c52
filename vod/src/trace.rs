//! Network traces and movie descriptions for ABR simulation (formats in `shared/traces/README.md`).
