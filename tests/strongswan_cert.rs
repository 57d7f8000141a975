//! Certificate authentication against strongSwan (issue 7): charon routers with RSA and
//! ECDSA certificates made by `pki` through an intermediate CA connect to `headend run`
//! and get gateway IDs from their CNs; expired, not yet valid, unknown-CA, revoked (CRL
//! reloaded while running), identity-mismatch and SHA-1-signed certificates are refused
//! with AUTHENTICATION_FAILED; `headend peer` with a certificate connects to charon as
//! responder. Needs root, strongSwan and strongswan-pki; run through tests/run.sh.
mod support;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use support::charon::Charon;
use support::headend::{field, lines_with, Headend, HeadendConf};
use support::netns::{Direct, INSIDE_NET};
use support::{require_tool, run, TestCtx};

const POOL: &str = "10.99.0.0/24";
const HE_ID: &str = "headend.test";

/// Runs `pki` with `args`, writing stdout to `out`; must succeed.
fn pki(ctx: &TestCtx, out: &str, args: &[&str]) -> PathBuf {
    let bin = require_tool("pki", "strongswan-pki");
    let bin = bin.display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    let o = run(&argv, Duration::from_secs(60));
    assert!(o.ok(), "pki {args:?} failed:\n{}", o.all());
    ctx.write(out, &o.stdout)
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// A key and its certificate, PEM files.
struct Cred {
    key: PathBuf,
    cert: PathBuf,
}

/// Root CA (RSA) -> intermediate CA (ECDSA P-256, pathlen 0) -> routers; the head-end's
/// own certificate (RSA) straight from the root.
struct Pki {
    root: Cred,
    inter: Cred,
    he: Cred,
}

const DN: &str = "C=CH, O=headend interop";

fn key(ctx: &TestCtx, name: &str, kind: &str) -> PathBuf {
    let args: &[&str] = match kind {
        "rsa" => &[
            "--gen",
            "--type",
            "rsa",
            "--size",
            "2048",
            "--outform",
            "pem",
        ],
        _ => &[
            "--gen",
            "--type",
            "ecdsa",
            "--size",
            "256",
            "--outform",
            "pem",
        ],
    };
    pki(ctx, &format!("{name}.key"), args)
}

fn make_pki(ctx: &TestCtx) -> Pki {
    let rk = key(ctx, "root", "rsa");
    let rdn = format!("{DN}, CN=Interop Root CA");
    let rc = pki(
        ctx,
        "root.pem",
        &[
            "--self",
            "--ca",
            "--lifetime",
            "3650",
            "--in",
            &path(&rk),
            "--dn",
            &rdn,
            "--outform",
            "pem",
        ],
    );
    let ik = key(ctx, "inter", "ecdsa");
    let idn = format!("{DN}, CN=Interop Intermediate CA");
    let ic = pki(
        ctx,
        "inter.pem",
        &[
            "--issue",
            "--cacert",
            &path(&rc),
            "--cakey",
            &path(&rk),
            "--type",
            "priv",
            "--in",
            &path(&ik),
            "--dn",
            &idn,
            "--ca",
            "--pathlen",
            "0",
            "--lifetime",
            "1825",
            "--outform",
            "pem",
        ],
    );
    let hk = key(ctx, "he", "rsa");
    let hdn = format!("{DN}, CN={HE_ID}");
    let hc = pki(
        ctx,
        "he.pem",
        &[
            "--issue",
            "--cacert",
            &path(&rc),
            "--cakey",
            &path(&rk),
            "--type",
            "priv",
            "--in",
            &path(&hk),
            "--dn",
            &hdn,
            "--san",
            HE_ID,
            "--lifetime",
            "365",
            "--outform",
            "pem",
        ],
    );
    Pki {
        root: Cred { key: rk, cert: rc },
        inter: Cred { key: ik, cert: ic },
        he: Cred { key: hk, cert: hc },
    }
}

/// A router certificate `CN=<cn>`, SAN `<cn>.example`, issued by `ca` with extra `pki`
/// arguments (validity, digest).
fn router(ctx: &TestCtx, ca: &Cred, cn: &str, kind: &str, extra: &[&str]) -> Cred {
    let k = key(ctx, cn, kind);
    let dn = format!("{DN}, CN={cn}");
    let san = format!("{cn}.example");
    let mut args = vec![
        "--issue",
        "--cacert",
        ca.cert.to_str().unwrap_or(""),
        "--cakey",
        ca.key.to_str().unwrap_or(""),
        "--type",
        "priv",
        "--in",
        k.to_str().unwrap_or(""),
        "--dn",
        &dn,
        "--san",
        &san,
        "--outform",
        "pem",
    ];
    args.extend_from_slice(extra);
    let c = pki(ctx, &format!("{cn}.pem"), &args);
    Cred { key: k, cert: c }
}

/// A CRL of `ca` revoking `certs` (none: an empty CRL).
fn crl(ctx: &TestCtx, file: &str, ca: &Cred, certs: &[&Cred]) -> PathBuf {
    let mut args = vec![
        "--signcrl".to_string(),
        "--cacert".into(),
        path(&ca.cert),
        "--cakey".into(),
        path(&ca.key),
        "--lifetime".into(),
        "30".into(),
        "--outform".into(),
        "pem".into(),
    ];
    for c in certs {
        args.push("--cert".into());
        args.push(path(&c.cert));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    pki(ctx, file, &a)
}

/// One charon connection authenticating with a certificate.
struct CertConn {
    name: String,
    local: String,
    remote: Option<String>,
    local_id: String,
    remote_id: Option<String>,
    cred: Cred,
    /// CA certificate(s) the remote side must chain to.
    cacert: PathBuf,
    /// Intermediate to load (charon sends it along with its own certificate).
    inter: Option<PathBuf>,
    responder_pool: bool,
    send_cert_always: bool,
}

fn swanctl(conns: &[CertConn]) -> String {
    let mut s = String::from("connections {\n");
    for c in conns {
        let _ = writeln!(s, "  {} {{\n    version = 2", c.name);
        let _ = writeln!(s, "    local_addrs = {}", c.local);
        if let Some(r) = &c.remote {
            let _ = writeln!(s, "    remote_addrs = {r}");
            s.push_str("    vips = 0.0.0.0\n");
        }
        if c.responder_pool {
            s.push_str("    pools = p4\n");
        }
        s.push_str("    proposals = aes256gcm16-prfsha256-x25519\n");
        if c.send_cert_always {
            s.push_str("    send_cert = always\n");
        }
        let _ = writeln!(
            s,
            "    local {{\n      auth = pubkey\n      certs = {}\n      id = {}\n    }}",
            c.cred.cert.display(),
            c.local_id
        );
        s.push_str("    remote {\n      auth = pubkey\n");
        let _ = writeln!(s, "      cacerts = {}", c.cacert.display());
        if let Some(r) = &c.remote_id {
            let _ = writeln!(s, "      id = {r}");
        }
        s.push_str("    }\n");
        let _ = writeln!(s, "    children {{\n      {} {{", c.name);
        s.push_str("        esp_proposals = aes256gcm16\n");
        if c.remote.is_some() {
            let _ = writeln!(s, "        remote_ts = {INSIDE_NET}");
        } else {
            let _ = writeln!(s, "        local_ts = {INSIDE_NET}");
        }
        s.push_str("      }\n    }\n  }\n");
    }
    s.push_str("}\nauthorities {\n");
    for (i, c) in conns.iter().enumerate() {
        if let Some(p) = &c.inter {
            let _ = writeln!(s, "  im{i} {{\n    cacert = {}\n  }}", p.display());
        }
    }
    let _ = writeln!(s, "}}\npools {{\n  p4 {{\n    addrs = {POOL}\n  }}\n}}");
    s
}

fn load(ctx: &TestCtx, charon: &Charon, conns: &[CertConn]) {
    // swanctl loads private keys from the `private/` folder beside the file it is given.
    let dir = ctx.path(&format!("{}-swanctl", charon.name));
    let private = dir.join("private");
    std::fs::create_dir_all(&private).expect("swanctl dir");
    for (i, c) in conns.iter().enumerate() {
        std::fs::copy(&c.cred.key, private.join(format!("{i}.pem"))).expect("copy key");
    }
    let p = dir.join("swanctl.conf");
    std::fs::write(&p, swanctl(conns)).expect("write swanctl.conf");
    let o = charon.swanctl(&["--load-all", "--noprompt", "--file", &path(&p)]);
    assert!(
        o.ok() && !o.stdout.contains("failed"),
        "swanctl --load-all failed:\n{}",
        o.all()
    );
}

fn auth_toml(cert: &Cred, cas: &[&PathBuf], crls: &[&PathBuf]) -> String {
    let list = |v: &[&PathBuf]| {
        v.iter()
            .map(|p| format!("\"{}\"", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n[auth]\ncert = \"{}\"\nkey = \"{}\"\ncas = [{}]\ncrls = [{}]\n",
        cert.cert.display(),
        cert.key.display(),
        list(cas),
        list(crls)
    )
}

/// `headend run` with certificates in `net.he`; PSKs are configured too but unused.
fn headend(ctx: &TestCtx, net: &Direct, pki: &Pki, crls: &[&PathBuf], pool: &str) -> Headend {
    let mut hc = HeadendConf::responder(&net.he_addr.to_string(), "unused-psk", pool);
    hc.local_id = HE_ID.into();
    hc.extra = auth_toml(&pki.he, &[&pki.root.cert], crls);
    Headend::run(ctx, Some(&net.he), "headend", &hc)
}

fn router_conn(net: &Direct, pki: &Pki, name: &str, cred: Cred) -> CertConn {
    CertConn {
        name: name.into(),
        local: net.peer_addr.to_string(),
        remote: Some(net.he_addr.to_string()),
        local_id: format!("{name}.example"),
        remote_id: Some(HE_ID.into()),
        cred,
        cacert: pki.root.cert.clone(),
        inter: Some(pki.inter.cert.clone()),
        responder_pool: false,
        send_cert_always: false,
    }
}

#[test]
fn rsa_and_ecdsa_routers_through_an_intermediate_get_gateway_ids_from_their_cn() {
    let ctx = TestCtx::new("cert_up");
    let net = Direct::new(&ctx);
    let pki = make_pki(&ctx);
    let empty = crl(&ctx, "inter.crl", &pki.inter, &[]);
    let he = headend(&ctx, &net, &pki, &[&empty], POOL);
    let charon = Charon::start(&ctx, &net.peer, "peer");
    let rsa = router(&ctx, &pki.inter, "router-rsa", "rsa", &[]);
    let ec = router(&ctx, &pki.inter, "router-ec", "ecdsa", &[]);
    load(
        &ctx,
        &charon,
        &[
            router_conn(&net, &pki, "router-rsa", rsa),
            router_conn(&net, &pki, "router-ec", ec),
        ],
    );
    for name in ["router-rsa", "router-ec"] {
        charon.initiate_ok(name);
        let sa = charon.wait_established(name, Duration::from_secs(10));
        assert_eq!(
            sa.remote_id, HE_ID,
            "charon verified our certificate: {sa:?}"
        );
        assert_eq!(sa.local_vips.len(), 1, "{sa:?}");
        // The gateway ID is the CN ("router-rsa"), not the sanitized FQDN identity
        // ("router-rsa-example").
        let line = support::headend::wait_up(&he, name, Duration::from_secs(5));
        assert_eq!(
            field(&line, "vip"),
            Some(format!("[{}]", sa.local_vips[0]).as_str()),
            "{line}"
        );
    }
    // charon saw our CERTREQ and answered with its certificate and the intermediate.
    let log = charon.log_text();
    assert!(log.contains("received cert request"), "charon log:\n{log}");
    assert!(
        log.contains("sending end entity cert"),
        "charon log:\n{log}"
    );
}

/// Initiates `name`, expects AUTHENTICATION_FAILED at charon and a head-end log line
/// naming `reason`; nothing may be reported up.
fn refused(charon: &Charon, he: &Headend, name: &str, reason: &str) {
    let ups_before = lines_with(&he.log_text(), "IKE SA established", name).len();
    let o = charon.initiate(name);
    assert!(!o.ok(), "{name} must not establish:\n{}", o.all());
    assert!(
        o.all().contains("AUTHENTICATION_FAILED"),
        "{name}: swanctl output:\n{}",
        o.all()
    );
    let log = support::wait_for(
        &format!("head-end logs the refusal of {name}"),
        Duration::from_secs(5),
        || {
            let log = he.log_text();
            log.lines()
                .any(|l| l.contains("IKE negotiation failed") && l.contains(reason))
                .then_some(log)
        },
    );
    assert_eq!(
        lines_with(&log, "IKE SA established", name).len(),
        ups_before,
        "head-end reported {name} up:\n{log}"
    );
}

#[test]
fn bad_certificates_are_refused_with_the_reason_and_leave_nothing() {
    let ctx = TestCtx::new("cert_bad");
    let net = Direct::new(&ctx);
    let pki = make_pki(&ctx);
    let crl_path = crl(&ctx, "inter.crl", &pki.inter, &[]);
    // One-address pool: anything a refused peer left behind would block the good one.
    let mut he = headend(&ctx, &net, &pki, &[&crl_path], "10.99.0.7/32");
    let charon = Charon::start(&ctx, &net.peer, "peer");

    let expired = router(
        &ctx,
        &pki.inter,
        "expired",
        "ecdsa",
        &[
            "--not-before",
            "2020-01-01T00:00:00",
            "--not-after",
            "2021-01-01T00:00:00",
            "--dateform",
            "%Y-%m-%dT%H:%M:%S",
        ],
    );
    let future = router(
        &ctx,
        &pki.inter,
        "future",
        "ecdsa",
        &[
            "--not-before",
            "2090-01-01T00:00:00",
            "--not-after",
            "2091-01-01T00:00:00",
            "--dateform",
            "%Y-%m-%dT%H:%M:%S",
        ],
    );
    let sha1 = router(&ctx, &pki.inter, "sha1", "rsa", &["--digest", "sha1"]);
    let revoked = router(&ctx, &pki.inter, "revoked", "ecdsa", &[]);
    // Another PKI altogether.
    let other_key = key(&ctx, "other-root", "ecdsa");
    let other_root = Cred {
        cert: pki_self(&ctx, &other_key),
        key: other_key,
    };
    let stranger = router(&ctx, &other_root, "stranger", "ecdsa", &[]);
    let good = router(&ctx, &pki.inter, "good", "ecdsa", &[]);
    let revoked_cert = Cred {
        key: PathBuf::new(),
        cert: revoked.cert.clone(),
    };

    let mut conns = vec![
        router_conn(&net, &pki, "expired", expired),
        router_conn(&net, &pki, "future", future),
        router_conn(&net, &pki, "sha1", sha1),
        router_conn(&net, &pki, "revoked", revoked),
        router_conn(&net, &pki, "stranger", stranger),
        router_conn(&net, &pki, "good", good),
    ];
    // Our CERTREQ names a CA the stranger does not have: make charon send its
    // certificate anyway, so the head-end has a chain to refuse.
    conns[4].send_cert_always = true;
    conns[4].inter = None;
    load(&ctx, &charon, &conns);
    // The revoked router connects while the CRL is empty.
    charon.initiate_ok("revoked");
    support::headend::wait_up(&he, "revoked", Duration::from_secs(5));
    let _ = charon.terminate_ike("revoked");
    support::wait_for("revoked router's SA gone", Duration::from_secs(10), || {
        charon
            .list_sas()
            .iter()
            .all(|s| s.name != "revoked")
            .then_some(())
    });

    refused(&charon, &he, "expired", "certificate expired");
    refused(&charon, &he, "future", "certificate not yet valid");
    refused(&charon, &he, "sha1", "unsupported algorithm");
    refused(&charon, &he, "stranger", "not issued by a trusted CA");

    // Revoke while running: the head-end picks up the new CRL file by itself.
    let new_crl = crl(&ctx, "inter-2.crl", &pki.inter, &[&revoked_cert]);
    std::fs::copy(&new_crl, &crl_path).expect("replace CRL");
    support::wait_for("head-end reloads CRLs", Duration::from_secs(15), || {
        he.log_text().contains("CRLs reloaded").then_some(())
    });
    refused(&charon, &he, "revoked", "certificate revoked");

    // An identity that is not in the certificate cannot be produced with charon (it
    // refuses to use a certificate for an ID it does not contain): the engine tests
    // (ike cert::tests::engine) cover that refusal.

    // Nothing was left behind: the good router gets the pool's only address.
    charon.initiate_ok("good");
    let sa = charon.wait_established("good", Duration::from_secs(10));
    assert_eq!(sa.local_vips, vec!["10.99.0.7".to_string()]);
    support::headend::wait_up(&he, "good", Duration::from_secs(5));
    he.assert_running();
}

fn pki_self(ctx: &TestCtx, key: &std::path::Path) -> PathBuf {
    let dn = format!("{DN}, CN=Stranger Root CA");
    pki(
        ctx,
        "other-root.pem",
        &[
            "--self",
            "--ca",
            "--lifetime",
            "3650",
            "--in",
            &path(key),
            "--dn",
            &dn,
            "--outform",
            "pem",
        ],
    )
}

#[test]
fn headend_peer_with_a_certificate_connects_to_charon_as_responder() {
    let ctx = TestCtx::new("cert_peer");
    let net = Direct::new(&ctx);
    let pki = make_pki(&ctx);
    // charon is the gateway here, with the head-end's certificate; `headend peer` is the
    // router with an ECDSA certificate through the intermediate.
    let charon = Charon::start(&ctx, &net.he, "gw");
    let gw = Cred {
        key: pki.he.key.clone(),
        cert: pki.he.cert.clone(),
    };
    load(
        &ctx,
        &charon,
        &[CertConn {
            name: "rw".into(),
            local: net.he_addr.to_string(),
            remote: None,
            local_id: HE_ID.into(),
            remote_id: None,
            cred: gw,
            cacert: pki.root.cert.clone(),
            inter: Some(pki.inter.cert.clone()),
            responder_pool: true,
            send_cert_always: false,
        }],
    );
    let r = router(&ctx, &pki.inter, "router-9", "ecdsa", &[]);
    // ring reads PKCS#8, not the SEC1 "EC PRIVATE KEY" that pki writes: convert.
    let pk8 = ctx.path("router-9.pk8");
    let o = run(
        &[
            "openssl",
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &path(&r.key),
            "-out",
            &path(&pk8),
        ],
        Duration::from_secs(20),
    );
    assert!(o.ok(), "openssl pkcs8: {}", o.all());
    // The router sends its intermediate with its certificate: one file, both blocks.
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(&r.cert).unwrap_or_default(),
        std::fs::read_to_string(&pki.inter.cert).unwrap_or_default()
    );
    let chain_path = ctx.write("router-9-chain.pem", &chain);
    let mut c = HeadendConf::peer(
        "router-9.example",
        "unused-psk",
        &[(format!("{}:500", net.he_addr), 4500)],
    );
    if let Some(p) = c.peer.as_mut() {
        p.remote_id = Some(HE_ID.into());
        p.remote_ts = vec![INSIDE_NET.into()];
    }
    c.extra = auth_toml(
        &Cred {
            key: pk8,
            cert: chain_path,
        },
        &[&pki.root.cert],
        &[],
    );
    let peer = Headend::peer(&ctx, Some(&net.peer), "router", &c, &[]);
    let sa = support::wait_for(
        "charon holds the router's SA",
        Duration::from_secs(20),
        || {
            charon.list_sas().into_iter().find(|s| {
                s.state == "ESTABLISHED" && s.children.iter().any(|c| c.state == "INSTALLED")
            })
        },
    );
    assert_eq!(sa.remote_id, "router-9.example", "{sa:?}");
    assert_eq!(sa.remote_vips.len(), 1, "{sa:?}");
    // `headend peer` verified charon's certificate and names the tunnel after its CN.
    let line = support::wait_for(
        "headend peer logs tunnel up",
        Duration::from_secs(5),
        || {
            let log = peer.log_text();
            log.lines()
                .find(|l| l.contains("tunnel up"))
                .map(str::to_string)
        },
    );
    assert_eq!(field(&line, "headend_id"), Some(HE_ID), "{line}");
}
