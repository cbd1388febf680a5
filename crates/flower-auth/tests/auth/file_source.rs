//! Token file source: start-up errors, reload on a real `SIGUSR1` sent to
//! this test process, bad reloads keep the previous set, removed tokens
//! close their live streams.

use std::sync::Arc;
use std::time::Duration;

use flower_auth::{
    token_store_from, AuthConfig, AuthError, AuthManager, BearerCredentials, FileTokens,
    ReloadOptions, TokenStore,
};

use crate::harness::*;
use crate::logs::capture_logs;
use crate::signals::{raise_sigusr1, sigusr1_lock};

fn creds(token: &str) -> BearerCredentials {
    BearerCredentials::builder()
        .token(token)
        .allow_insecure(true)
        .build()
        .unwrap()
}

fn accepts(store: &TokenStore, token: &str) -> bool {
    store.snapshot().contains(token)
}

#[tokio::test]
async fn startup_fails_clearly_on_missing_or_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-file");
    let config = AuthConfig::builder()
        .token_file(Some(&missing))
        .reload_on_sigusr1(false)
        .build()
        .unwrap();
    let err = token_store_from(&config).await.unwrap_err();
    assert!(matches!(err, AuthError::TokenFile { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-file"), "{err}");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n   \n\n").unwrap();
    let config = AuthConfig::builder()
        .token_file(Some(&empty))
        .reload_on_sigusr1(false)
        .build()
        .unwrap();
    let err = token_store_from(&config).await.unwrap_err();
    assert!(matches!(err, AuthError::NoTokens { .. }), "{err:?}");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn sigusr1_reload_adds_and_removes_tokens_and_closes_revoked_streams() {
    let _signal = sigusr1_lock().await;
    let logs = capture_logs(tracing::Level::INFO);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "  alpha-token \n\nbeta-token\n").unwrap();
    let config = AuthConfig::builder()
        .token_file(Some(&path))
        .build()
        .unwrap();
    let (store, manager) = token_store_from(&config).await.unwrap();
    assert!(accepts(&store, "alpha-token") && accepts(&store, "beta-token"));
    let server = start_server(manager.layer(), None).await;

    // A live stream authenticated with beta, which is going to be removed.
    let (mut beta_stream, _tx) = join(channel(&server, None).await, creds("beta-token"))
        .await
        .unwrap();
    next_message(&mut beta_stream).await;
    assert_refused(join(channel(&server, None).await, creds("gamma-token")).await);

    std::fs::write(&path, "alpha-token\ngamma-token\n").unwrap();
    raise_sigusr1();
    assert!(
        eventually(BOUND, || async { accepts(&store, "gamma-token") }).await,
        "SIGUSR1 reloaded the file"
    );
    assert!(!accepts(&store, "beta-token"));
    assert_closed_unauthenticated(&mut beta_stream).await;

    let (mut gamma_stream, _tx) = join(channel(&server, None).await, creds("gamma-token"))
        .await
        .expect("added token accepted after reload");
    next_message(&mut gamma_stream).await;
    assert_refused(join(channel(&server, None).await, creds("beta-token")).await);

    // A failed reload keeps the previous set: file deleted.
    std::fs::remove_file(&path).unwrap();
    raise_sigusr1();
    let path_text = path.display().to_string();
    assert!(
        eventually(BOUND, || async {
            logs.contents().lines().any(|l| {
                l.contains("token reload failed") && l.contains(&path_text) && l.contains("SIGUSR1")
            })
        })
        .await,
        "the failed reload is logged with its reason"
    );
    assert!(accepts(&store, "alpha-token") && accepts(&store, "gamma-token"));
    let (mut again, _tx) = join(channel(&server, None).await, creds("alpha-token"))
        .await
        .expect("previous set still in force");
    next_message(&mut again).await;

    // The stream of a kept token survived the failed reload.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), gamma_stream.message())
            .await
            .is_err()
    );

    // An emptied file is no outage: it revokes every token (fail closed).
    std::fs::write(&path, "\n \n").unwrap();
    let outcome = manager.reload_now().await.unwrap();
    assert_eq!((outcome.total, outcome.removed.len()), (0, 2));
    assert!(store.is_empty());
    assert_closed_unauthenticated(&mut gamma_stream).await;

    // And a good file works again.
    std::fs::write(&path, "delta-token\n").unwrap();
    let outcome = manager.reload_now().await.unwrap();
    assert_eq!((outcome.total, outcome.removed.len()), (1, 0));
    assert!(logs
        .contents()
        .lines()
        .any(|l| l.contains("token source recovered") && l.contains(&path_text)));
}

#[tokio::test]
async fn periodic_reload_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "one-token\n").unwrap();
    let manager = AuthManager::start(
        Arc::new(FileTokens::new(&path)),
        ReloadOptions::new()
            .on_sigusr1(false)
            .interval(Some(Duration::from_millis(200))),
    )
    .await
    .unwrap();
    let store = manager.store();
    std::fs::write(&path, "two-token\n").unwrap();
    assert!(eventually(BOUND, || async { accepts(&store, "two-token") }).await);
    assert!(!accepts(&store, "one-token"));
    manager.shutdown();
    std::fs::write(&path, "three-token\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!accepts(&store, "three-token"), "no reload after shutdown");
}
