//! The local admin channel: a Unix socket `admin.sock` in the data directory (mode 0600, so the file
//! system is the access control). One request per connection: a JSON [`AdminRequest`] line, answered
//! by one JSON line `{"ok": ...}` or `{"error": "..."}`.
//!
//! The CLI tries the socket first; when no server runs it opens the data directory itself, under the
//! store's lock, and executes the same command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::error::Error;
use crate::http::AppState;
use crate::node::{AdminRequest, Node};

/// The socket's file name in the data directory.
pub const SOCKET: &str = "admin.sock";
const MAX_REQUEST: u64 = 1024 * 1024;

/// Binds the admin socket (replacing a stale one: the caller holds the data directory's lock).
pub fn bind(data_dir: &Path) -> Result<UnixListener, Error> {
    let path = data_dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| Error::AdminChannel {
        path: path.clone(),
        source,
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| Error::AdminChannel { path, source })?;
    Ok(listener)
}

/// Serves admin requests until `shutdown` resolves.
pub async fn serve(listener: UnixListener, state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        // The peer's uid names the operator in the audit log; the socket is 0600, so it is the
        // data directory's owner (or root).
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
            let answer = match reader.read_line(&mut line).await {
                Ok(_) => handle(&state, &line, crate::audit::Actor::Operator { uid }).await,
                Err(e) => json!({"error": format!("reading request: {e}")}),
            };
            let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
            bytes.push(b'\n');
            let _ = write.write_all(&bytes).await;
        });
    }
}

async fn handle(state: &AppState, line: &str, actor: crate::audit::Actor) -> Value {
    let request: AdminRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return json!({"error": format!("malformed admin request: {e}")}),
    };
    tracing::info!(command = command_name(&request), "admin command");
    if matches!(request, AdminRequest::UpstreamStatus) {
        return json!({"ok": state.upstream_status()});
    }
    let status = matches!(request, AdminRequest::MeshStatus);
    let plugin_list = matches!(request, AdminRequest::PluginList);
    let peers = state.mesh_peers();
    let plugin_state = state.clone();
    let state = state.clone();
    let result = tokio::task::spawn_blocking(move || state.with_node(|node| node.execute_as(request, actor))).await;
    match result {
        Ok(Ok(mut value)) => {
            if status {
                value["peers"] = serde_json::to_value(peers).unwrap_or_default();
            }
            if plugin_list && let Some(host) = plugin_state.plugins() {
                crate::plugin_host::annotate_list(host, &mut value);
            }
            json!({"ok": value})
        }
        Ok(Err(e)) => json!({"error": e.to_string()}),
        Err(e) => json!({"error": format!("admin command failed: {e}")}),
    }
}

fn command_name(request: &AdminRequest) -> String {
    serde_json::to_value(request)
        .ok()
        .and_then(|v| v.get("command").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// Runs `request` against the node of `data_dir`: through a running server's socket, or, when
/// none runs, by opening the data directory with `open`.
pub fn call(data_dir: &Path, request: &AdminRequest, open: impl Fn() -> Result<Node, Error>) -> Result<Value, Error> {
    let socket = data_dir.join(SOCKET);
    // A server that is starting holds the lock before its socket exists: retry for a while.
    for _ in 0..100 {
        if let Some(answer) = try_socket(&socket, request)? {
            return answer;
        }
        match open() {
            Ok(mut node) => return node.execute(request.clone()).map(|(answer, _)| answer),
            Err(Error::Mesh(mesh::Error::Locked(_))) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e),
        }
    }
    Err(Error::Admin(format!(
        "{} is locked by a meshgate process that does not answer on {}",
        data_dir.display(),
        socket.display()
    )))
}

/// Runs `request` through a running server's socket; `Ok(None)` when no server runs on
/// `data_dir`.
pub fn call_running(data_dir: &Path, request: &AdminRequest) -> Result<Option<Value>, Error> {
    try_socket(&data_dir.join(SOCKET), request)?.transpose()
}

fn try_socket(socket: &PathBuf, request: &AdminRequest) -> Result<Option<Result<Value, Error>>, Error> {
    let channel = |source| Error::AdminChannel {
        path: socket.clone(),
        source,
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(channel(e)),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(channel)?;
    let mut bytes = serde_json::to_vec(request).map_err(|e| Error::Admin(e.to_string()))?;
    bytes.push(b'\n');
    stream.write_all(&bytes).map_err(channel)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(channel)?;
    let answer: Value =
        serde_json::from_str(&line).map_err(|e| Error::Admin(format!("malformed admin answer: {e}")))?;
    Ok(Some(match (answer.get("ok"), answer.get("error")) {
        (Some(ok), _) => Ok(ok.clone()),
        (_, Some(err)) => Err(Error::Admin(err.as_str().unwrap_or("error").to_owned())),
        _ => Err(Error::Admin("malformed admin answer".into())),
    }))
}
