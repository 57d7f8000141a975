//! The CLI surface: `check-config` names file, line and key and exits 2 on errors;
//! `gateway-id` prints the label a router will get.
#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_headend");

fn check(text: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("headend-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = dir.join(format!("c{n}.toml"));
    std::fs::write(&p, text).unwrap();
    let o = Command::new(BIN)
        .arg("check-config")
        .arg(&p)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&p);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).replace(p.to_str().unwrap(), "F"),
        String::from_utf8_lossy(&o.stderr).replace(p.to_str().unwrap(), "F"),
    )
}

#[test]
fn check_config_accepts_the_samples() {
    for f in ["examples/headend.toml", "examples/peer.toml"] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let o = Command::new(BIN)
            .arg("check-config")
            .arg(&p)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{f}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(out.lines().count(), 1, "one-line summary: {out}");
        assert!(out.contains(": ok: "), "{out}");
    }
}

#[test]
fn check_config_names_unknown_key_and_line() {
    let (code, out, err) = check("[ike]\nport = 500\n\n\n\n\n\n\n\n\n\nlifetim = \"1h\"\n");
    assert_eq!(code, 2);
    assert_eq!(err.trim(), "error: F:12: unknown key 'ike.lifetim'");
    assert!(out.is_empty());
}

#[test]
fn check_config_names_bad_cidr_and_line() {
    let (code, _, err) = check("[psk]\ndefault = \"x\"\n\n\n\n[pool]\nv4 = \"10.0.0/8\"\n");
    assert_eq!(code, 2);
    assert_eq!(err.trim(), "error: F:7: pool.v4: invalid CIDR \"10.0.0/8\"");
}

#[test]
fn check_config_rejects_a_responder_without_keys() {
    let (code, _, err) = check("[ike]\nport = 40000\n");
    assert_eq!(code, 2);
    assert!(err.contains("psk: no pre-shared key configured"), "{err}");
}

#[test]
fn check_config_summary_for_a_good_file() {
    let (code, out, _) = check(
        "[ike]\nlisten = [\"127.0.0.1\"]\nport = 40500\nnatt_port = 44500\n[psk]\ndefault = \"k\"\n[pool]\nv4 = \"10.9.0.0/16\"\n",
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("listen 127.0.0.1 ike/40500 natt/44500"),
        "{out}"
    );
    assert!(out.contains("pool 10.9.0.0/16"), "{out}");
}

#[test]
fn gateway_id_prints_the_sanitized_label() {
    let o = Command::new(BIN)
        .args(["gateway-id", "MG90/Site #12.north"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "MG90-Site-12-north"
    );
    let o = Command::new(BIN)
        .args(["gateway-id", "--", "--weird--"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "weird");
}

#[test]
fn check_config_takes_the_metrics_section_and_names_its_mistakes() {
    let good = "[ike]\nlisten = [\"127.0.0.1\"]\n[psk]\ndefault = \"k\"\n[metrics]\nlisten = \"127.0.0.1:9400\"\n";
    let (code, out, err) = check(good);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("metrics http://127.0.0.1:9400/metrics"),
        "{out}"
    );
    let (code, _, err) =
        check("[psk]\ndefault = \"k\"\n\n[metrics]\nlisten = \"localhost-9400\"\n");
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: F:5: metrics.listen: "),
        "file, line and key: {err}"
    );
    let (code, _, err) = check("[psk]\ndefault = \"k\"\n[metrics]\nport = 9400\n");
    assert_eq!(code, 2);
    assert_eq!(err.trim(), "error: F:4: unknown key 'metrics.port'");
}
