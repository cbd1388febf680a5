//! Vault source against a real OpenBao dev server on loopback: token and
//! JWT (OIDC) login, changes picked up on reload / SIGUSR1 / interval,
//! deleted tokens close their streams, outages keep the last good set (and
//! are logged once), self-renewal of a short-TTL token.

use std::time::{Duration, Instant};

use flower_auth::{
    token_store_from, AuthConfig, AuthError, BearerCredentials, TokenSource, TokenStore,
    VaultConfig, VaultTokens,
};
use flower_testkit::bao::{Bao, ROOT_TOKEN};
use flower_testkit::jwt::JwtIssuer;

use crate::harness::*;
use crate::logs::{capture_logs, LogCapture};
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

fn root_config(bao: &Bao, refresh: Option<Duration>) -> AuthConfig {
    let vault = VaultConfig::builder(bao.addr())
        .token(ROOT_TOKEN)
        .refresh_interval(refresh)
        .build()
        .unwrap();
    AuthConfig::builder().vault(Some(vault)).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_login_follows_changes_and_revokes_deleted_tokens() {
    let _signal = sigusr1_lock().await;
    let Some(bao) = Bao::start() else { return };
    bao.seed();
    bao.put("federated/alice", &[("token", "vault-tok-alice")]);
    bao.put(
        "federated/bob",
        &[("token", "vault-tok-bob"), ("owner", "bob")],
    );
    bao.put("federated/carol", &[("note", "no token key here")]);
    bao.put("federated/nested/dave", &[("token", "vault-tok-dave")]);
    bao.put("elsewhere/erin", &[("token", "vault-tok-erin")]);

    let (store, manager) = token_store_from(&root_config(&bao, Some(Duration::from_secs(1))))
        .await
        .expect("start-up load from Vault");
    assert_eq!(store.len(), 2, "{store:?}");
    assert!(accepts(&store, "vault-tok-alice") && accepts(&store, "vault-tok-bob"));
    assert!(
        !accepts(&store, "vault-tok-dave"),
        "sub-folders are not listed"
    );
    assert!(!accepts(&store, "vault-tok-erin"));

    let server = start_server(manager.layer(), None).await;
    let (mut bob_stream, _tx) = join(channel(&server, None).await, creds("vault-tok-bob"))
        .await
        .unwrap();
    next_message(&mut bob_stream).await;

    // reload_now() picks up an addition at once. (The 1 s interval may get
    // there first, so check the resulting set, not who added the token.)
    bao.put("federated/frank", &[("token", "vault-tok-frank")]);
    let outcome = manager.reload_now().await.unwrap();
    assert_eq!(outcome.total, 3, "{outcome:?}");
    assert!(accepts(&store, "vault-tok-frank"));

    // So does a real SIGUSR1 (this manager's handler is installed).
    bao.put("federated/gina", &[("token", "vault-tok-gina")]);
    raise_sigusr1();
    assert!(eventually(BOUND, || async { accepts(&store, "vault-tok-gina") }).await);

    // And the 1 s refresh interval, without any trigger.
    bao.put("federated/henry", &[("token", "vault-tok-henry")]);
    assert!(eventually(BOUND, || async { accepts(&store, "vault-tok-henry") }).await);
    let (mut henry, _tx) = join(channel(&server, None).await, creds("vault-tok-henry"))
        .await
        .expect("token added in Vault is accepted");
    next_message(&mut henry).await;

    // Deleting bob's secret revokes bob: new calls refused, live stream closed.
    bao.delete("federated/bob");
    assert!(eventually(BOUND, || async { !accepts(&store, "vault-tok-bob") }).await);
    assert_closed_unauthenticated(&mut bob_stream).await;
    assert_refused(join(channel(&server, None).await, creds("vault-tok-bob")).await);
    // Henry's stream is still alive.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), henry.message())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_login_with_deployment_path() {
    let Some(bao) = Bao::start() else { return };
    bao.seed();
    let issuer = JwtIssuer::generate();
    bao.enable_jwt(&issuer);
    bao.put(
        "users/user-7/deployments/dep-1/federated/client-a",
        &[("token", "dep-tok-a")],
    );
    bao.put(
        "users/user-7/deployments/dep-2/federated/client-b",
        &[("token", "dep-tok-b")],
    );
    bao.put("federated/x", &[("token", "plain-tok-x")]);

    let vault = VaultConfig::builder(bao.addr())
        .oidc_access_token(issuer.mint("user-7", "flower"))
        .role("flower")
        .deployment_id("dep-1")
        .refresh_interval(None)
        .build()
        .unwrap();
    let config = AuthConfig::builder()
        .vault(Some(vault))
        .reload_on_sigusr1(false)
        .build()
        .unwrap();
    let (store, manager) = token_store_from(&config).await.expect("JWT login");
    assert!(manager
        .source_description()
        .contains("users/user-7/deployments/dep-1/federated"));
    assert_eq!(store.len(), 1);
    assert!(accepts(&store, "dep-tok-a"));

    // Default path with JWT login.
    let vault = VaultConfig::builder(bao.addr())
        .oidc_access_token(issuer.mint("user-7", "flower"))
        .role("flower")
        .build()
        .unwrap();
    let source = VaultTokens::connect(vault).await.unwrap();
    assert_eq!(source.load().await.unwrap(), vec!["plain-tok-x".to_owned()]);

    // A JWT for another audience is refused by Vault: a clear start-up error.
    let vault = VaultConfig::builder(bao.addr())
        .oidc_access_token(issuer.mint("user-7", "someone-else"))
        .role("flower")
        .build()
        .unwrap();
    let err = VaultTokens::connect(vault).await.unwrap_err();
    assert!(
        matches!(&err, AuthError::Vault { operation, .. } if operation == "JWT login"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_are_clear() {
    // Nothing listens there.
    let port = flower_testkit::free_port();
    let vault = VaultConfig::builder(format!("http://127.0.0.1:{port}"))
        .token("whatever")
        .request_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let config = AuthConfig::builder().vault(Some(vault)).build().unwrap();
    let err = token_store_from(&config).await.unwrap_err();
    assert!(matches!(err, AuthError::Vault { .. }), "{err}");
    assert!(!err.to_string().contains("whatever"));

    let Some(bao) = Bao::start() else { return };
    bao.seed();
    // A bad Vault token.
    let vault = VaultConfig::builder(bao.addr())
        .token("not-a-vault-token")
        .build()
        .unwrap();
    let err = token_store_from(&AuthConfig::builder().vault(Some(vault)).build().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert!(!err.to_string().contains("not-a-vault-token"));
    // An empty path.
    let err = token_store_from(&root_config(&bao, None))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::NoTokens { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_last_good_set_logs_once_and_recovers() {
    let logs = capture_logs(tracing::Level::INFO);
    let Some(mut bao) = Bao::start() else { return };
    bao.seed();
    bao.put("federated/a", &[("token", "outage-tok-a")]);
    let addr = bao.addr();
    let vault = VaultConfig::builder(&addr)
        .token(ROOT_TOKEN)
        .refresh_interval(Some(Duration::from_millis(500)))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let config = AuthConfig::builder()
        .vault(Some(vault))
        .reload_on_sigusr1(false)
        .build()
        .unwrap();
    let (store, manager) = token_store_from(&config).await.unwrap();
    let server = start_server(manager.layer(), None).await;

    bao.stop();
    let failures = |logs: &LogCapture| {
        logs.contents()
            .lines()
            .filter(|l| l.contains("token reload failed") && l.contains(&addr))
            .count()
    };
    assert!(eventually(BOUND, || async { failures(&logs) >= 1 }).await);
    // Several more periodic attempts fail during the outage...
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // ... but the outage is logged once, and the last good set still works.
    assert_eq!(failures(&logs), 1, "{}", logs.contents());
    // Not even per-request noise from the Vault client library.
    assert!(
        !logs
            .contents()
            .lines()
            .any(|l| l.contains("vaultrs::") || l.contains("rustify::")),
        "{}",
        logs.contents()
    );
    let (mut s, _tx) = join(channel(&server, None).await, creds("outage-tok-a"))
        .await
        .expect("last good set still accepted during the outage");
    next_message(&mut s).await;

    // Vault comes back (empty, dev mode): re-seed with a changed set.
    bao.restart();
    bao.seed();
    bao.put("federated/b", &[("token", "outage-tok-b")]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            accepts(&store, "outage-tok-b")
        })
        .await,
        "recovered after Vault restart"
    );
    assert!(!accepts(&store, "outage-tok-a"));
    assert_closed_unauthenticated(&mut s).await;
    let recovered = logs
        .contents()
        .lines()
        .filter(|l| l.contains("token source recovered") && l.contains(&addr))
        .count();
    assert_eq!(recovered, 1, "{}", logs.contents());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_renewal_extends_a_short_ttl_token() {
    let Some(bao) = Bao::start() else { return };
    bao.seed();
    bao.put("federated/a", &[("token", "renew-tok-a")]);
    let short = bao.create_token(&["-ttl=6s", "-explicit-max-ttl=48h"]);
    assert!(bao.token_ttl(&short) <= 6);

    let vault = VaultConfig::builder(bao.addr())
        .token(short.as_str())
        .refresh_interval(None)
        .build()
        .unwrap();
    let source = VaultTokens::connect(vault).await.unwrap();
    let started = Instant::now();
    // Renewal is due at half the TTL (~3 s); bounded wait.
    let mut ttl = 0;
    while started.elapsed() < Duration::from_secs(9) {
        ttl = bao.token_ttl(&short);
        if ttl > 3600 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ttl > 3600, "TTL was not pushed up (still {ttl} s)");
    // Past the original 6 s, the token still reads Vault.
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(started.elapsed())).await;
    assert_eq!(source.load().await.unwrap(), vec!["renew-tok-a".to_owned()]);
    drop(source); // stops the renewal task
}
