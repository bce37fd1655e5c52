//! Reading traces and movies from files (the only file I/O of the crate).

use std::path::{Path, PathBuf};

use vod::trace::{Movie, NetworkTrace, TraceError};

/// A trace or movie file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // Causes are part of the message (not `source`), so `{:#}` does not repeat them.
    #[error("reading {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: TraceError },
    #[error("{path}: no *.json traces in this directory")]
    NoTraces { path: PathBuf },
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|error| LoadError::Io { path: path.to_owned(), error })
}

/// Load and validate one network trace.
pub fn load_trace(path: &Path) -> Result<NetworkTrace, LoadError> {
    NetworkTrace::from_json(&read(path)?).map_err(|error| LoadError::Invalid { path: path.to_owned(), error })
}

/// Load and validate a movie description.
pub fn load_movie(path: &Path) -> Result<Movie, LoadError> {
    Movie::from_json(&read(path)?).map_err(|error| LoadError::Invalid { path: path.to_owned(), error })
}

/// A trace file, or every `*.json` in a directory sorted by file name; each named by its file name.
pub fn load_traces(path: &Path) -> Result<Vec<(String, NetworkTrace)>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|error| LoadError::Io { path: path.to_owned(), error })?;
    let files = if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|error| LoadError::Io { path: path.to_owned(), error })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| LoadError::Io { path: path.to_owned(), error })?;
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "json") && p.is_file() {
                files.push(p);
            }
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        if files.is_empty() {
            return Err(LoadError::NoTraces { path: path.to_owned() });
        }
        files
    } else {
        vec![path.to_owned()]
    };
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());
            load_trace(&p).map(|t| (name, t))
        })
        .collect()
}
