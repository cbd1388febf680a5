//! Captures ALL log output (every crate, TRACE level, `log` records too) of
//! a run with accepted, rejected and revoked tokens, file reloads, client
//! token files and Vault logins, and checks that no token value appears.

use flower_auth::{
    token_store_from, AuthConfig, AuthLayer, BearerCredentials, Fingerprint, TokenSource,
    VaultConfig, VaultTokens,
};
use flower_testkit::bao::{Bao, ROOT_TOKEN};
use flower_testkit::jwt::JwtIssuer;
use flower_testkit::DevCertificates;

use crate::harness::*;
use crate::logs::capture_logs;

const ACCEPTED_1: &str = "accepted-secret-token-111";
const ACCEPTED_2: &str = "accepted-secret-token-222";
const REJECTED: &str = "rejected-secret-token-333";
const FILE_1: &str = "file-secret-token-444";
const FILE_2: &str = "file-secret-token-555";
const CLIENT_FILE_2: &str = "client-file-secret-666";
const VAULT_STORED: &str = "vault-stored-secret-777";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_value_is_ever_logged() {
    let logs = capture_logs(tracing::Level::TRACE);
    let mut secrets: Vec<String> = [
        ACCEPTED_1,
        ACCEPTED_2,
        REJECTED,
        FILE_1,
        FILE_2,
        CLIENT_FILE_2,
        VAULT_STORED,
    ]
    .map(String::from)
    .to_vec();

    // Static tokens, TLS, accepted in both headers, rejected.
    let certs = DevCertificates::generate();
    let config = AuthConfig::builder()
        .tokens([ACCEPTED_1, ACCEPTED_2])
        .reload_on_sigusr1(false)
        .build()
        .unwrap();
    let (_store, manager) = token_store_from(&config).await.unwrap();
    let server = start_server(manager.layer(), Some(&certs)).await;
    for header in ["authorization", "x-authorization"] {
        let creds = BearerCredentials::builder()
            .token(ACCEPTED_1)
            .header(header)
            .tls(true)
            .build()
            .unwrap();
        tracing::debug!(?creds, "client credentials");
        let (mut s, _tx) = join(channel(&server, Some(&certs)).await, creds)
            .await
            .unwrap();
        next_message(&mut s).await;
    }
    let rejected = BearerCredentials::builder()
        .token(REJECTED)
        .tls(true)
        .build()
        .unwrap();
    assert_refused(join(channel(&server, Some(&certs)).await, rejected).await);
    assert_refused(
        join(
            channel(&server, Some(&certs)).await,
            raw_header(Some((
                "authorization",
                "Bearer rejected-secret-token-333 x",
            ))),
        )
        .await,
    );

    // Client token taken from a file that changes.
    let dir = tempfile::tempdir().unwrap();
    let client_file = dir.path().join("client-token");
    std::fs::write(&client_file, format!("{ACCEPTED_2}\n")).unwrap();
    let file_creds = BearerCredentials::builder()
        .token_file(&client_file)
        .tls(true)
        .build()
        .unwrap();
    let (mut s, _tx) = join(channel(&server, Some(&certs)).await, file_creds.clone())
        .await
        .unwrap();
    next_message(&mut s).await;
    std::fs::write(&client_file, format!("{CLIENT_FILE_2}-longer\n")).unwrap();
    secrets.push(format!("{CLIENT_FILE_2}-longer"));
    assert_refused(join(channel(&server, Some(&certs)).await, file_creds).await);

    // Token file on the server, with a reload revoking a live stream.
    let server_file = dir.path().join("server-tokens");
    std::fs::write(&server_file, format!("{FILE_1}\n{FILE_2}\n")).unwrap();
    let config = AuthConfig::builder()
        .token_file(Some(&server_file))
        .reload_on_sigusr1(false)
        .build()
        .unwrap();
    let (store, manager) = token_store_from(&config).await.unwrap();
    let server2 = start_server(AuthLayer::new(store.clone()), None).await;
    let creds = BearerCredentials::builder()
        .token(FILE_2)
        .allow_insecure(true)
        .build()
        .unwrap();
    let (mut live, _tx) = join(channel(&server2, None).await, creds).await.unwrap();
    next_message(&mut live).await;
    std::fs::write(&server_file, format!("{FILE_1}\n")).unwrap();
    manager.reload_now().await.unwrap();
    assert_closed_unauthenticated(&mut live).await;
    std::fs::remove_file(&server_file).unwrap();
    assert!(manager.reload_now().await.is_err());

    // Vault: root-token login and JWT login, tokens read from KV.
    if let Some(bao) = Bao::start() {
        bao.seed();
        bao.put("federated/v", &[("token", VAULT_STORED)]);
        let issuer = JwtIssuer::generate();
        bao.enable_jwt(&issuer);
        let jwt = issuer.mint("user-1", "flower");
        secrets.push(ROOT_TOKEN.to_owned());
        secrets.push(jwt.clone());
        let short = bao.create_token(&["-ttl=1h"]);
        secrets.push(short.clone());

        for vault in [
            VaultConfig::builder(bao.addr())
                .token(ROOT_TOKEN)
                .build()
                .unwrap(),
            VaultConfig::builder(bao.addr())
                .token(short.as_str())
                .build()
                .unwrap(),
            VaultConfig::builder(bao.addr())
                .oidc_access_token(jwt.as_str())
                .role("flower")
                .build()
                .unwrap(),
        ] {
            tracing::debug!(?vault, "vault config");
            let source = VaultTokens::connect(vault).await.unwrap();
            assert_eq!(source.load().await.unwrap(), vec![VAULT_STORED.to_owned()]);
        }
        let bad = VaultConfig::builder(bao.addr())
            .token(REJECTED)
            .build()
            .unwrap();
        assert!(VaultTokens::connect(bad).await.is_err());
    }

    drop((server, server2));
    let text = logs.contents();
    assert!(
        text.contains(&Fingerprint::of(REJECTED).to_string()),
        "the capture works and rejected tokens are logged by fingerprint"
    );
    assert!(text.lines().count() > 50, "TRACE output was captured");
    for secret in &secrets {
        let hits: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(
            hits.is_empty(),
            "a token value appears in the logs ({} lines), e.g.: {}",
            hits.len(),
            hits[0]
        );
    }
}
