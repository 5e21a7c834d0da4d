//! The dashboard's JSON endpoints on the real binary's status listener: routes and
//! their guards, traffic after requests, the reload history with file:line:col, the
//! explain verdict against the CLI's, who may look (loopback, basic auth, off), and
//! that no credential value is ever in a response.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod dashboard_support;

use dashboard_support::{Gateway, cli, get, poll, request, verdict};
use serde_json::{Value, json};

const ALICE_KEY: &str = "alice-key-value-0001";
const BOB_PASSWORD: &str = "bob-password-value-0002";
const LUA_SECRET: &str = "lua-secret-value-0003";

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"_format_version: "3.0"
consumers:
  - username: alice
  - username: bob
keyauth_credentials:
  - consumer: alice
    key: $ALICE_KEY
basicauth_credentials:
  - consumer: bob
    username: bob
    password: $BOB_PASSWORD
services:
  - name: echo
    url: http://{upstream}
    routes:
      - name: open
        paths: [/open]
      - name: keyed
        paths: [/keyed]
        plugins:
          - name: key-auth
      - name: basic
        paths: [/basic]
        plugins:
          - name: basic-auth
      - name: lua
        paths: [/lua]
        plugins:
          - name: pre-function
            config:
              access:
                - "local secret = '$LUA_SECRET'"
  - name: mcp
    url: http://{upstream}/mcp
    routes:
      - name: mcp
        paths: [/mcp]
        plugins:
          - name: ip-restriction
            config:
              allow: [10.0.0.0/8]
  - name: blocked
    url: http://{upstream}
    routes:
      - name: closed
        paths: [/closed]
    plugins:
      - name: request-termination
        config:
          status_code: 403
          message: "Access is forbidden."
  - name: limited
    url: http://{upstream}
    routes:
      - name: limited
        paths: [/limited]
        plugins:
          - name: rate-limiting
            config:
              minute: 1
              policy: local
"#
    )
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ALICE_KEY", ALICE_KEY),
        ("BOB_PASSWORD", BOB_PASSWORD),
        ("LUA_SECRET", LUA_SECRET),
    ]
}

/// Every response the dashboard gave, to search for secrets at the end.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn keep(&mut self, r: dashboard_support::Resp) -> dashboard_support::Resp {
        self.0.push(format!("{:?}\n{}", r.headers, r.body));
        r
    }
    fn assert_no_secret(&self, secrets: &[&str]) {
        assert!(self.0.len() > 5);
        for text in &self.0 {
            for s in secrets {
                assert!(!text.contains(s), "secret {s:?} in a response:\n{text}");
            }
        }
    }
}

fn route<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {doc}"))
}

