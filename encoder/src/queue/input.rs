//! `s3://bucket/key` sources: identified at submission by ETag and size,
//! downloaded by a worker into the job's staging directory before its tasks
//! run (once per fleet: the file is written under a temporary name and
//! renamed, so a worker that dies mid-download leaves nothing half-written).

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

/// An object in S3 used as an encode input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Input {
    pub bucket: String,
    pub key: String,
}

impl S3Input {
    /// `Some` for `s3://bucket/key`; `None` for anything else (a local path).
    pub fn parse(input: &str) -> Result<Option<Self>, String> {
        let Some(rest) = input.strip_prefix("s3://") else { return Ok(None) };
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
                Ok(Some(Self { bucket: bucket.to_owned(), key: key.to_owned() }))
            }
            _ => Err(format!("input {input}: expected s3://bucket/key")),
        }
    }

    async fn client(&self) -> Result<origin::S3Store, String> {
        origin::S3Store::from_env(&self.bucket, "").await.map_err(|e| format!("S3 client: {e}"))
    }

    /// `s3:ETAG:SIZE`: what makes two submissions of this object the same.
    pub async fn identity(&self) -> Result<String, String> {
        let store = self.client().await?;
        let head = store
            .client()
            .head_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
            .map_err(|e| format!("input {self}: {}", chain(&e)))?;
        let etag = head.e_tag().unwrap_or_default().trim_matches('"').to_owned();
        Ok(format!("s3:{etag}:{}", head.content_length().unwrap_or(0)))
    }

    /// Downloads the object into `dir` (once; later calls reuse the file) and
    /// checks it is still the object that was submitted (`identity`).
    pub async fn fetch(&self, identity: &str, dir: &Path) -> Result<PathBuf, String> {
        let ext = Path::new(&self.key).extension().and_then(|e| e.to_str()).unwrap_or("bin");
        let dest = dir.join(format!("source.{ext}"));
        if dest.is_file() {
            return Ok(dest);
        }
        tokio::fs::create_dir_all(dir).await.map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let store = self.client().await?;
        let resp = store
            .client()
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
            .map_err(|e| format!("input {self}: {}", chain(&e)))?;
        let got =
            format!("s3:{}:{}", resp.e_tag().unwrap_or_default().trim_matches('"'), resp.content_length().unwrap_or(0));
        if got != identity {
            return Err(format!(
                "input {self} changed since it was submitted ({identity}, now {got}); submit it again"
            ));
        }
        let part = dir.join(format!("source.{}.part", std::process::id()));
        let mut file = tokio::fs::File::create(&part).await.map_err(|e| format!("creating {}: {e}", part.display()))?;
        let mut body = resp.body;
        let mut copied = async {
            while let Some(chunk) = body.try_next().await.map_err(|e| format!("downloading {self}: {}", chain(&e)))? {
                file.write_all(&chunk).await.map_err(|e| format!("writing {}: {e}", part.display()))?;
            }
            file.sync_all().await.map_err(|e| format!("writing {}: {e}", part.display()))
        }
        .await;
        if copied.is_ok() {
            copied = tokio::fs::rename(&part, &dest).await.map_err(|e| format!("renaming {}: {e}", part.display()));
        }
        if copied.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        copied.map(|()| dest)
    }
}

impl std::fmt::Display for S3Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// An error with its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::S3Input;

    #[test]
    fn s3_inputs_parse() {
        assert_eq!(
            S3Input::parse("s3://media/in/bbb.mp4").unwrap(),
            Some(S3Input { bucket: "media".into(), key: "in/bbb.mp4".into() })
        );
        assert_eq!(S3Input::parse("/srv/bbb.mp4").unwrap(), None);
        assert!(S3Input::parse("s3://media").is_err());
        assert!(S3Input::parse("s3://media/dir/").is_err());
        assert!(S3Input::parse("s3:///key").is_err());
    }
}
