//! Hot reload: owns when a new config replaces the running one, and how.
//!
//! ```text
//! file change in the config's directory ─┐ (debounced)
//!                                SIGHUP ─┴─▶ reload(): read ─ sha256 == running hash? ─▶ unchanged
//!                                                 └─▶ config::load_bytes (parse, validate, compile ALL)
//!                                                        ├─ Ok  ─▶ one ArcSwap::store of the snapshot
//!                                                        └─ Err ─▶ old snapshot keeps serving;
//!                                                                  errors logged + kept for /status
//! ```
//!
//! Why it is safe to swap at any moment: a request loads the snapshot once
//! (`proxy::handle`), so in-flight requests and open streams (SSE, WebSocket, uploads)
//! finish on the generation they started with, and the old snapshot is freed when the
//! last of them ends. Upstream clients come from the gateway's `ClientCache`, keyed by
//! timeouts rather than by snapshot, so connection pools survive a reload.
//!
//! Why the directory is watched and not the file: editors replace the file by renaming
//! a temp file over it, and Kubernetes swaps a `..data` symlink, so a watch on the
//! file's inode would go stale after the first change. Event paths are only a hint
//! (a symlink swap names `..data`, not the file); what decides is the file's content
//! hash, read through the path as given, compared with the running config's.

use crate::config::{self, ConfigError, ConfigErrors};
use crate::proxy::Gateway;
use crate::yaml::raw::Pos;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sha2::Digest;
use std::collections::HashSet;
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Quiet time after the last file event before reloading: long enough to cover an
/// editor's write-rename-chmod burst or a truncate-then-write, short enough to feel
/// immediate.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Upper bound on the debounce, so a file that is written continuously still reloads.
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// What a successful call to [`reload`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new snapshot is serving, with this generation.
    Reloaded(u64),
    /// The file's bytes hash to the running config's hash: nothing was compiled or
    /// swapped; this generation keeps serving.
    Unchanged(u64),
}

/// Why a reload ran (for the log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    File,
    Sighup,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Sighup => "SIGHUP",
        }
    }
}

/// Reloads are rare and short; one process-wide lock keeps two reloaders (the watcher
/// and a SIGHUP, or a caller of `reload`) from installing an older file over a newer
/// one, and keeps generations strictly increasing.
static RELOAD_LOCK: Mutex<()> = Mutex::new(());

/// Reads `path` and, if its content differs from the running config, parses,
/// validates and compiles all of it and swaps the result in with one atomic store.
/// On error nothing is swapped. Either way `gw.status` records the outcome
/// (`last_reload_error` is set on error and cleared otherwise).
///
/// Blocking (file I/O and compilation): call it from `spawn_blocking` on a runtime.
pub fn reload(gw: &Gateway, path: &Path) -> Result<Outcome, ConfigErrors> {
    let _serial = RELOAD_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    // The TLS certificate files are re-read too; a bad one fails the whole reload.
    let result = crate::tls::with_certs(gw.tls.as_deref(), || load_if_changed(gw, path));
    gw.metrics.reload(match &result {
        Ok(Outcome::Reloaded(_)) => crate::metrics::ReloadOutcome::Reloaded,
        Ok(Outcome::Unchanged(_)) => crate::metrics::ReloadOutcome::Unchanged,
        Err(_) => crate::metrics::ReloadOutcome::Failed,
    });
    let mut st = gw.status.lock().unwrap_or_else(PoisonError::into_inner);
    match &result {
        Ok(Outcome::Reloaded(_)) => {
            st.reloads_ok += 1;
            st.last_reload_error = None;
        }
        Ok(Outcome::Unchanged(_)) => {
            st.reloads_unchanged += 1;
            // The file now says what is serving (e.g. a bad edit was reverted), so the
            // earlier error no longer describes it.
            st.last_reload_error = None;
        }
        Err(errs) => {
            st.reloads_failed += 1;
            st.last_reload_error = Some(errs.to_string());
        }
    }
    result
}

