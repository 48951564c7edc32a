//! Three real `meshgate serve` processes on 127.0.0.1-3, configured as an operator would (YAML
//! with trusted and gossip peers, the CLI): tokens and clients cross nodes, revocations propagate,
//! a killed node restarts without losing anything, a removed node's tokens die everywhere, a node
//! that was never admitted gets nowhere, and a node that rotates its identity key stays a member.

use std::path::{Path, PathBuf};
use std::time::Duration;

use compat_tests::{ClientOptions, Meshgate, Registered, cli, client_add};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::support::{self, basic, form, introspect, jwks, kids, post_form};

/// Everything a mesh test waits for gets this long before it fails.
const CONVERGE: Duration = Duration::from_secs(60);

pub(super) struct Mesh {
    dir: tempfile::TempDir,
    /// The OAuth port of every node (on 127.0.0.N).
    port: u16,
    /// The sync port of every node.
    sync_port: u16,
    dids: Vec<String>,
}

/// A port that is free now on 127.0.0.1-5, for TCP and UDP (the nodes listen on it on 127.0.0.1-3,
/// OAuth over TCP and gossip over UDP). It is taken below the kernel's ephemeral range (32768+), so
/// no connection of a parallel test can be handed it as its source port before the node binds it.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Start from a per-process point so that parallel test processes do not walk the same ports.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 9_000) as u16;
    for _ in 0..20_000 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 12_000 + (seed.wrapping_add(step.wrapping_mul(7)) % 20_000);
        let free = (1..=5).all(|n| {
            let ip = std::net::Ipv4Addr::new(127, 0, 0, n);
            std::net::TcpListener::bind((ip, port)).is_ok() && std::net::UdpSocket::bind((ip, port)).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no port free on 127.0.0.1-5 between 12000 and 32000");
}

impl Mesh {
    /// Creates `n` identities and one config per node, each trusting all and gossiping to all.
    pub(super) fn new(n: usize) -> Self {
        let dir = support::temp_dir();
        let (port, sync_port) = (free_port(), free_port());
        let dids = (1..=n)
            .map(|i| {
                let data = dir.path().join(format!("node{i}"));
                let out = cli(&data, &["id", "--json"]);
                serde_json::from_str::<Value>(&out).unwrap()["did"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let mesh = Self {
            dir,
            port,
            sync_port,
            dids,
        };
        for i in 1..=n {
            mesh.write_config(i, &mesh.dids.clone());
        }
        mesh
    }

    /// Node `i`'s mesh sync address.
    pub(super) fn sync_addr(&self, i: usize) -> String {
        format!("127.0.0.{i}:{}", self.sync_port)
    }

    /// Node `i`'s DID.
    pub(super) fn did(&self, i: usize) -> &str {
        &self.dids[i - 1]
    }

    pub(super) fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    pub(super) fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}.yaml"))
    }

    fn write_config(&self, i: usize, trusted: &[String]) {
        let peers: Vec<String> = (1..=3).map(|j| format!("\"127.0.0.{j}:{}\"", self.sync_port)).collect();
        let trusted: Vec<String> = trusted.iter().map(|d| format!("\"{d}\"")).collect();
        let config = format!(
            "node:\n  sync:\n    listen: \"127.0.0.{i}:{sync}\"\n    gossip_peers: [{peers}]\n    trusted_peers: [{trusted}]\n\
             bridge:\n  listen: \"127.0.0.{i}:{http}\"\n  metrics_listen: \"127.0.0.{i}:0\"\n",
            sync = self.sync_port,
            http = self.port,
            peers = peers.join(", "),
            trusted = trusted.join(", "),
        );
        std::fs::write(self.config_path(i), config).unwrap();
    }

    /// Appends top-level YAML (e.g. `upstreams:` and `federation:`) to node `i`'s configuration.
    pub(super) fn append_config(&self, i: usize, yaml: &str) {
        let mut config = std::fs::read_to_string(self.config_path(i)).unwrap();
        config.push_str(yaml);
        std::fs::write(self.config_path(i), config).unwrap();
    }

    pub(super) fn start(&self, i: usize) -> Meshgate {
        Meshgate::spawn_with_config(&self.data(i), &self.config_path(i), &[])
    }

    /// [`Mesh::start`] with extra environment variables (e.g. `MESHGATE_BRIDGE__…` overrides).
    pub(super) fn start_with_env(&self, i: usize, env: &[(&str, &str)]) -> Meshgate {
        Meshgate::spawn_with_config(&self.data(i), &self.config_path(i), env)
    }
}

/// [`eventually`], and on timeout the panic carries the last log lines of `nodes`, so that a
/// stall seen once under load can be diagnosed from the test output alone.
async fn eventually_or_show<F, Fut>(what: &str, nodes: &[(&str, &Meshgate)], probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if poll(probe).await {
        return;
    }
    let mut logs = String::new();
    for (name, node) in nodes {
        let stderr = node.stderr();
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = &lines[lines.len().saturating_sub(80)..];
        logs.push_str(&format!(
            "\n--- node {name}: last {} log lines ---\n{}",
            tail.len(),
            tail.join("\n")
        ));
    }
    panic!("not within {CONVERGE:?}: {what}{logs}");
}

/// Polls `probe` every 200 ms until it returns true or [`CONVERGE`] passes.
pub(super) async fn eventually<F, Fut>(what: &str, probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if !poll(probe).await {
        panic!("not within {CONVERGE:?}: {what}");
    }
}

/// Polls `probe` every 200 ms; whether it returned true before [`CONVERGE`] passed.
async fn poll<F, Fut>(mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while tokio::time::Instant::now() < deadline {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn token_status(server: &Meshgate, client: &Registered) -> StatusCode {
    let body = form(&[("grant_type", "client_credentials")]);
    post_form(
        &server.url("/token"),
        Some(&basic(&client.client_id, &client.client_secret)),
        body,
    )
    .await
    .status
}

async fn active(server: &Meshgate, client: &Registered, token: &str) -> bool {
    introspect(server, client, token).await["active"] == true
}

fn add_client(data: &Path, name: &str) -> Registered {
    client_add(data, name, "read write", &ClientOptions::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_clients_keys_and_revocations() {
    let mesh = Mesh::new(3);
    let a = mesh.start(1);
    let b = mesh.start(2);
    let mut c = mesh.start(3);
    assert_eq!(a.issuer(), format!("http://127.0.0.1:{}", mesh.port));

    // A client added on A gets tokens on C.
    let client = add_client(&mesh.data(1), "mesh-client");
    eventually("the client added on A authenticates on C", || async {
        token_status(&c, &client).await == StatusCode::OK
    })
    .await;

    // A token minted on A introspects active on B, and B's JWKS holds A's key.
    let token = support::access_token(&a, &client, &[]).await;
    let header = support::Jwt::parse(&token).header;
    let kid = header["kid"].as_str().unwrap().to_owned();
    eventually("A's signing key is in B's JWKS", || async {
        kids(&jwks(&b).await).contains(&kid)
    })
    .await;
    eventually("A's token introspects active on B", || async {
        active(&b, &client, &token).await
    })
    .await;

    // A revocation at C is enforced at A.
    let answer = post_form(
        &c.url("/revoke"),
        Some(&basic(&client.client_id, &client.client_secret)),
        form(&[("token", &token)]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    eventually("the revocation at C reaches A", || async {
        !active(&a, &client, &token).await
    })
    .await;

    // mesh status on A lists both peers alive.
    eventually("A sees B and C alive", || async {
        let status: Value = serde_json::from_str(&cli(&mesh.data(1), &["mesh", "status", "--json"])).unwrap();
        let alive = status["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["state"] == "alive").count());
        alive == 2
    })
    .await;

    // C is killed; A and B keep issuing and validating; a client added meanwhile reaches C after restart.
    c.kill();
    let later = add_client(&mesh.data(2), "added-while-c-was-down");
    eventually("the new client works on A", || async {
        token_status(&a, &later).await == StatusCode::OK
    })
    .await;
    let fresh = support::access_token(&a, &client, &[]).await;
    assert!(
        active(&b, &client, &fresh).await || {
            tokio::time::sleep(Duration::from_secs(2)).await;
            active(&b, &client, &fresh).await
        }
    );
    let c = mesh.start(3);
    eventually("C catches up after its restart", || async {
        token_status(&c, &later).await == StatusCode::OK
    })
    .await;
    assert!(
        !active(&c, &client, &token).await,
        "C still knows the revocation it persisted"
    );

    // Removing C from A: C's keys leave every JWKS and C's tokens go inactive everywhere.
    let c_token = support::access_token(&c, &client, &[]).await;
    let c_kid = support::Jwt::parse(&c_token).header["kid"].as_str().unwrap().to_owned();
    eventually("C's token is active on B", || async {
        active(&b, &client, &c_token).await
    })
    .await;
    cli(&mesh.data(1), &["mesh", "remove", &mesh.dids[2], "--json"]);
    eventually("C's key left B's JWKS", || async {
        !kids(&jwks(&b).await).contains(&c_kid)
    })
    .await;
    eventually("C's token is inactive on A", || async {
        !active(&a, &client, &c_token).await
    })
    .await;
    // A removed node gets nothing more from the mesh.
    let after_removal = add_client(&mesh.data(1), "added-after-c-was-removed");
    eventually("B learns the new client", || async {
        token_status(&b, &after_removal).await == StatusCode::OK
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        token_status(&c, &after_removal).await,
        StatusCode::UNAUTHORIZED,
        "the removed node still syncs"
    );
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_never_admitted_gets_nowhere() {
    let mesh = Mesh::new(3);
    // Node 3 trusts everyone, but nodes 1 and 2 do not trust node 3.
    let trusted_by_1_and_2 = vec![mesh.dids[0].clone(), mesh.dids[1].clone()];
    mesh.write_config(1, &trusted_by_1_and_2);
    mesh.write_config(2, &trusted_by_1_and_2);
    let a = mesh.start(1);
    let b = mesh.start(2);
    let intruder = mesh.start(3);
    let client = add_client(&mesh.data(1), "member-client");
    eventually("the client reaches B", || async {
        token_status(&b, &client).await == StatusCode::OK
    })
    .await;
    let rogue = add_client(&mesh.data(3), "rogue-client");
    let rogue_token = support::access_token(&intruder, &rogue, &[]).await;
    let rogue_kid = support::Jwt::parse(&rogue_token).header["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Give the intruder ample time to try.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        token_status(&a, &rogue).await,
        StatusCode::UNAUTHORIZED,
        "the intruder's client reached A"
    );
    assert!(
        !kids(&jwks(&a).await).contains(&rogue_kid),
        "the intruder's key reached A's JWKS"
    );
    assert!(!active(&a, &client, &rogue_token).await);
    assert!(
        intruder.stderr().contains("refused") || a.stderr().contains("refused"),
        "a refusal is logged:\n{}",
        a.stderr()
    );
    assert!(!a.stderr().contains('\u{1b}'), "colour codes in logs written to a pipe");
}

fn signal(server: &Meshgate, name: &str) {
    let pid = server.pid().expect("running").to_string();
    let status = std::process::Command::new("kill").args([name, &pid]).status().unwrap();
    assert!(status.success(), "kill {name} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_catches_up_when_it_heals() {
    let mesh = Mesh::new(3);
    let a = mesh.start(1);
    let b = mesh.start(2);
    let c = mesh.start(3);
    let client = add_client(&mesh.data(1), "partition-client");
    eventually("the client reaches C", || async {
        token_status(&c, &client).await == StatusCode::OK
    })
    .await;
    let token = support::access_token(&c, &client, &[]).await;
    eventually("C's token is active on A", || async {
        active(&a, &client, &token).await
    })
    .await;

    // Cut C off: it is frozen, so it neither sends nor receives.
    signal(&c, "-STOP");
    let answer = post_form(
        &a.url("/revoke"),
        Some(&basic(&client.client_id, &client.client_secret)),
        form(&[("token", &token)]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let during = add_client(&mesh.data(2), "added-during-the-partition");
    eventually("B learns the revocation while C is cut off", || async {
        !active(&b, &client, &token).await
    })
    .await;

    // Heal: C learns both.
    signal(&c, "-CONT");
    eventually("C enforces the revocation made during the partition", || async {
        !active(&c, &client, &token).await
    })
    .await;
    eventually("C knows the client added during the partition", || async {
        token_status(&c, &during).await == StatusCode::OK
    })
    .await;
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shared_issuer_for_the_whole_mesh() {
    let mesh = Mesh::new(3);
    let issuer = format!("http://auth.mesh.test:{}", mesh.port);
    for i in 1..=3 {
        let path = mesh.config_path(i);
        let config = std::fs::read_to_string(&path).unwrap();
        let config = config.replace("bridge:\n", &format!("bridge:\n  issuer: \"{issuer}\"\n"));
        std::fs::write(&path, config).unwrap();
    }
    let nodes: Vec<Meshgate> = (1..=3).map(|i| mesh.start(i)).collect();
    let direct = |node: &Meshgate, path: &str| format!("http://{}{path}", node.info().listen);
    // A client that maps the issuer's host name to node 2, as local DNS or /etc/hosts would.
    let http = reqwest::Client::builder()
        .resolve("auth.mesh.test", nodes[1].info().listen.parse().unwrap())
        .build()
        .unwrap();
    let metadata: Value = http
        .get(format!("{issuer}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        metadata["issuer"],
        issuer.as_str(),
        "strict clients need the issuer to equal the URL"
    );
    assert_eq!(metadata["token_endpoint"], format!("{issuer}/token"));

    let client = add_client(&mesh.data(1), "shared-issuer-client");
    let authorization = basic(&client.client_id, &client.client_secret);
    let slot = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    eventually("the client gets a token through the shared name", || {
        let (http, authorization, issuer) = (http.clone(), authorization.clone(), issuer.clone());
        let slot = slot.clone();
        async move {
            let response = http
                .post(format!("{issuer}/token"))
                .header("Authorization", authorization)
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap();
            if response.status() != StatusCode::OK {
                return false;
            }
            let body: Value = response.json().await.unwrap();
            *slot.lock().unwrap() = body["access_token"].as_str().unwrap().to_owned();
            true
        }
    })
    .await;
    let token = slot.lock().unwrap().clone();
    let claims = support::Jwt::parse(&token).payload;
    assert_eq!(claims["iss"], issuer.as_str());
    // Every node accepts it at introspection, and every node's JWKS holds its key.
    let kid = support::Jwt::parse(&token).header["kid"].as_str().unwrap().to_owned();
    for node in &nodes {
        let url = direct(node, "/introspect");
        eventually("the token introspects active on every node", || {
            let (url, authorization, token) = (url.clone(), authorization.clone(), token.clone());
            async move {
                let answer = post_form(&url, Some(&authorization), form(&[("token", &token)])).await;
                answer.status == StatusCode::OK && answer.json()["active"] == true
            }
        })
        .await;
        let jwks: Value = support::get(&direct(node, "/jwks.json")).await.json();
        assert!(kids(&jwks).contains(&kid));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_through_mesh_admit() {
    let mesh = Mesh::new(3);
    // Nodes 1 and 2 trust each other by configuration; node 3 knows nobody yet.
    let pair = vec![mesh.dids[0].clone(), mesh.dids[1].clone()];
    mesh.write_config(1, &pair);
    mesh.write_config(2, &pair);
    mesh.write_config(3, &[]);
    let a = mesh.start(1);
    let b = mesh.start(2);
    let c = mesh.start(3);
    let client = add_client(&mesh.data(1), "before-the-join");
    eventually("the client reaches B", || async {
        token_status(&b, &client).await == StatusCode::OK
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        token_status(&c, &client).await,
        StatusCode::UNAUTHORIZED,
        "C synced before it was admitted"
    );

    // The operator admits C on a member, and C admits that member.
    cli(&mesh.data(1), &["mesh", "admit", &mesh.dids[2], "--json"]);
    cli(&mesh.data(3), &["mesh", "admit", &mesh.dids[0], "--json"]);
    eventually("C learns the mesh's clients", || async {
        token_status(&c, &client).await == StatusCode::OK
    })
    .await;
    // C learns B as a member from A's signed admission of B, and B learns C from A's admission of C.
    let c_token = support::access_token(&c, &client, &[]).await;
    eventually("C's token is active on B", || async {
        active(&b, &client, &c_token).await
    })
    .await;
    let b_token = support::access_token(&b, &client, &[]).await;
    eventually("B's token is active on C", || async {
        active(&c, &client, &b_token).await
    })
    .await;
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rotates_its_identity_key_and_stays_a_member() {
    let mesh = Mesh::new(3);
    let a = mesh.start(1);
    let mut b = mesh.start(2);
    let c = mesh.start(3);
    let client = add_client(&mesh.data(1), "rotation-client");
    eventually("the client reaches B", || async {
        token_status(&b, &client).await == StatusCode::OK
    })
    .await;
    let before = support::access_token(&b, &client, &[]).await;
    eventually("B's token is active on A", || async {
        active(&a, &client, &before).await
    })
    .await;

    // B rotates its identity key while it runs: same DID, another key.
    let rotated: Value = serde_json::from_str(&cli(&mesh.data(2), &["id", "rotate", "--json"])).unwrap();
    assert_eq!(rotated["did"], mesh.dids[1].as_str(), "{rotated}");
    assert_eq!(rotated["seq"], 1, "{rotated}");
    let key = rotated["key"].as_str().unwrap();
    assert!(key.starts_with("z6Mk") && !mesh.dids[1].ends_with(key), "{rotated}");
    let id: Value = serde_json::from_str(&cli(&mesh.data(2), &["id", "--json"])).unwrap();
    assert_eq!(id["did"], mesh.dids[1].as_str());

    // A signing key B attests from now on (with its new identity key) reaches A's JWKS only once A
    // knows the rotation.
    let keys: Value = serde_json::from_str(&cli(&mesh.data(2), &["keys", "rotate", "--json"])).unwrap();
    let new_kids: Vec<String> = keys["active"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    eventually("B's newly attested keys are in A's JWKS", || async {
        let published = kids(&jwks(&a).await);
        new_kids.iter().all(|kid| published.contains(kid))
    })
    .await;

    // B restarts with its rotated key and is still a member, without being admitted again.
    b.kill();
    let b = mesh.start(2);
    assert!(active(&a, &client, &before).await, "a token from before the rotation");
    let after = support::access_token(&b, &client, &[]).await;
    eventually("B's token from after the restart is active on A", || async {
        active(&a, &client, &after).await
    })
    .await;
    let later = add_client(&mesh.data(1), "added-after-the-rotation");
    eventually("a client added on A reaches B", || async {
        token_status(&b, &later).await == StatusCode::OK
    })
    .await;
    // Long enough for A to declare B down had it refused B's datagrams since the restart.
    tokio::time::sleep(Duration::from_secs(6)).await;
    eventually("A sees B alive", || async {
        let status: Value = serde_json::from_str(&cli(&mesh.data(1), &["mesh", "status", "--json"])).unwrap();
        status["peers"].as_array().is_some_and(|peers| {
            peers
                .iter()
                .any(|p| p["did"] == mesh.dids[1].as_str() && p["state"] == "alive")
        })
    })
    .await;
    drop((a, b, c));
}

/// JWKS of `server` as kids.
async fn jwks_kids(server: &Meshgate) -> Vec<String> {
    support::kids(&support::jwks(server).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_gateways_keys_are_published_and_its_tokens_accepted_on_every_node_until_the_cutover_ends() {
    let mesh = Mesh::new(2);
    let (one, two) = (mesh.start(1), mesh.start(2));
    let client = add_client(&mesh.data(1), "resource-server");
    let old_issuer = "https://old-gateway.example/realms/agents";
    let gateway = compat_tests::node(
        "legacy-gateway",
        &json!({"alg": "ES256", "issuer": old_issuer, "kid": "old-es256", "client_id": "legacy-agent", "scope": "read"}),
    );
    let short = compat_tests::node(
        "legacy-gateway",
        &json!({"alg": "RS256", "issuer": old_issuer, "kid": "old-rs256", "client_id": "legacy-agent", "scope": "read"}),
    );
    let files = support::temp_dir();
    let (long_file, short_file) = (files.path().join("old.json"), files.path().join("short.json"));
    std::fs::write(&long_file, gateway["jwks"].to_string()).unwrap();
    std::fs::write(&short_file, short["jwks"].to_string()).unwrap();

    // Imported on node 1 while it runs; replicated to node 2.
    cli(
        &mesh.data(1),
        &[
            "import",
            "jwks",
            long_file.to_str().unwrap(),
            "--until",
            "1h",
            "--issuer",
            old_issuer,
        ],
    );
    cli(
        &mesh.data(1),
        &[
            "import",
            "jwks",
            short_file.to_str().unwrap(),
            "--until",
            "4s",
            "--issuer",
            old_issuer,
        ],
    );
    eventually("node 2 publishes the old gateway's key", || async {
        jwks_kids(&two).await.contains(&"old-es256".to_owned())
    })
    .await;
    let token = gateway["token"].as_str().unwrap();
    for server in [&one, &two] {
        let answer = introspect(server, &client, token).await;
        assert_eq!(answer["active"], true, "{answer:#}");
        assert_eq!(answer["iss"], old_issuer);
        assert_eq!(answer["client_id"], "legacy-agent");
        assert_eq!(answer["scope"], "read");
        for bad in ["other_issuer_token", "expired_token"] {
            assert!(
                !active(server, &client, gateway[bad].as_str().unwrap()).await,
                "{bad} accepted"
            );
        }
    }
    // A token of some other key (not imported) under the same kid is refused.
    let impostor = compat_tests::node(
        "legacy-gateway",
        &json!({"alg": "ES256", "issuer": old_issuer, "kid": "old-es256", "client_id": "legacy-agent", "scope": "read"}),
    );
    assert!(!active(&two, &client, impostor["token"].as_str().unwrap()).await);

    // The short cutover ends: its key leaves every JWKS and its tokens stop introspecting active;
    // the other key stays.
    eventually("the short-lived import ends on both nodes", || async {
        !jwks_kids(&one).await.contains(&"old-rs256".to_owned())
            && !jwks_kids(&two).await.contains(&"old-rs256".to_owned())
    })
    .await;
    assert!(!active(&two, &client, short["token"].as_str().unwrap()).await);
    assert!(jwks_kids(&two).await.contains(&"old-es256".to_owned()));
    assert!(active(&two, &client, token).await);
}

/// The document heads a node reports (`mesh status`).
fn heads(data: &Path) -> Vec<String> {
    let status: Value = serde_json::from_str(&cli(data, &["mesh", "status", "--json"])).unwrap();
    support::string_list(&status["heads"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_reuse_on_another_node_revokes_the_family_everywhere() {
    use super::login::{add_public_client, add_user, log_in, refresh};
    let mesh = Mesh::new(3);
    // No grace window, so the reuse below counts at once.
    let env = [("MESHGATE_BRIDGE__REFRESH_GRACE", "0s")];
    let a = Meshgate::spawn_with_config(&mesh.data(1), &mesh.config_path(1), &env);
    let b = Meshgate::spawn_with_config(&mesh.data(2), &mesh.config_path(2), &env);
    let c = Meshgate::spawn_with_config(&mesh.data(3), &mesh.config_path(3), &env);
    let introspector = add_client(&mesh.data(1), "introspector");
    add_user(&mesh.data(1), "alice", "pw-alice");
    let client_id = add_public_client(&mesh.data(1), "openid profile");

    // The user added on A logs in on B.
    let on_b = {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let authorize = support::get(&b.url(&format!(
                "/authorize?response_type=code&client_id={client_id}&redirect_uri={}&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
                support::form_encode(super::login::REDIRECT)
            )))
            .await;
            if authorize.status == StatusCode::OK {
                break log_in(b.issuer(), &client_id, "alice", "pw-alice", "openid profile").await;
            }
            assert!(tokio::time::Instant::now() < deadline, "the client never reached B");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(on_b["id_token"].is_string(), "{on_b}");

    // Log in on A and rotate there.
    let tokens = log_in(a.issuer(), &client_id, "alice", "pw-alice", "openid profile").await;
    let r0 = tokens["refresh_token"].as_str().unwrap().to_owned();
    let rotated = refresh(a.issuer(), &client_id, &r0).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let rotated = rotated.json();
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    let r1 = rotated["refresh_token"].as_str().unwrap().to_owned();
    // Wait until B holds A's document, then present the spent token on B.
    eventually("B has A's changes", || async {
        heads(&mesh.data(1)) == heads(&mesh.data(2))
    })
    .await;
    let reuse = refresh(b.issuer(), &client_id, &r0).await;
    assert_eq!(reuse.status, StatusCode::BAD_REQUEST, "{}", reuse.text);
    assert_eq!(reuse.json()["error"], "invalid_grant");

    // Every node: the access token A issued with the rotation is revoked, and so is the family.
    for (name, server) in [("A", &a), ("B", &b), ("C", &c)] {
        eventually(&format!("the family's access token is revoked on {name}"), || async {
            !active(server, &introspector, &access).await
        })
        .await;
    }
    let answer = refresh(c.issuer(), &client_id, &r1).await;
    assert_eq!(answer.json()["error"], "invalid_grant", "{}", answer.text);
    let answer = refresh(a.issuer(), &client_id, &r1).await;
    assert_eq!(answer.json()["error"], "invalid_grant", "{}", answer.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_reuse_on_both_sides_of_a_partition_is_detected_when_it_heals() {
    use super::login::{add_public_client, add_user, log_in, refresh};
    let mesh = Mesh::new(2);
    let env = [("MESHGATE_BRIDGE__REFRESH_GRACE", "0s")];
    let a = Meshgate::spawn_with_config(&mesh.data(1), &mesh.config_path(1), &env);
    let b = Meshgate::spawn_with_config(&mesh.data(2), &mesh.config_path(2), &env);
    let introspector = add_client(&mesh.data(1), "introspector");
    add_user(&mesh.data(1), "alice", "pw-alice");
    let client_id = add_public_client(&mesh.data(1), "openid");
    let tokens = log_in(a.issuer(), &client_id, "alice", "pw-alice", "openid").await;
    let r0 = tokens["refresh_token"].as_str().unwrap().to_owned();
    eventually("B has A's changes", || async {
        heads(&mesh.data(1)) == heads(&mesh.data(2))
    })
    .await;

    // Partition: B is frozen (SIGSTOP) while A rotates r0; then A is frozen while B sees r0.
    signal(&b, "-STOP");
    let on_a = refresh(a.issuer(), &client_id, &r0).await;
    assert_eq!(on_a.status, StatusCode::OK, "{}", on_a.text);
    let on_a = on_a.json();
    signal(&a, "-STOP");
    signal(&b, "-CONT");
    // B answers from what it holds: usually it has not heard of the rotation and rotates r0 too
    // (a second child of r0); if A's change reached its socket buffer first, it sees the reuse
    // itself. Either way the family must end revoked on both nodes.
    let on_b = refresh(b.issuer(), &client_id, &r0).await;
    signal(&a, "-CONT");
    let mut access = vec![on_a["access_token"].as_str().unwrap().to_owned()];
    let mut refresh_tokens = vec![on_a["refresh_token"].as_str().unwrap().to_owned()];
    if on_b.status == StatusCode::OK {
        let on_b = on_b.json();
        access.push(on_b["access_token"].as_str().unwrap().to_owned());
        refresh_tokens.push(on_b["refresh_token"].as_str().unwrap().to_owned());
    } else {
        assert_eq!(on_b.json()["error"], "invalid_grant", "{}", on_b.text);
    }
    for (name, server) in [("A", &a), ("B", &b)] {
        for token in &access {
            let what = format!("both sides' access tokens are revoked on {name}");
            eventually_or_show(&what, &[("A", &a), ("B", &b)], || async {
                !active(server, &introspector, token).await
            })
            .await;
        }
    }
    for token in &refresh_tokens {
        for server in [&a, &b] {
            let answer = refresh(server.issuer(), &client_id, token).await;
            assert_eq!(answer.json()["error"], "invalid_grant", "{}", answer.text);
        }
    }
}
