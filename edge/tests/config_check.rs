//! `edge config check FILE` and `edge serve --config FILE` name the offending
//! key and its line; a good file prints `ok: FILE`.

use std::process::Command;

fn edge(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge")).args(args).env("RUST_BACKTRACE", "0").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "# edge at isp-a\nlisten = \"127.0.0.1:0\"\nupstream = \"http://origin.internal:8080\"\n\
                    ram_bytes = 100000000\n\n[[token_keys]]\nid = \"k2\"\nsecret = \"s\"\n";

#[test]
fn a_good_file_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, GOOD).unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = edge(&["config", "check", f]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("ok: {f}"));
}

#[test]
fn problems_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    let text = GOOD
        .replace("ram_bytes = 100000000\n", "ram_bytes = 100000000\nmax_conections = 5\nupstream_timeout_ms = 0\n")
        + "[[token_keys]]\nid = \"k2\"\nsecret = \"t\"\n";
    std::fs::write(&file, &text).unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = edge(&["config", "check", f]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("{f}:5: key `max_conections`: unknown key (did you mean `max_connections`?)"),
        "{out}"
    );
    assert!(lines[1].starts_with(&format!("{f}:6: key `upstream_timeout_ms`: ")), "{out}");
    assert_eq!(lines.len(), 2, "{out}");
    // `serve` refuses the same file with the same words, before binding anything.
    let (code, _, err) = edge(&["serve", "--config", f]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("{f}:5: key `max_conections`")), "{err}");
    // Fixed, the duplicate key id is the next problem, at its second occurrence.
    std::fs::write(&file, text.replace("max_conections = 5\n", "").replace("upstream_timeout_ms = 0\n", "")).unwrap();
    let (code, out, _) = edge(&["config", "check", f]);
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!("{f}:10: key `token_keys[1].id`: token key id \"k2\" is listed twice")), "{out}");
}

#[test]
fn syntax_errors_and_unreadable_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "upstream = \"http://o:1\"\nram_bytes = = 5\n").unwrap();
    let f = file.to_str().unwrap();
    let (code, out, _) = edge(&["config", "check", f]);
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!("{f}:2: TOML syntax")), "{out}");
    let missing = dir.path().join("missing.toml");
    let (code, out, _) = edge(&["config", "check", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("cannot read"), "{out}");
}