fn load_if_changed(gw: &Gateway, path: &Path) -> Result<Outcome, ConfigErrors> {
    let name = path.to_string_lossy();
    let bytes = std::fs::read(path).map_err(|e| {
        // Same wording as `config::load` and `portcullis check`.
        ConfigErrors(vec![ConfigError {
            file: name.to_string(),
            pos: Pos { line: 1, col: 1 },
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    let current = gw.snapshot.load_full();
    // Editors and Kubernetes touch files without changing them; skipping the compile
    // keeps such events free and the generation meaningful.
    if hex::encode(sha2::Sha256::digest(&bytes)) == current.config_hash {
        return Ok(Outcome::Unchanged(current.generation));
    }
    let generation = current.generation + 1;
    let snap = config::load_bytes(&name, &bytes, generation, &gw.clients)?;
    // Plugins whose scope and config are unchanged keep their counters.
    gw.rate_limits.bind(snap.rate_limiting());
    gw.snapshot.store(Arc::new(snap));
    Ok(Outcome::Reloaded(generation))
}

/// Runs [`reload`] off the async workers and logs the outcome: success at info with
/// the generation and hash, failure at error with every `file:line:col` line.
async fn reload_logged(gw: &Arc<Gateway>, path: &Path, trigger: Trigger) {
    let (g, p) = (Arc::clone(gw), path.to_path_buf());
    let result = match tokio::task::spawn_blocking(move || reload(&g, &p)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, trigger = trigger.as_str(), "config reload task failed");
            return;
        }
    };
    let sighup = trigger == Trigger::Sighup;
    let trigger = trigger.as_str();
    match result {
        Ok(Outcome::Reloaded(generation)) => {
            let snap = gw.snapshot.load();
            tracing::info!(
                trigger,
                generation,
                hash = snap.config_hash.as_str(),
                routes = snap.config.routes.len(),
                "config reloaded"
            );
        }
        Ok(Outcome::Unchanged(generation)) => {
            // Routine for file events (touches, Kubernetes cleanup); worth a line when
            // an operator asked with SIGHUP.
            if sighup {
                tracing::info!(trigger, generation, "config unchanged; nothing to reload");
            } else {
                tracing::debug!(trigger, generation, "config unchanged; nothing to reload");
            }
        }
        Err(errs) => {
            let generation = gw.snapshot.load().generation;
            tracing::error!(
                trigger,
                errors = errs.0.len(),
                generation,
                "config reload rejected; the previous config keeps serving"
            );
            for e in &errs.0 {
                tracing::error!("{e}");
            }
        }
    }
}

/// Starts hot reload: watches `path` (if the gateway runs on a file) and handles
/// SIGHUP, until `shutdown` completes. Without a file (the embedded config) SIGHUP
/// is logged and ignored.
///
/// The signal handler and the file watch are installed before this returns, so a
/// SIGHUP or an edit that follows can't be missed (and SIGHUP no longer terminates
/// the process). Must be called on a tokio runtime.
pub fn spawn(
    gw: Arc<Gateway>,
    path: Option<PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler");
            None
        }
    };
    let watch = path.as_deref().and_then(|p| match FileWatch::new(p) {
        Ok(w) => {
            tracing::info!(config = %p.display(), dirs = ?w.dirs, "watching the config for changes");
            Some(w)
        }
        Err(e) => {
            tracing::error!(
                config = %p.display(),
                error = %e,
                "cannot watch the config; SIGHUP still reloads it"
            );
            None
        }
    });
    tokio::spawn(run(gw, path, watch, hup, shutdown))
}

async fn run(
    gw: Arc<Gateway>,
    path: Option<PathBuf>,
    mut watch: Option<FileWatch>,
    mut hup: Option<tokio::signal::unix::Signal>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // (first relevant event, reload due at) while a burst is being debounced.
    let mut pending: Option<(Instant, Instant)> = None;
    loop {
        let due = pending.map(|(_, due)| due);
        tokio::select! {
            _ = &mut shutdown => return,
            got = next_hup(&mut hup) => {
                if got.is_none() {
                    hup = None;
                    continue;
                }
                match &path {
                    Some(p) => {
                        tracing::info!(config = %p.display(), "SIGHUP received: reloading the config");
                        // Any debounced file reload is covered by this one.
                        pending = None;
                        reload_logged(&gw, p, Trigger::Sighup).await;
                        if let Some(w) = watch.as_mut() {
                            w.retarget();
                        }
                    }
                    None => tracing::info!(
                        "SIGHUP received, but the gateway runs on the embedded config: there is no file to reload"
                    ),
                }
            }
            ev = next_event(&mut watch) => match ev {
                None => {
                    tracing::warn!("the config watcher stopped; SIGHUP still reloads");
                    watch = None;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "config watcher error"),
                Some(Ok(ev)) => {
                    if watch.as_ref().is_some_and(|w| w.is_relevant(&ev)) {
                        let now = Instant::now();
                        let first = pending.map_or(now, |(first, _)| first);
                        pending = Some((first, (now + DEBOUNCE).min(first + DEBOUNCE_MAX)));
                    }
                }
            },
            _ = sleep_until_opt(due) => {
                pending = None;
                if let (Some(p), Some(w)) = (&path, watch.as_mut()) {
                    reload_logged(&gw, p, Trigger::File).await;
                    // A symlink swap may have moved the target to another directory.
                    w.retarget();
                }
            }
        }
    }
}

async fn next_hup(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_event(watch: &mut Option<FileWatch>) -> Option<notify::Result<Event>> {
    match watch {
        Some(w) => w.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The notify watcher on the config's directory and, when the path is a symlink, on
/// the directory of its current target too (so in-place edits of the target are
/// seen).
struct FileWatch {
    path: PathBuf,
    watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    dirs: HashSet<PathBuf>,
    /// File names whose events matter: the path's and its target's.
    names: HashSet<OsString>,
}

impl FileWatch {
    fn new(path: &Path) -> notify::Result<FileWatch> {
        let (tx, events) = mpsc::unbounded_channel();
        // The callback runs on notify's thread; an unbounded send never blocks it, and
        // the loop drains events as fast as they come (they are only marks).
        let watcher = notify::recommended_watcher(move |res| {
            let _ = tx.send(res);
        })?;
        let mut w = FileWatch {
            path: path.to_path_buf(),
            watcher,
            events,
            dirs: HashSet::new(),
            names: HashSet::new(),
        };
        let dir = parent_dir(path);
        w.watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        w.dirs.insert(dir);
        w.retarget();
        Ok(w)
    }

    /// Re-reads where the path points and moves the watches to match.
    fn retarget(&mut self) {
        let mut dirs = HashSet::from([parent_dir(&self.path)]);
        let mut names = HashSet::new();
        if let Some(n) = self.path.file_name() {
            names.insert(n.to_os_string());
        }
        // Fails while the file is missing (mid-rename): the link's directory is still
        // watched, and the next event retargets.
        if let Ok(target) = std::fs::canonicalize(&self.path) {
            if let Some(n) = target.file_name() {
                names.insert(n.to_os_string());
            }
            dirs.insert(parent_dir(&target));
        }
        for gone in self.dirs.difference(&dirs) {
            // The old target's directory is often deleted already (Kubernetes removes
            // the previous `..2024_…` directory), which drops the watch by itself.
            let _ = self.watcher.unwatch(gone);
        }
        let mut watched = HashSet::new();
        for dir in dirs {
            if self.dirs.contains(&dir) {
                watched.insert(dir);
            } else {
                match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        watched.insert(dir);
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config target's directory")
                    }
                }
            }
        }
        self.dirs = watched;
        self.names = names;
    }

    fn is_relevant(&self, ev: &Event) -> bool {
        match ev.kind {
            // Opens and reads (our own reads included) change nothing; a close after
            // writing is the clearest sign that a write finished.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return false,
            _ => {}
        }
        if ev.need_rescan() || ev.paths.is_empty() {
            return true;
        }
        ev.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                // `..data`, `..data_tmp`, `..2024_…`: a Kubernetes ConfigMap update.
                self.names.contains(n) || n.as_encoded_bytes().starts_with(b"..")
            })
        })
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Settings;
    use crate::upstream::ClientCache;

    const A: &str = "_format_version: \"3.0\"\nservices:\n  - name: a\n    url: http://127.0.0.1:9/\n    routes:\n      - paths: [/a]\n";
    const B: &str = "_format_version: \"3.0\"\nservices:\n  - name: b\n    url: http://127.0.0.1:9/\n    routes:\n      - paths: [/b]\n";

    fn gateway(path: &Path) -> Gateway {
        let clients = ClientCache::default();
        let snap = config::load(path.to_str().unwrap(), 1, &clients).unwrap();
        Gateway::new(snap, Settings::default(), clients)
    }

    #[test]
    fn reload_swaps_only_valid_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, A).unwrap();
        let gw = gateway(&path);

        assert_eq!(reload(&gw, &path).unwrap(), Outcome::Unchanged(1));

        std::fs::write(&path, "services: [").unwrap();
        let err = reload(&gw, &path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:", path.display())), "{err}");
        assert_eq!(gw.snapshot.load().generation, 1);
        assert_eq!(gw.snapshot.load().config.routes[0].paths, vec!["/a"]);
        assert_eq!(gw.status.lock().unwrap().last_reload_error, Some(err));

        std::fs::write(&path, B).unwrap();
        assert_eq!(reload(&gw, &path).unwrap(), Outcome::Reloaded(2));
        let snap = gw.snapshot.load();
        assert_eq!(snap.generation, 2);
        assert_eq!(
            snap.config_hash,
            hex::encode(sha2::Sha256::digest(B.as_bytes()))
        );
        let st = gw.status.lock().unwrap().clone();
        assert_eq!(st.last_reload_error, None);
        assert_eq!(
            (st.reloads_ok, st.reloads_failed, st.reloads_unchanged),
            (1, 1, 1)
        );

        std::fs::remove_file(&path).unwrap();
        let err = reload(&gw, &path).unwrap_err().to_string();
        assert!(err.contains(":1:1: cannot read the config file"), "{err}");
        assert_eq!(gw.snapshot.load().generation, 2);
    }

    #[test]
    fn relevance_ignores_reads_and_unrelated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, A).unwrap();
        let w = FileWatch::new(&path).unwrap();
        let ev = |kind: EventKind, name: &str| Event::new(kind).add_path(dir.path().join(name));
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        assert!(!w.is_relevant(&ev(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "gateway.yaml"
        )));
        assert!(w.is_relevant(&ev(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "gateway.yaml"
        )));
        assert!(w.is_relevant(&ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "gateway.yaml"
        )));
        assert!(w.is_relevant(&ev(EventKind::Create(CreateKind::Any), "..data")));
        assert!(!w.is_relevant(&ev(EventKind::Create(CreateKind::Any), "other.yaml")));
    }
}
