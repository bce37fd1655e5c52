//! moto's S3-compatible server (PyPI `moto[server]`), started on a free
//! loopback port for one test and stopped by PID when dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::Client;

/// A running moto server.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto, or returns `None` (after saying why) when python3 or moto is missing.
    pub async fn start() -> Option<Moto> {
        let has_moto = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_moto {
            let why = "python3 with moto[server] is not installed (`cargo xtask test` pip-installs it)";
            assert!(std::env::var_os("VOD_TESTS_REQUIRE_TOOLS").is_none(), "{why}");
            eprintln!("SKIP: {why}");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto");
        let mut moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited with {status}");
            }
            assert!(tokio::time::Instant::now() < deadline, "moto did not listen on {addr} within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(moto)
    }

    /// The environment an `s3://` store (or a child process) needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_S3_FORCE_PATH_STYLE", "true".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// A client for this server, configured without touching the process environment.
    pub fn client(&self) -> Client {
        client_for(&self.endpoint)
    }

    /// A client with a fresh bucket named `bucket`.
    pub async fn bucket(&self, bucket: &str) -> Client {
        let client = self.client();
        client.create_bucket().bucket(bucket).send().await.expect("creating bucket");
        client
    }
}

/// A client for the moto server at `endpoint`.
pub fn client_for(endpoint: &str) -> Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
        .force_path_style(true)
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    Client::from_conf(conf)
}
