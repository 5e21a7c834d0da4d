//! deploy/: what can be checked without a Docker engine. The compose override parses
//! and has the keys Supabase's setup needs; the entrypoint computes what Supabase's
//! template expects and starts the gateway; `kong health` works through the shim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::GatewayProcess;
use portcullis::config::raw::{Node, Value, parse};
use std::path::PathBuf;
use std::process::Command;

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn get<'a>(n: &'a Node, key: &str) -> &'a Node {
    match &n.value {
        Value::Map(m) => {
            &m.iter()
                .find(|(k, _)| k.name == key)
                .unwrap_or_else(|| panic!("missing key '{key}'"))
                .1
        }
        other => panic!("'{key}': not a map but {}", other.kind()),
    }
}

fn strings(n: &Node) -> Vec<String> {
    match &n.value {
        Value::Seq(items) => items
            .iter()
            .map(|i| match &i.value {
                Value::Str(s) => s.clone(),
                other => panic!("not a string: {other:?}"),
            })
            .collect(),
        other => panic!("not a list: {other:?}"),
    }
}

#[test]
fn compose_override_has_what_supabase_needs() {
    let text = std::fs::read_to_string(repo("deploy/docker-compose.portcullis.yml")).unwrap();
    let root = parse(&text).expect("compose file parses");
    let gw = get(get(&root, "services"), "api-gw");
    let ports = strings(get(gw, "ports"));
    assert!(ports.iter().any(|p| p.ends_with(":8000/tcp")), "{ports:?}");
    assert!(ports.iter().any(|p| p.ends_with(":8443/tcp")), "{ports:?}");
    let aliases = strings(get(get(get(gw, "networks"), "default"), "aliases"));
    for a in ["kong", "api-gw"] {
        assert!(aliases.contains(&a.to_string()), "{aliases:?}");
    }
    assert_eq!(
        strings(get(get(gw, "healthcheck"), "test")),
        ["CMD", "portcullis", "health"]
    );
    let volumes = strings(get(gw, "volumes"));
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with("./volumes/api/kong.yml:/home/kong/temp.yml")),
        "the template is mounted where Supabase's entrypoint reads it: {volumes:?}"
    );
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with("./volumes/api:/home/kong/api:")),
        "the folder is mounted, so a new file renamed over kong.yml reaches the gateway: {volumes:?}"
    );
    assert!(matches!(&get(gw, "container_name").value, Value::Str(s) if s == "supabase-kong"));
    let env = get(gw, "environment");
    for key in [
        "SUPABASE_ANON_KEY",
        "SUPABASE_SERVICE_KEY",
        "DASHBOARD_USERNAME",
        "DASHBOARD_PASSWORD",
        "JWT_ISSUER",
        "KONG_DECLARATIVE_CONFIG",
    ] {
        get(env, key);
    }
    assert!(
        matches!(&get(env, "PORTCULLIS_CONFIG").value, Value::Str(s) if s == "/home/kong/api/kong.yml"),
        "the gateway reads kong.yml in the mounted folder"
    );
}

#[test]
fn dockerfile_is_multi_stage_small_non_root_with_a_shell() {
    let text = std::fs::read_to_string(repo("deploy/Dockerfile")).unwrap();
    assert!(
        text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")) >= 2,
        "multi-stage"
    );
    assert!(
        text.contains("FROM debian:bookworm-slim"),
        "final image keeps /bin/sh, awk, sed"
    );
    assert!(text.contains("USER kong"), "non-root");
    // tests/image/run.sh replaces the build stage: the runtime stage copies from it.
    assert!(text.contains("COPY --from=build /src/target/release/portcullis "));
    assert!(text.contains("COPY deploy/entrypoint.sh /entrypoint.sh"));
    assert!(text.contains("ENTRYPOINT [\"/entrypoint.sh\"]"));
    for p in ["deploy/entrypoint.sh", "deploy/kong"] {
        assert!(repo(p).exists(), "{p}");
    }
}

/// Runs the entrypoint with a command that prints what it exported.
fn entrypoint_env(vars: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new("sh");
    cmd.arg(repo("deploy/entrypoint.sh"))
        .args(["sh", "-c", "printf '%s\\n%s\\n%s\\n%s\\n' \"$LUA_AUTH_EXPR\" \"$LUA_RT_WS_EXPR\" \"$LUA_FUNCTIONS_EXPR\" \"$WELL_KNOWN_OAUTH_PATH\""])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn entrypoint_builds_supabase_values() {
    // Legacy keys only.
    let (ok, out, err) = entrypoint_env(&[("JWT_ISSUER", "http://localhost:8000/auth/v1/")]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' and headers.authorization) or headers.apikey)"
    );
    assert_eq!(lines[1], "$(query_params.apikey)");
    assert_eq!(lines[2], "$(nil)");
    assert_eq!(lines[3], "/.well-known/oauth-authorization-server/auth/v1");

    // Opaque keys: translation to the asymmetric JWTs.
    let (ok, out, _) = entrypoint_env(&[
        ("SUPABASE_SECRET_KEY", "sb_secret_1"),
        ("SUPABASE_PUBLISHABLE_KEY", "sb_publishable_2"),
        ("SERVICE_ROLE_KEY_ASYMMETRIC", "svc.jwt"),
        ("ANON_KEY_ASYMMETRIC", "anon.jwt"),
        ("JWT_ISSUER", "https://api.example.com"),
    ]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("(headers.apikey == 'sb_secret_1' and 'Bearer svc.jwt')"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("(headers.apikey == 'sb_publishable_2' and 'Bearer anon.jwt')"));
    assert!(lines[1].contains("(query_params.apikey == 'sb_publishable_2' and 'anon.jwt')"));
    assert!(lines[2].contains("(headers.authorization == 'Bearer sb_secret_1' and 'svc.jwt')"));
    assert!(lines[2].ends_with("or nil)"));
    assert_eq!(lines[3], "/.well-known/oauth-authorization-server");

    // Values exported by Supabase's own script are kept as they are.
    let (_, out, _) = entrypoint_env(&[
        ("LUA_AUTH_EXPR", "$(headers.x)"),
        ("WELL_KNOWN_OAUTH_PATH", "/custom"),
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "$(headers.x)");
    assert_eq!(lines[3], "/custom");

    // A bad issuer stops the start, as Supabase's script does.
    let (ok, _, err) = entrypoint_env(&[("JWT_ISSUER", "localhost:8000")]);
    assert!(!ok);
    assert!(
        err.contains("JWT_ISSUER must start with http:// or https://"),
        "{err}"
    );
}

#[test]
fn kong_health_through_the_entrypoint() {
    // Nothing listening: unhealthy.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new("sh")
        .arg(repo("deploy/entrypoint.sh"))
        .args(["kong", "health"])
        .env("PORTCULLIS_BIN", env!("CARGO_BIN_EXE_portcullis"))
        .env("PORTCULLIS_STATUS_LISTEN", free.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());

    // A running gateway: healthy.
    let gw = GatewayProcess::run()
        .args([
            "--listen",
            "off",
            "--status-listen",
            "127.0.0.1:0",
            "--tls-listen",
            "off",
        ])
        .ready_when(0, 0, true)
        .start();
    let addr = gw.status_addr().to_string();
    let out = Command::new("sh")
        .arg(repo("deploy/entrypoint.sh"))
        .args(["kong", "health"])
        .env("PORTCULLIS_BIN", env!("CARGO_BIN_EXE_portcullis"))
        .env("PORTCULLIS_STATUS_LISTEN", &addr)
        .output()
        .unwrap();
    drop(gw);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