#[test]
fn json_endpoints_show_routes_traffic_reloads_and_explain_without_secrets() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(common::echo_upstream());
    let yaml = config(upstream);
    let gw = Gateway::start("gateway.yaml", &yaml, &env(), &[]);
    let file = gw.config.to_str().unwrap().to_string();
    let status = gw.status;
    let mut seen = Seen::default();

    // The page and its assets, compiled in, with a policy that loads nothing else.
    for (path, ctype) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let r = seen.keep(get(status, path));
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap().starts_with(ctype));
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    }
    // Nothing is loaded from elsewhere (air-gapped).
    for text in &seen.0 {
        for needle in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "@import",
            "url(http",
        ] {
            assert!(!text.contains(needle), "{needle} in {text}");
        }
    }

    // Routes: chain in execution order with file:line:col, guards, /mcp state.
    let routes = seen.keep(get(status, "/api/routes")).json();
    let names: Vec<&str> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["open", "keyed", "basic", "lua", "mcp", "closed", "limited"]
    );
    assert_eq!(routes["generation"], 1);
    let open = route(&routes, "open");
    assert_eq!(open["state"], "open");
    assert_eq!(open["deny_by_default"], false);
    assert_eq!(open["paths"], json!(["/open"]));
    assert_eq!(open["service"]["name"], "echo");
    let keyed = route(&routes, "keyed");
    assert_eq!(keyed["chain"][0]["name"], "key-auth");
    assert_eq!(keyed["chain"][0]["at"], format!("{file}:21:13"));
    assert_eq!(keyed["state"], "key-auth");
    let closed = route(&routes, "closed");
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["deny_by_default"], true);
    assert_eq!(closed["chain"][0]["config"]["status"], 403);
    let mcp = route(&routes, "mcp");
    assert_eq!(mcp["state"], "ip-restricted");
    assert_eq!(mcp["deny_by_default"], true);
    assert_eq!(
        routes["mcp"],
        json!([{"route": "mcp", "paths": ["/mcp"], "state": "ip-restricted"}])
    );
    // Lua as written: the reference, not its value.
    let lua = route(&routes, "lua");
    assert_eq!(
        lua["chain"][0]["config"]["access"],
        json!(["local secret = '$LUA_SECRET'"])
    );
    // Consumers by name, credentials by count.
    assert_eq!(
        routes["consumers"],
        json!([
            {"name": "alice", "key_auth_credentials": 1, "basic_auth_credentials": 0, "groups": []},
            {"name": "bob", "key_auth_credentials": 0, "basic_auth_credentials": 1, "groups": []},
        ])
    );

    // Traffic: counted by the gateway's metrics, sampled once a second.
    for _ in 0..20 {
        assert_eq!(get(gw.proxy, "/open").status, 200);
    }
    for _ in 0..5 {
        assert_eq!(get(gw.proxy, "/closed").status, 403);
    }
    assert_eq!(
        request(gw.proxy, "GET", "/keyed", &[("apikey", ALICE_KEY)], "").status,
        200
    );
    let traffic = poll("the traffic sample with 20 requests on 'open'", || {
        let t = seen.keep(get(status, "/api/traffic")).json();
        let open = t["routes"]
            .as_array()?
            .iter()
            .find(|r| r["route"] == "open")?
            .clone();
        let sum: f64 = open["classes"]["2xx"]
            .as_array()?
            .iter()
            .filter_map(Value::as_f64)
            .sum();
        (open["totals"]["2xx"] == 20 && sum > 0.0).then_some(t)
    });
    let closed = traffic["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "closed")
        .unwrap();
    assert_eq!(closed["totals"]["4xx"], 5);
    let echo = traffic["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "echo")
        .unwrap();
    assert_eq!(echo["since_start"]["count"], 21);
    assert!(echo["since_start"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(
        echo["since_start"]["p99_ms"].as_f64().unwrap()
            >= echo["since_start"]["p50_ms"].as_f64().unwrap()
    );

    // Explain: the CLI's verdict, on the running snapshot.
    for (method, url, headers, ip) in [
        ("GET", "http://localhost:8000/closed", vec![], "127.0.0.1"),
        ("GET", "http://localhost:8000/mcp/x", vec![], "127.0.0.1"),
        ("GET", "http://localhost:8000/mcp/x", vec![], "10.1.2.3"),
        (
            "GET",
            "http://localhost:8000/keyed",
            vec![format!("apikey: {ALICE_KEY}")],
            "127.0.0.1",
        ),
        ("POST", "http://localhost:8000/nowhere", vec![], "127.0.0.1"),
    ] {
        let body = json!({"method": method, "url": url, "headers": headers, "client_ip": ip});
        let r = seen.keep(request(
            status,
            "POST",
            "/api/explain",
            &[("content-type", "application/json")],
            &body.to_string(),
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        let doc = r.json();
        let mut args = vec!["explain", "--config", &file, "--client-ip", ip];
        for h in &headers {
            args.extend(["-H", h.as_str()]);
        }
        args.extend([method, url]);
        let (code, out) = cli(&args, &env());
        assert_eq!(code, 0, "{out}");
        assert_eq!(doc["verdict"], verdict(&out), "{url} from {ip}");
    }
    // Explaining spends no one's allowance: the first real request still passes.
    for _ in 0..3 {
        let r = request(
            status,
            "POST",
            "/api/explain",
            &[("content-type", "application/json")],
            r#"{"method":"GET","url":"http://localhost:8000/limited"}"#,
        );
        assert_eq!(r.status, 200);
        assert!(
            r.json()["verdict"]
                .as_str()
                .unwrap()
                .starts_with("proxied to service 'limited'"),
            "{}",
            r.body
        );
    }
    assert_eq!(get(gw.proxy, "/limited").status, 200);
    assert_eq!(get(gw.proxy, "/limited").status, 429);
    let bad = seen.keep(request(
        status,
        "POST",
        "/api/explain",
        &[("content-type", "application/json")],
        r#"{"method":"GET","url":"http://x/","client_ip":"not-an-ip"}"#,
    ));
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("not-an-ip"));
    let form = request(status, "POST", "/api/explain", &[], "method=GET");
    assert_eq!(form.status, 415, "a form post (no JSON type) is refused");

    // Reloads: the first load, then a rejected edit with every error's file:line:col,
    // then a good edit.
    let reloads = seen.keep(get(status, "/api/reloads")).json();
    assert_eq!(reloads["history"].as_array().unwrap().len(), 1);
    assert_eq!(reloads["history"][0]["outcome"], "loaded");
    assert_eq!(reloads["current"]["generation"], 1);
    std::fs::write(&gw.config, yaml.replace("paths: [/open]", "paths: [/open")).unwrap();
    let (_, check) = cli(&["check", "--config", &file], &env());
    let first_error = check.lines().next().unwrap().to_string();
    assert!(first_error.starts_with(&format!("{file}:")), "{check}");
    let failed = poll("the failed reload in the history", || {
        let r = seen.keep(get(status, "/api/reloads")).json();
        (r["history"][0]["outcome"] == "failed").then_some(r)
    });
    let h = &failed["history"][0];
    assert_eq!(h["ok"], false);
    assert_eq!(h["generation"], 1);
    assert_eq!(h["errors"][0], first_error);
    assert_eq!(failed["current"]["generation"], 1);
    // Reverting the bad edit: the serving config again, worth a line.
    std::fs::write(&gw.config, &yaml).unwrap();
    let reverted = poll("the revert in the history", || {
        let r = seen.keep(get(status, "/api/reloads")).json();
        (r["history"][0]["outcome"] == "unchanged").then_some(r)
    });
    assert_eq!(reverted["history"][0]["ok"], true);
    assert_eq!(reverted["last_error"], Value::Null);
    std::fs::write(&gw.config, yaml.replace("/open", "/opened")).unwrap();
    let reloaded = poll("the good reload in the history", || {
        let r = seen.keep(get(status, "/api/reloads")).json();
        (r["history"][0]["outcome"] == "reloaded").then_some(r)
    });
    assert_eq!(reloaded["history"][0]["generation"], 2);
    assert_eq!(
        reloaded["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["outcome"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["reloaded", "unchanged", "failed", "loaded"]
    );
    assert_eq!(
        reloaded["history"][0]["hash"],
        reloaded["current"]["hash"].clone()
    );
    let routes = seen.keep(get(status, "/api/routes")).json();
    assert_eq!(route(&routes, "open")["paths"], json!(["/opened"]));

    // Read-only: nothing but GET on the documents.
    assert_eq!(request(status, "POST", "/api/routes", &[], "").status, 405);
    assert_eq!(
        request(status, "DELETE", "/api/reloads", &[], "").status,
        405
    );
    // The status endpoints are unchanged.
    assert_eq!(get(status, "/health").status, 200);

    seen.assert_no_secret(&[ALICE_KEY, BOB_PASSWORD, LUA_SECRET]);
    // Nor did the last-line scrubber have anything to mask.
    assert!(!gw.log().contains("credential value"), "{}", gw.log());
}

#[test]
fn supabase_config_never_sends_a_credential() {
    let yaml = std::fs::read_to_string("tests/fixtures/supabase/kong.yml").unwrap();
    let env = dashboard_support::SUPABASE_ENV;
    let gw = Gateway::start("kong.yml", &yaml, env, &[]);
    let mut seen = Seen::default();
    for path in ["/", "/api/routes", "/api/reloads", "/api/traffic"] {
        let r = seen.keep(get(gw.status, path));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let routes = get(gw.status, "/api/routes").json();
    assert_eq!(routes["routes"].as_array().unwrap().len(), 21);
    assert_eq!(
        routes["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["DASHBOARD", "anon", "service_role"]
    );
    // Explain with each key: the verdict names the consumer, never the key.
    for (name, value) in env.iter().take(4) {
        let body = json!({
            "method": "GET",
            "url": "http://localhost:8000/rest/v1/items",
            "headers": [format!("apikey: {value}")],
        });
        let r = seen.keep(request(
            gw.status,
            "POST",
            "/api/explain",
            &[("content-type", "application/json")],
            &body.to_string(),
        ));
        assert_eq!(r.status, 200, "{name}: {}", r.body);
    }
    let mut secrets: Vec<&str> = env
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("LUA_") && *k != "WELL_KNOWN_OAUTH_PATH" && *k != "DASHBOARD_USERNAME"
        })
        .map(|(_, v)| *v)
        .collect();
    // The values inside LUA_AUTH_EXPR (request-transformer templates).
    secrets.push("jwt_service_value_4714");
    seen.assert_no_secret(&secrets);
    assert!(!gw.log().contains("credential value"), "{}", gw.log());
}

#[test]
fn basic_auth_required_when_configured_and_off_elsewhere_without_it() {
    let yaml = "_format_version: \"3.0\"\nservices: []\n";
    let password = "dash-password-value-0004";
    let gw = Gateway::start(
        "gateway.yaml",
        yaml,
        &[("PORTCULLIS_DASHBOARD_PASSWORD", password)],
        &["--dashboard-user", "ops"],
    );
    let anon = get(gw.status, "/api/routes");
    assert_eq!(anon.status, 401);
    assert!(
        anon.header("www-authenticate")
            .unwrap()
            .starts_with("Basic ")
    );
    let auth = |user: &str, pw: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let wrong = auth("ops", "nope");
    assert_eq!(
        request(
            gw.status,
            "GET",
            "/api/routes",
            &[("authorization", &wrong)],
            ""
        )
        .status,
        401
    );
    let right = auth("ops", password);
    let ok = request(gw.status, "GET", "/", &[("authorization", &right)], "");
    assert_eq!(ok.status, 200);
    assert!(!ok.body.contains(password));
    // Health checks and scrapers need no credentials.
    assert_eq!(get(gw.status, "/health").status, 200);
    assert_eq!(get(gw.status, "/metrics").status, 200);
    drop(gw);

    // A status listener on every address without credentials: no dashboard.
    let gw = Gateway::start("gateway.yaml", yaml, &[], &["--status-listen", "0.0.0.0:0"]);
    let off = get(gw.status, "/api/routes");
    assert_eq!(off.status, 404);
    assert!(off.body.contains("--dashboard-user"), "{}", off.body);
    assert_eq!(get(gw.status, "/").status, 404);
    assert_eq!(get(gw.status, "/health").status, 200);
    assert!(gw.log().contains("the dashboard is off"), "{}", gw.log());
    drop(gw);

    // Loopback without credentials: local clients only (no DNS rebinding), or off.
    let gw = Gateway::start("gateway.yaml", yaml, &[], &[]);
    assert_eq!(get(gw.status, "/api/routes").status, 200);
    let rebound = request(
        gw.status,
        "GET",
        "/api/routes",
        &[("host", "attacker.example:8100")],
        "",
    );
    assert_eq!(rebound.status, 403);
    drop(gw);
    let gw = Gateway::start("gateway.yaml", yaml, &[], &["--dashboard", "off"]);
    assert_eq!(get(gw.status, "/api/routes").status, 404);
    assert_eq!(get(gw.status, "/health").status, 200);
}
