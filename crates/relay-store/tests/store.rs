//! The store's behaviour, the same test bodies on every backend: a fresh SQLite file, a fresh
//! MariaDB database and a fresh PostgreSQL database per test (see `support`). A few tests of
//! SQLite files and of server locks run on those backends only.
#![expect(
    clippy::unwrap_used,
    reason = "the test bodies are plain async functions that the backend macro calls, so \
              clippy does not know they are tests"
)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use relay_core::model::{Account, Credential, Group, OAuthCredential, Platform};
use relay_store::{
    AccountStore, AccountUpdate, ApiKeyStore, ApiKeyUpdate, DatabaseLocation, Dialect, GroupStore,
    GroupUpdate, NewAccount, NewApiKey, NewGroup, SettingsStore, SqlStore, StoreError, UsageFilter,
    UsageRow, UsageStore, UsageTotals, DEFAULT_SQLITE_PATH,
};
use serde_json::json;
use sqlx::Connection;
use support::{on_every_backend, on_server_backends, Backend, TempDirectory, TestDatabase};

fn new_group(name: &str) -> NewGroup {
    NewGroup {
        name: name.to_owned(),
        fallback: json!({"strategy": "round_robin", "max_retries": 2}),
    }
}

fn new_account(group_id: i64, name: &str, credential: Credential) -> NewAccount {
    NewAccount {
        name: name.to_owned(),
        platform: Platform::ClaudeConsole,
        base_url: "https://api.example.test".to_owned(),
        group_id,
        priority: 10,
        weight: 300,
        enabled: true,
        proxy_url: Some("socks5://127.0.0.1:1080".to_owned()),
        model_allowlist: vec!["claude-sonnet-4".to_owned(), "claude-opus-4".to_owned()],
        model_mapping: BTreeMap::from([(
            "claude-sonnet-4".to_owned(),
            "anthropic/claude-sonnet-4".to_owned(),
        )]),
        max_concurrency: Some(4),
        credential,
    }
}

fn new_api_key(group_id: i64, key_hash: &str) -> NewApiKey {
    NewApiKey {
        name: format!("key {key_hash}"),
        group_id,
        key_hash: key_hash.to_owned(),
        key_prefix: "cr_abcd".to_owned(),
        enabled: true,
        expires_at: Some(1_900_000_000_000),
        model_allowlist: vec!["claude-haiku-4".to_owned()],
        daily_cost_limit_usd: Some(12.5),
        rpm_limit: Some(60),
    }
}

fn oauth(access_token: &str, refresh_token: &str, expires_at: i64) -> OAuthCredential {
    OAuthCredential {
        access_token: access_token.to_owned(),
        refresh_token: refresh_token.to_owned(),
        expires_at,
    }
}

/// A store holding a group `pool` with one account `a`.
async fn store_with_an_account(database: &TestDatabase) -> (SqlStore, Group, Account) {
    let store = database.open_store().await;
    let group = store.create_group(new_group("pool")).await.unwrap();
    let account = store
        .create_account(new_account(group.id, "a", Credential::ApiKey("sk".into())))
        .await
        .unwrap();
    (store, group, account)
}

#[expect(
    clippy::too_many_arguments,
    reason = "a test fixture: each test varies other fields"
)]
fn usage_row(
    request_id: &str,
    class: &str,
    api_key_id: Option<i64>,
    group_id: Option<i64>,
    account_id: Option<i64>,
    input_tokens: u64,
    cost_usd: f64,
    created_at: i64,
) -> UsageRow {
    UsageRow {
        request_id: request_id.into(),
        attempt: 1,
        api_key_id,
        group_id,
        account_id,
        model: "claude-sonnet-4".to_owned(),
        stream: true,
        status: Some(200),
        class: class.to_owned().into(),
        input_tokens,
        output_tokens: input_tokens * 2,
        cache_read_input_tokens: 3,
        cache_creation_input_tokens: 4,
        cost_usd,
        duration_ms: 1500,
        ttfb_ms: Some(250),
        created_at,
    }
}

/// A raw connection to a SQLite file, to look at what the store left there.
async fn raw_sqlite(directory: &TempDirectory) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&directory.database_url())
        .await
        .unwrap_or_else(|error| panic!("cannot open the raw connection: {error}"))
}

on_every_backend!(migrations_are_idempotent_and_data_survives_a_reconnect);
async fn migrations_are_idempotent_and_data_survives_a_reconnect(database: TestDatabase) {
    let store = database.open_store().await;
    assert_eq!(store.dialect(), database.backend.dialect());
    assert_eq!(store.applied_migrations().await.unwrap(), vec![1, 2]);
    let group = store.create_group(new_group("persisted")).await.unwrap();
    store.close().await;

    let reopened = database.open_store().await;
    assert_eq!(reopened.applied_migrations().await.unwrap(), vec![1, 2]);
    assert_eq!(reopened.get_group(group.id).await.unwrap(), Some(group));
    reopened.ping().await.unwrap();
}

on_every_backend!(an_edited_migration_is_refused);
async fn an_edited_migration_is_refused(database: TestDatabase) {
    database.open_store().await.close().await;
    let mut raw = database.raw_connection().await;
    sqlx::query("UPDATE relay_schema_migrations SET checksum = 'edited' WHERE version = 1")
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();

    match SqlStore::connect(Some(database.url())).await {
        Err(StoreError::Migration(message)) => assert!(message.contains("edited"), "{message}"),
        other => panic!("expected a migration error, got {other:?}"),
    }
}

on_every_backend!(multi_thread: instances_starting_together_migrate_once);
async fn instances_starting_together_migrate_once(database: TestDatabase) {
    const INSTANCES: usize = 4;
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..INSTANCES {
        let url = database.url().to_owned();
        starting.spawn(async move { SqlStore::connect(Some(&url)).await });
    }
    let mut stores = Vec::new();
    while let Some(joined) = starting.join_next().await {
        match joined.unwrap() {
            Ok(store) => stores.push(store),
            Err(error) => panic!("an instance failed to start beside the others: {error}"),
        }
    }
    assert_eq!(stores.len(), INSTANCES);
    for store in &stores {
        assert_eq!(store.applied_migrations().await.unwrap(), vec![1, 2]);
    }
    let group = stores[0].create_group(new_group("shared")).await.unwrap();
    assert_eq!(
        stores[INSTANCES - 1].get_group(group.id).await.unwrap(),
        Some(group)
    );
    for store in stores {
        store.close().await;
    }
}

/// The migration lock as the store takes it (the name and key are spelled as in
/// `src/migrate.rs`), taken here by a session of the test.
async fn hold_migration_lock(database: &TestDatabase) -> sqlx::AnyConnection {
    let mut holder = database.raw_connection().await;
    match database.backend {
        Backend::MariaDb => {
            let row = sqlx::query(
                "SELECT CAST(GET_LOCK(CONCAT('relay_migrations_', \
                 SHA1(COALESCE(DATABASE(), ''))), 10) AS SIGNED) AS acquired",
            )
            .fetch_one(&mut holder)
            .await
            .unwrap();
            assert_eq!(sqlx::Row::try_get::<i64, _>(&row, "acquired").unwrap(), 1);
        }
        Backend::Postgres => {
            // 0x7265_6c61_796d_6967: "relaymig" in ASCII.
            sqlx::query("SELECT pg_advisory_lock(8243113858876402023)")
                .execute(&mut holder)
                .await
                .unwrap();
        }
        Backend::Sqlite => unreachable!("SQLite has no session locks"),
    }
    holder
}

/// Answers whether some session of the server is waiting for the migration lock.
async fn a_session_waits_for_the_migration_lock(
    observer: &mut sqlx::AnyConnection,
    backend: Backend,
) -> bool {
    let sql = match backend {
        Backend::MariaDb => {
            "SELECT COUNT(*) AS waiting FROM information_schema.PROCESSLIST \
             WHERE INFO LIKE 'SELECT CAST(GET_LOCK(%' AND DB = DATABASE() \
             AND ID <> CONNECTION_ID()"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) AS waiting FROM pg_locks \
             WHERE locktype = 'advisory' AND NOT granted AND database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())"
        }
        Backend::Sqlite => unreachable!("SQLite has no session locks"),
    };
    let row = sqlx::query(sql).fetch_one(&mut *observer).await.unwrap();
    sqlx::Row::try_get::<i64, _>(&row, "waiting").unwrap() > 0
}

on_server_backends!(a_starting_instance_waits_for_the_migration_lock);
async fn a_starting_instance_waits_for_the_migration_lock(database: TestDatabase) {
    let holder = hold_migration_lock(&database).await;
    let url = database.url().to_owned();
    let starting = tokio::spawn(async move { SqlStore::connect(Some(&url)).await });

    // Watch the server until the new instance is queued behind the lock. Bounded so that a
    // store that ignores the lock fails here instead of hanging.
    let mut observer = database.raw_connection().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !a_session_waits_for_the_migration_lock(&mut observer, database.backend).await {
        assert!(
            !starting.is_finished(),
            "the instance migrated without waiting for the lock"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the instance never queued for the migration lock"
        );
        tokio::task::yield_now().await;
    }
    // While it waits, nothing has been created.
    // MySQL's information_schema spans the server; PostgreSQL's shows one database.
    let this_database = match database.backend {
        Backend::MariaDb => "DATABASE()",
        Backend::Postgres | Backend::Sqlite => "current_schema()",
    };
    let row = sqlx::query(&format!(
        "SELECT COUNT(*) AS tables FROM information_schema.tables \
         WHERE table_name = 'relay_schema_migrations' AND table_schema = {this_database}"
    ))
    .fetch_one(&mut observer)
    .await
    .unwrap();
    let tables_visible = sqlx::Row::try_get::<i64, _>(&row, "tables").unwrap();
    assert_eq!(
        tables_visible, 0,
        "the schema was touched before the lock was taken"
    );
    assert!(!starting.is_finished());

    holder.close().await.unwrap();
    let store = starting.await.unwrap().unwrap();
    assert_eq!(store.applied_migrations().await.unwrap(), vec![1, 2]);
    observer.close().await.unwrap();
    store.close().await;
}

on_server_backends!(the_scheme_aliases_mariadb_and_postgresql_connect);
async fn the_scheme_aliases_mariadb_and_postgresql_connect(database: TestDatabase) {
    let (scheme, alias) = match database.backend {
        Backend::MariaDb => ("mysql://", "mariadb://"),
        Backend::Postgres => ("postgres://", "postgresql://"),
        Backend::Sqlite => unreachable!("not a server"),
    };
    let aliased_url = database.url().replacen(scheme, alias, 1);
    assert!(aliased_url.starts_with(alias), "{aliased_url}");
    let store = SqlStore::connect(Some(&aliased_url)).await.unwrap();
    assert_eq!(store.dialect(), database.backend.dialect());
    store.ping().await.unwrap();
    store.put_setting("k", "v").await.unwrap();
    assert_eq!(store.get_setting("k").await.unwrap().as_deref(), Some("v"));
    store.close().await;
}

#[tokio::test]
async fn sqlite_files_are_in_wal_mode() {
    let directory = TempDirectory::new("wal");
    let _store = SqlStore::connect(Some(&directory.database_url()))
        .await
        .unwrap();
    let raw = raw_sqlite(&directory).await;
    let (journal_mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(journal_mode.to_ascii_lowercase(), "wal");
    raw.close().await;
}

on_every_backend!(groups_can_be_created_read_listed_updated_and_deleted);
async fn groups_can_be_created_read_listed_updated_and_deleted(database: TestDatabase) {
    let store = database.open_store().await;

    let alpha = store.create_group(new_group("alpha")).await.unwrap();
    let beta = store
        .create_group(NewGroup {
            name: "beta".to_owned(),
            fallback: json!({}),
        })
        .await
        .unwrap();
    assert!(alpha.id > 0 && beta.id > alpha.id);
    assert_eq!(
        alpha.fallback,
        json!({"strategy": "round_robin", "max_retries": 2})
    );
    assert_eq!(alpha.created_at, alpha.updated_at);
    assert_eq!(
        store.get_group(alpha.id).await.unwrap(),
        Some(alpha.clone())
    );
    assert_eq!(
        store.list_groups().await.unwrap(),
        vec![alpha.clone(), beta.clone()]
    );

    let renamed = store
        .update_group(
            alpha.id,
            GroupUpdate {
                name: Some("alpha-2".to_owned()),
                fallback: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.name, "alpha-2");
    assert_eq!(renamed.fallback, alpha.fallback, "untouched fields stay");
    assert!(renamed.updated_at >= alpha.updated_at);
    let refallbacked = store
        .update_group(
            alpha.id,
            GroupUpdate {
                name: None,
                fallback: Some(json!({"strategy": "weighted"})),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refallbacked.name, "alpha-2");
    assert_eq!(refallbacked.fallback, json!({"strategy": "weighted"}));
    assert_eq!(
        store
            .update_group(9999, GroupUpdate::default())
            .await
            .unwrap(),
        None
    );

    assert!(store.delete_group(beta.id).await.unwrap());
    assert!(!store.delete_group(beta.id).await.unwrap());
    assert_eq!(store.get_group(beta.id).await.unwrap(), None);
    assert_eq!(store.list_groups().await.unwrap(), vec![refallbacked]);
}

on_every_backend!(group_names_are_unique_on_create_and_on_rename);
async fn group_names_are_unique_on_create_and_on_rename(database: TestDatabase) {
    let store = database.open_store().await;
    store.create_group(new_group("taken")).await.unwrap();
    let other = store.create_group(new_group("other")).await.unwrap();

    match store.create_group(new_group("taken")).await {
        Err(StoreError::Conflict(message)) => assert!(message.contains("taken"), "{message}"),
        result => panic!("expected Conflict, got {result:?}"),
    }
    let rename = GroupUpdate {
        name: Some("taken".to_owned()),
        fallback: None,
    };
    assert!(matches!(
        store.update_group(other.id, rename).await,
        Err(StoreError::Conflict(_))
    ));
    // Names differing only in case are different groups.
    store.create_group(new_group("TAKEN")).await.unwrap();
    assert_eq!(store.list_groups().await.unwrap().len(), 3);
}

on_every_backend!(a_group_with_accounts_or_api_keys_cannot_be_deleted);
async fn a_group_with_accounts_or_api_keys_cannot_be_deleted(database: TestDatabase) {
    let store = database.open_store().await;
    let group = store.create_group(new_group("parent")).await.unwrap();
    let account = store
        .create_account(new_account(
            group.id,
            "a",
            Credential::ApiKey("sk-a".into()),
        ))
        .await
        .unwrap();
    let api_key = store
        .create_api_key(new_api_key(group.id, "hash-1"))
        .await
        .unwrap();

    match store.delete_group(group.id).await {
        Err(StoreError::Conflict(message)) => {
            assert!(message.contains("1 accounts"), "{message}");
            assert!(message.contains("1 API keys"), "{message}");
        }
        result => panic!("expected Conflict, got {result:?}"),
    }
    assert!(store.delete_account(account.id).await.unwrap());
    match store.delete_group(group.id).await {
        Err(StoreError::Conflict(message)) => {
            assert!(!message.contains("accounts"), "{message}");
            assert!(message.contains("API keys"), "{message}");
        }
        result => panic!("expected Conflict, got {result:?}"),
    }
    assert!(store.delete_api_key(api_key.id).await.unwrap());
    assert!(store.delete_group(group.id).await.unwrap());
}

on_every_backend!(accounts_round_trip_every_field_without_exposing_the_secret);
async fn accounts_round_trip_every_field_without_exposing_the_secret(database: TestDatabase) {
    let store = database.open_store().await;
    let group = store.create_group(new_group("pool")).await.unwrap();
    let other_group = store.create_group(new_group("other")).await.unwrap();

    let wanted = new_account(
        group.id,
        "console",
        Credential::ApiKey("sk-ant-secret".into()),
    );
    let created = store.create_account(wanted.clone()).await.unwrap();
    assert_eq!(created.name, wanted.name);
    assert_eq!(created.platform, Platform::ClaudeConsole);
    assert_eq!(created.base_url, wanted.base_url);
    assert_eq!(created.group_id, group.id);
    assert_eq!(created.priority, 10);
    assert_eq!(created.weight, 300);
    assert!(created.enabled);
    assert_eq!(created.proxy_url, wanted.proxy_url);
    assert_eq!(created.model_allowlist, wanted.model_allowlist);
    assert_eq!(created.model_mapping, wanted.model_mapping);
    assert_eq!(created.max_concurrency, Some(4));
    assert_eq!(
        store.get_account(created.id).await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(
        store.get_credential(created.id).await.unwrap(),
        Some(Credential::ApiKey("sk-ant-secret".into()))
    );
    let serialised = serde_json::to_string(&created).unwrap();
    assert!(!serialised.contains("sk-ant-secret"), "{serialised}");

    let subscription = store
        .create_account(NewAccount {
            platform: Platform::Claude,
            proxy_url: None,
            model_allowlist: Vec::new(),
            model_mapping: BTreeMap::new(),
            max_concurrency: None,
            enabled: false,
            ..new_account(
                other_group.id,
                "subscription",
                Credential::OAuth(oauth("access-1", "refresh-1", 1_000)),
            )
        })
        .await
        .unwrap();
    let reread = store.get_account(subscription.id).await.unwrap().unwrap();
    assert_eq!(reread.proxy_url, None);
    assert_eq!(reread.max_concurrency, None);
    assert!(reread.model_allowlist.is_empty() && reread.model_mapping.is_empty());
    assert!(!reread.enabled);
    assert_eq!(
        store.get_credential(subscription.id).await.unwrap(),
        Some(Credential::OAuth(oauth("access-1", "refresh-1", 1_000)))
    );

    assert_eq!(
        store.list_accounts(None).await.unwrap(),
        vec![created.clone(), subscription.clone()]
    );
    assert_eq!(
        store.list_accounts(Some(other_group.id)).await.unwrap(),
        vec![subscription.clone()]
    );
    let with_credentials = store.list_accounts_with_credentials().await.unwrap();
    assert_eq!(with_credentials.len(), 2);
    assert_eq!(with_credentials[0].0, created);
    assert_eq!(
        with_credentials[0].1,
        Credential::ApiKey("sk-ant-secret".into())
    );
    assert_eq!(
        with_credentials[1].1,
        Credential::OAuth(oauth("access-1", "refresh-1", 1_000))
    );

    assert_eq!(store.get_account(424_242).await.unwrap(), None);
    assert_eq!(store.get_credential(424_242).await.unwrap(), None);
}

on_every_backend!(account_updates_change_only_what_they_name_and_null_clears);
async fn account_updates_change_only_what_they_name_and_null_clears(database: TestDatabase) {
    let store = database.open_store().await;
    let group = store.create_group(new_group("pool")).await.unwrap();
    let other_group = store.create_group(new_group("other")).await.unwrap();
    let account = store
        .create_account(new_account(
            group.id,
            "a",
            Credential::ApiKey("sk-old".into()),
        ))
        .await
        .unwrap();

    let updated = store
        .update_account(
            account.id,
            AccountUpdate {
                priority: Some(-5),
                weight: Some(7),
                enabled: Some(false),
                proxy_url: Some(None),
                max_concurrency: Some(None),
                group_id: Some(other_group.id),
                model_mapping: Some(BTreeMap::new()),
                ..AccountUpdate::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.priority, -5);
    assert_eq!(updated.weight, 7);
    assert!(!updated.enabled);
    assert_eq!(updated.proxy_url, None);
    assert_eq!(updated.max_concurrency, None);
    assert_eq!(updated.group_id, other_group.id);
    assert!(updated.model_mapping.is_empty());
    assert_eq!(updated.name, account.name, "unnamed fields stay");
    assert_eq!(updated.model_allowlist, account.model_allowlist);
    assert_eq!(
        store.get_credential(account.id).await.unwrap(),
        Some(Credential::ApiKey("sk-old".into())),
        "the secret stays unless the update names it"
    );

    let switched = store
        .update_account(
            account.id,
            AccountUpdate {
                platform: Some(Platform::Claude),
                credential: Some(Credential::OAuth(oauth("a", "r", 5))),
                proxy_url: Some(Some("http://proxy.test:3128".to_owned())),
                ..AccountUpdate::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(switched.platform, Platform::Claude);
    assert_eq!(
        switched.proxy_url.as_deref(),
        Some("http://proxy.test:3128")
    );
    assert_eq!(
        store.get_credential(account.id).await.unwrap(),
        Some(Credential::OAuth(oauth("a", "r", 5)))
    );

    match store
        .update_account(
            account.id,
            AccountUpdate {
                group_id: Some(777),
                ..AccountUpdate::default()
            },
        )
        .await
    {
        Err(StoreError::Conflict(message)) => assert!(message.contains("777"), "{message}"),
        result => panic!("expected Conflict, got {result:?}"),
    }
    assert_eq!(
        store
            .update_account(31_337, AccountUpdate::default())
            .await
            .unwrap(),
        None
    );
    assert!(store.delete_account(account.id).await.unwrap());
    assert!(!store.delete_account(account.id).await.unwrap());
    assert_eq!(store.get_account(account.id).await.unwrap(), None);
}

on_every_backend!(an_account_needs_an_existing_group);
async fn an_account_needs_an_existing_group(database: TestDatabase) {
    let store = database.open_store().await;
    match store
        .create_account(new_account(55, "orphan", Credential::ApiKey("sk".into())))
        .await
    {
        Err(StoreError::Conflict(message)) => assert!(message.contains("55"), "{message}"),
        result => panic!("expected Conflict, got {result:?}"),
    }
    assert!(store.list_accounts(None).await.unwrap().is_empty());
}

on_every_backend!(rotated_oauth_tokens_are_saved);
async fn rotated_oauth_tokens_are_saved(database: TestDatabase) {
    let store = database.open_store().await;
    let group = store.create_group(new_group("pool")).await.unwrap();
    let account = store
        .create_account(new_account(
            group.id,
            "subscription",
            Credential::OAuth(oauth("access-1", "refresh-1", 1_000)),
        ))
        .await
        .unwrap();

    store
        .save_oauth_tokens(account.id, &oauth("access-2", "refresh-2", 2_000))
        .await
        .unwrap();
    assert_eq!(
        store.get_credential(account.id).await.unwrap(),
        Some(Credential::OAuth(oauth("access-2", "refresh-2", 2_000)))
    );
    assert!(matches!(
        store.save_oauth_tokens(999, &oauth("x", "y", 1)).await,
        Err(StoreError::NotFound)
    ));
}

on_every_backend!(unreadable_stored_values_are_reported_as_corrupt);
async fn unreadable_stored_values_are_reported_as_corrupt(database: TestDatabase) {
    let (store, _group, account) = store_with_an_account(&database).await;
    let mut raw = database.raw_connection().await;
    sqlx::query("UPDATE relay_accounts SET platform = 'gopher', credential_kind = 'magic'")
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();

    assert!(matches!(
        store.get_account(account.id).await,
        Err(StoreError::Corrupt(message)) if message.contains("gopher")
    ));
    assert!(matches!(
        store.get_credential(account.id).await,
        Err(StoreError::Corrupt(message)) if message.contains("magic")
    ));
}

/// The raw secret columns of every account, in id order.
async fn stored_secrets(database: &TestDatabase) -> Vec<String> {
    let mut raw = database.raw_connection().await;
    let rows = sqlx::query(
        "SELECT credential_api_key, oauth_access_token, oauth_refresh_token \
         FROM relay_accounts ORDER BY id",
    )
    .fetch_all(&mut raw)
    .await
    .unwrap();
    raw.close().await.unwrap();
    rows.iter()
        .flat_map(|row| {
            (0..3).filter_map(move |column| {
                // MySQL's TEXT comes back through the Any driver as bytes.
                sqlx::Row::try_get::<Option<String>, _>(row, column)
                    .or_else(|_| {
                        sqlx::Row::try_get::<Option<Vec<u8>>, _>(row, column)
                            .map(|bytes| bytes.map(|bytes| String::from_utf8(bytes).unwrap()))
                    })
                    .unwrap()
            })
        })
        .collect()
}

const CREDENTIAL_KEY: &str = "8f3c1e0a9b7d6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e";

on_every_backend!(credentials_are_sealed_at_rest_with_a_key);
async fn credentials_are_sealed_at_rest_with_a_key(database: TestDatabase) {
    let key = relay_store::CredentialKey::parse(CREDENTIAL_KEY).unwrap();
    // An account written before the key was set, in plain text.
    let plain_store = database.open_store().await;
    let group = plain_store.create_group(new_group("pool")).await.unwrap();
    let older = plain_store
        .create_account(new_account(
            group.id,
            "older",
            Credential::ApiKey("sk-older".into()),
        ))
        .await
        .unwrap();
    assert_eq!(stored_secrets(&database).await, vec!["sk-older"]);

    let store = database
        .open_store()
        .await
        .with_credential_key(Some(key.clone()));
    // A plain secret still reads, and is sealed once at start.
    assert_eq!(
        store.get_credential(older.id).await.unwrap(),
        Some(Credential::ApiKey("sk-older".into()))
    );
    assert_eq!(store.seal_stored_credentials().await.unwrap(), 1);
    assert_eq!(store.seal_stored_credentials().await.unwrap(), 0);
    let subscription = store
        .create_account(new_account(
            group.id,
            "subscription",
            Credential::OAuth(oauth("access-1", "refresh-1", 1_000)),
        ))
        .await
        .unwrap();
    store
        .save_oauth_tokens(subscription.id, &oauth("access-2", "refresh-2", 2_000))
        .await
        .unwrap();

    // Nothing the database holds shows a secret.
    let stored = stored_secrets(&database).await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    for value in &stored {
        assert!(value.starts_with("enc:v1:"), "{value}");
        for secret in ["sk-older", "access-2", "refresh-2"] {
            assert!(!value.contains(secret), "{value}");
        }
    }
    let with_credentials = store.list_accounts_with_credentials().await.unwrap();
    assert_eq!(
        with_credentials
            .iter()
            .map(|(_, credential)| credential.clone())
            .collect::<Vec<_>>(),
        vec![
            Credential::ApiKey("sk-older".into()),
            Credential::OAuth(oauth("access-2", "refresh-2", 2_000)),
        ]
    );

    // Without the key, or with another one, the relay learns why it cannot read them.
    let keyless = database.open_store().await;
    assert!(matches!(
        keyless.list_accounts_with_credentials().await,
        Err(StoreError::Credentials(message)) if message.contains("RELAY_ENCRYPTION_KEY is not set")
    ));
    let other_key = relay_store::CredentialKey::parse(&CREDENTIAL_KEY.replace('8', "9")).unwrap();
    let wrong = database
        .open_store()
        .await
        .with_credential_key(Some(other_key));
    assert!(matches!(
        wrong.get_credential(older.id).await,
        Err(StoreError::Credentials(message)) if message.contains("does not open")
    ));
    assert!(wrong.seal_stored_credentials().await.is_ok());
}

on_every_backend!(api_keys_can_be_created_found_by_hash_updated_and_deleted);
async fn api_keys_can_be_created_found_by_hash_updated_and_deleted(database: TestDatabase) {
    let store = database.open_store().await;
    let group = store.create_group(new_group("pool")).await.unwrap();
    let other_group = store.create_group(new_group("other")).await.unwrap();

    let key = store
        .create_api_key(new_api_key(group.id, "hash-a"))
        .await
        .unwrap();
    assert_eq!(key.name, "key hash-a");
    assert_eq!(key.key_prefix, "cr_abcd");
    assert_eq!(key.expires_at, Some(1_900_000_000_000));
    assert_eq!(key.model_allowlist, vec!["claude-haiku-4".to_owned()]);
    assert_eq!(key.daily_cost_limit_usd, Some(12.5));
    assert_eq!(key.rpm_limit, Some(60));
    assert_eq!(store.get_api_key(key.id).await.unwrap(), Some(key.clone()));
    assert_eq!(
        store.find_api_key_by_hash("hash-a").await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(store.find_api_key_by_hash("hash-z").await.unwrap(), None);

    let second = store
        .create_api_key(new_api_key(other_group.id, "hash-b"))
        .await
        .unwrap();
    assert_eq!(
        store.list_api_keys(None).await.unwrap(),
        vec![key.clone(), second.clone()]
    );
    assert_eq!(
        store.list_api_keys(Some(group.id)).await.unwrap(),
        vec![key.clone()]
    );

    match store.create_api_key(new_api_key(group.id, "hash-a")).await {
        Err(StoreError::Conflict(message)) => assert!(message.contains("hash"), "{message}"),
        result => panic!("expected Conflict, got {result:?}"),
    }
    assert!(matches!(
        store.create_api_key(new_api_key(4040, "hash-c")).await,
        Err(StoreError::Conflict(_))
    ));

    let updated = store
        .update_api_key(
            key.id,
            ApiKeyUpdate {
                name: Some("renamed".to_owned()),
                enabled: Some(false),
                group_id: Some(other_group.id),
                expires_at: Some(None),
                daily_cost_limit_usd: Some(None),
                rpm_limit: Some(Some(5)),
                model_allowlist: Some(Vec::new()),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.name, "renamed");
    assert!(!updated.enabled);
    assert_eq!(updated.group_id, other_group.id);
    assert_eq!(updated.expires_at, None);
    assert_eq!(updated.daily_cost_limit_usd, None);
    assert_eq!(updated.rpm_limit, Some(5));
    assert!(updated.model_allowlist.is_empty());
    assert_eq!(updated.key_hash, "hash-a", "the hash never changes");

    let untouched = store
        .update_api_key(second.id, ApiKeyUpdate::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(untouched.daily_cost_limit_usd, second.daily_cost_limit_usd);
    assert_eq!(untouched.expires_at, second.expires_at);
    assert!(matches!(
        store
            .update_api_key(
                second.id,
                ApiKeyUpdate {
                    group_id: Some(4040),
                    ..ApiKeyUpdate::default()
                }
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .update_api_key(9_999, ApiKeyUpdate::default())
            .await
            .unwrap(),
        None
    );

    assert!(store.delete_api_key(key.id).await.unwrap());
    assert!(!store.delete_api_key(key.id).await.unwrap());
    assert_eq!(store.find_api_key_by_hash("hash-a").await.unwrap(), None);
}

on_every_backend!(recorded_usage_is_listed_and_counts_only_successes);
async fn recorded_usage_is_listed_and_counts_only_successes(database: TestDatabase) {
    let (store, group, account) = store_with_an_account(&database).await;
    let key = store
        .create_api_key(new_api_key(group.id, "hash"))
        .await
        .unwrap();
    let fresh = store.account_usage_counters(account.id).await.unwrap();
    assert_eq!(fresh.requests, 0);
    assert_eq!(fresh.last_used_at, None);

    let ids = (Some(key.id), Some(group.id), Some(account.id));
    let batch = vec![
        usage_row("r1", "rate_limited", ids.0, ids.1, ids.2, 0, 0.0, 1_000),
        usage_row("r1", "success", ids.0, ids.1, ids.2, 100, 0.25, 2_000),
        usage_row("r2", "success", ids.0, ids.1, ids.2, 50, 0.5, 3_000),
    ];
    store.record_usage(&batch).await.unwrap();
    store.record_usage(&[]).await.unwrap();

    let counters = store.account_usage_counters(account.id).await.unwrap();
    assert_eq!(counters.requests, 2);
    assert_eq!(counters.input_tokens, 150);
    assert_eq!(counters.output_tokens, 300);
    assert_eq!(counters.cost_usd, 0.75);
    assert_eq!(counters.last_used_at, Some(3_000));
    assert_eq!(
        store.api_key_usage_counters(key.id).await.unwrap(),
        counters
    );

    // A later batch with an older success does not move last_used_at back.
    store
        .record_usage(&[usage_row(
            "r0", "success", ids.0, ids.1, ids.2, 1, 0.25, 500,
        )])
        .await
        .unwrap();
    let counters = store.account_usage_counters(account.id).await.unwrap();
    assert_eq!(counters.requests, 3);
    assert_eq!(counters.last_used_at, Some(3_000));

    let (rows, total) = store
        .list_usage(&UsageFilter {
            limit: 10,
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 4);
    assert_eq!(rows[0], batch[2], "every field round-trips");
    assert_eq!(rows[2], batch[0]);

    assert!(matches!(
        store.account_usage_counters(8_888).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.api_key_usage_counters(8_888).await,
        Err(StoreError::NotFound)
    ));
}

on_every_backend!(rows_with_and_without_nulls_round_trip_through_the_same_statement);
/// Batches of the same size use one prepared statement; kept in the statement cache (SQLite,
/// MySQL) or not (PostgreSQL), it takes values, then NULLs, then both, in either order.
async fn rows_with_and_without_nulls_round_trip_through_the_same_statement(database: TestDatabase) {
    let (store, group, account) = store_with_an_account(&database).await;
    let failed = |request_id: &str, created_at: i64| UsageRow {
        status: None,
        ttfb_ms: None,
        ..usage_row(
            request_id,
            "network_error",
            None,
            None,
            None,
            0,
            0.0,
            created_at,
        )
    };
    let served = |request_id: &str, created_at: i64| {
        let ids = (None, Some(group.id), Some(account.id));
        usage_row(
            request_id, "success", ids.0, ids.1, ids.2, 10, 0.5, created_at,
        )
    };
    let batches = [
        vec![served("a", 1), served("b", 2)],
        vec![failed("c", 3), failed("d", 4)],
        vec![served("e", 5), failed("f", 6)],
        vec![failed("g", 7), served("h", 8)],
    ];
    for batch in &batches {
        store.record_usage(batch).await.unwrap();
    }
    let (mut rows, total) = store
        .list_usage(&UsageFilter {
            limit: 10,
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 8);
    rows.reverse();
    assert_eq!(
        rows,
        batches.concat(),
        "every field, NULL or not, round-trips"
    );
}

on_every_backend!(multi_thread: concurrent_usage_writers_never_lose_an_update);
async fn concurrent_usage_writers_never_lose_an_update(database: TestDatabase) {
    const TASKS: u64 = 8;
    const CALLS_PER_TASK: u64 = 50;
    let (store, group, account) = store_with_an_account(&database).await;
    let key = store
        .create_api_key(new_api_key(group.id, "hash"))
        .await
        .unwrap();

    let mut writers = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = store.clone();
        writers.spawn(async move {
            for call in 0..CALLS_PER_TASK {
                // 0.125 is exact in binary, so the expected sum is exact too.
                let row = usage_row(
                    &format!("task-{task}-call-{call}"),
                    "success",
                    Some(key.id),
                    Some(group.id),
                    Some(account.id),
                    3,
                    0.125,
                    1_000 + i64::try_from(call).unwrap_or_default(),
                );
                store.record_usage(&[row]).await?;
            }
            Ok::<(), StoreError>(())
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.unwrap().unwrap();
    }

    let expected_requests = TASKS * CALLS_PER_TASK;
    for counters in [
        store.account_usage_counters(account.id).await.unwrap(),
        store.api_key_usage_counters(key.id).await.unwrap(),
    ] {
        assert_eq!(counters.requests, expected_requests);
        assert_eq!(counters.input_tokens, 3 * expected_requests);
        assert_eq!(counters.output_tokens, 6 * expected_requests);
        assert_eq!(counters.cost_usd, 50.0);
        assert_eq!(counters.last_used_at, Some(1_049));
    }
    let totals = store.usage_totals(&UsageFilter::default()).await.unwrap();
    assert_eq!(totals.requests, expected_requests);
    assert_eq!(totals.cost_usd, 50.0);
}

on_every_backend!(a_batch_of_many_statements_is_written_whole_and_in_order);
/// 1,037 rows: full statements of every dialect's size, then each smaller power of two.
/// Every row comes back with its own values, and the counters see each success once.
async fn a_batch_of_many_statements_is_written_whole_and_in_order(database: TestDatabase) {
    let (store, group, account) = store_with_an_account(&database).await;
    const ROWS: u64 = 1_037;
    let rows: Vec<UsageRow> = (0..ROWS)
        .map(|index| {
            let created_at = 10_000 + i64::try_from(index).unwrap();
            let mut row = usage_row(
                &format!("batch-{index}"),
                if index % 3 == 0 {
                    "overloaded"
                } else {
                    "success"
                },
                None,
                Some(group.id),
                Some(account.id),
                index,
                0.5,
                created_at,
            );
            row.attempt = u32::try_from(index % 4).unwrap() + 1;
            row.status = (index % 5 != 0).then_some(200);
            row.ttfb_ms = (index % 7 != 0).then_some(index);
            row
        })
        .collect();
    store.record_usage(&rows).await.unwrap();

    let (page, total) = store
        .list_usage(&UsageFilter {
            limit: 2_000,
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(total, ROWS);
    let newest_first: Vec<UsageRow> = rows.iter().rev().cloned().collect();
    assert_eq!(page, newest_first);

    let successes = rows.iter().filter(|row| row.class == "success");
    let counters = store.account_usage_counters(account.id).await.unwrap();
    assert_eq!(
        counters.requests,
        u64::try_from(successes.clone().count()).unwrap()
    );
    assert_eq!(
        counters.input_tokens,
        successes.map(|row| row.input_tokens).sum::<u64>()
    );
    assert_eq!(counters.last_used_at, Some(10_000 + 1_036));
}

on_every_backend!(usage_lists_filter_page_and_order_newest_first);
async fn usage_lists_filter_page_and_order_newest_first(database: TestDatabase) {
    let store = database.open_store().await;
    // Usage rows keep ids of accounts and keys without needing them to exist.
    let rows = vec![
        usage_row("a", "success", Some(1), Some(10), Some(100), 1, 0.0, 1_000),
        usage_row(
            "b",
            "overloaded",
            Some(1),
            Some(10),
            Some(101),
            1,
            0.0,
            2_000,
        ),
        usage_row("c", "success", Some(2), Some(10), Some(100), 1, 0.0, 3_000),
        usage_row("d", "success", Some(2), Some(20), Some(102), 1, 0.0, 3_000),
        usage_row("e", "success", None, Some(20), None, 1, 0.0, 4_000),
    ];
    store.record_usage(&rows).await.unwrap();
    let request_ids = |page: &[UsageRow]| -> Vec<String> {
        page.iter().map(|row| row.request_id.to_string()).collect()
    };
    let everything = UsageFilter {
        limit: 100,
        ..UsageFilter::default()
    };

    let (page, total) = store.list_usage(&everything).await.unwrap();
    assert_eq!(total, 5);
    // Equal created_at: the row inserted later comes first.
    assert_eq!(request_ids(&page), ["e", "d", "c", "b", "a"]);

    let (page, total) = store
        .list_usage(&UsageFilter {
            limit: 2,
            offset: 1,
            ..everything.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        (request_ids(&page), total),
        (vec!["d".into(), "c".into()], 5)
    );

    let (page, total) = store
        .list_usage(&UsageFilter {
            api_key_id: Some(1),
            ..everything.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        (request_ids(&page), total),
        (vec!["b".into(), "a".into()], 2)
    );

    let (page, _) = store
        .list_usage(&UsageFilter {
            group_id: Some(20),
            ..everything.clone()
        })
        .await
        .unwrap();
    assert_eq!(request_ids(&page), ["e", "d"]);

    let (page, _) = store
        .list_usage(&UsageFilter {
            account_id: Some(100),
            group_id: Some(10),
            ..everything.clone()
        })
        .await
        .unwrap();
    assert_eq!(request_ids(&page), ["c", "a"]);

    let (page, total) = store
        .list_usage(&UsageFilter {
            since: Some(3_000),
            ..everything.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        (request_ids(&page), total),
        (vec!["e".into(), "d".into(), "c".into()], 3)
    );

    let (page, total) = store
        .list_usage(&UsageFilter {
            limit: 0,
            ..everything.clone()
        })
        .await
        .unwrap();
    assert!(page.is_empty());
    assert_eq!(total, 5);

    let (page, total) = store
        .list_usage(&UsageFilter {
            offset: 10,
            ..everything
        })
        .await
        .unwrap();
    assert!(page.is_empty());
    assert_eq!(total, 5);
}

on_every_backend!(usage_totals_count_successes_and_cost_since_counts_all_spend);
async fn usage_totals_count_successes_and_cost_since_counts_all_spend(database: TestDatabase) {
    let store = database.open_store().await;
    let empty = store.usage_totals(&UsageFilter::default()).await.unwrap();
    assert_eq!(empty, UsageTotals::default());
    assert_eq!(store.api_key_cost_since(1, 0).await.unwrap(), 0.0);

    store
        .record_usage(&[
            usage_row("a", "success", Some(1), Some(10), Some(100), 10, 0.5, 1_000),
            usage_row(
                "b",
                "stream_interrupted",
                Some(1),
                Some(10),
                Some(100),
                7,
                0.25,
                2_000,
            ),
            usage_row("c", "success", Some(1), Some(10), Some(101), 20, 1.0, 3_000),
            usage_row("d", "success", Some(2), Some(10), Some(100), 40, 2.0, 4_000),
        ])
        .await
        .unwrap();

    let totals = store.usage_totals(&UsageFilter::default()).await.unwrap();
    assert_eq!(
        totals,
        UsageTotals {
            requests: 3,
            input_tokens: 70,
            output_tokens: 140,
            cache_read_input_tokens: 9,
            cache_creation_input_tokens: 12,
            cost_usd: 3.5,
        }
    );
    let for_key = store
        .usage_totals(&UsageFilter {
            api_key_id: Some(1),
            limit: 1,
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (for_key.requests, for_key.input_tokens),
        (2, 30),
        "limit is ignored"
    );
    let for_account_since = store
        .usage_totals(&UsageFilter {
            account_id: Some(100),
            since: Some(2_000),
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (for_account_since.requests, for_account_since.cost_usd),
        (1, 2.0)
    );

    assert_eq!(store.api_key_cost_since(1, 0).await.unwrap(), 1.75);
    assert_eq!(store.api_key_cost_since(1, 2_000).await.unwrap(), 1.25);
    assert_eq!(store.api_key_cost_since(1, 5_000).await.unwrap(), 0.0);
    assert_eq!(store.api_key_cost_since(2, 0).await.unwrap(), 2.0);
}

on_every_backend!(text_beyond_the_basic_plane_round_trips);
async fn text_beyond_the_basic_plane_round_trips(database: TestDatabase) {
    // Four-byte UTF-8 (emoji) is what MySQL's three-byte `utf8` would mangle or refuse.
    let store = database.open_store().await;
    let group = store
        .create_group(NewGroup {
            name: "团队 🚀".to_owned(),
            fallback: json!({"note": "主账号 ✅"}),
        })
        .await
        .unwrap();
    let account = store
        .create_account(NewAccount {
            model_mapping: BTreeMap::from([("模型 😀".to_owned(), "目标".to_owned())]),
            ..new_account(group.id, "账号 🧪", Credential::ApiKey("密钥 🔑".into()))
        })
        .await
        .unwrap();
    store.put_setting("日志 📜", "值 🌙").await.unwrap();

    assert_eq!(store.get_group(group.id).await.unwrap(), Some(group));
    assert_eq!(
        store.get_account(account.id).await.unwrap(),
        Some(account.clone())
    );
    assert_eq!(
        store.get_credential(account.id).await.unwrap(),
        Some(Credential::ApiKey("密钥 🔑".into()))
    );
    assert_eq!(
        store.get_setting("日志 📜").await.unwrap().as_deref(),
        Some("值 🌙")
    );
}

on_every_backend!(settings_are_inserted_then_replaced);
async fn settings_are_inserted_then_replaced(database: TestDatabase) {
    let store = database.open_store().await;
    assert_eq!(store.get_setting("fallback_config").await.unwrap(), None);
    store
        .put_setting("fallback_config", r#"{"max_retries":3}"#)
        .await
        .unwrap();
    store.put_setting("admin_token_hash", "abc").await.unwrap();
    store
        .put_setting("fallback_config", r#"{"max_retries":5}"#)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_setting("fallback_config")
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"max_retries":5}"#)
    );
    assert_eq!(
        store
            .get_setting("admin_token_hash")
            .await
            .unwrap()
            .as_deref(),
        Some("abc")
    );
    store.close().await;
    let reopened = database.open_store().await;
    assert_eq!(
        reopened
            .get_setting("fallback_config")
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"max_retries":5}"#)
    );
}

#[test]
fn database_urls_resolve_to_sqlite_files_or_servers() {
    let base = Path::new("/srv/relay");
    let file = |url: Option<&str>| -> Option<PathBuf> {
        DatabaseLocation::parse(url).unwrap().sqlite_file_path(base)
    };
    assert_eq!(DEFAULT_SQLITE_PATH, "./data/relay.db");
    assert_eq!(file(None), Some(base.join("./data/relay.db")));
    assert_eq!(file(Some("")), Some(base.join("./data/relay.db")));
    assert_eq!(
        file(Some("sqlite://state/relay.db")),
        Some(base.join("state/relay.db"))
    );
    assert_eq!(
        file(Some("sqlite:state/relay.db")),
        Some(base.join("state/relay.db"))
    );
    assert_eq!(
        file(Some("sqlite://../shared/relay.db")),
        Some(base.join("../shared/relay.db"))
    );
    assert_eq!(
        file(Some("sqlite:///var/lib/relay.db")),
        Some(PathBuf::from("/var/lib/relay.db"))
    );
    assert_eq!(
        file(Some("sqlite:/var/lib/relay.db")),
        Some(PathBuf::from("/var/lib/relay.db"))
    );

    let server = DatabaseLocation::parse(Some("postgres://relay:hunter2@127.0.0.1/relay")).unwrap();
    assert_eq!(server.dialect(), Dialect::Postgres);
    assert_eq!(server.sqlite_file_path(base), None);
    let shown = format!("{server:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(
        DatabaseLocation::parse(Some("mysql://relay:pw@127.0.0.1/relay"))
            .unwrap()
            .dialect(),
        Dialect::MySql
    );

    for invalid in [
        "sqlite://",
        "sqlite:",
        "sqlite://x.db?mode=ro",
        "sqlite::memory:",
        "ftp://x",
        "relay.db",
    ] {
        assert!(
            matches!(
                DatabaseLocation::parse(Some(invalid)),
                Err(StoreError::InvalidUrl(_))
            ),
            "{invalid} should be refused"
        );
    }
}

#[tokio::test]
async fn the_default_and_relative_sqlite_paths_are_created_under_the_base_directory() {
    let directory = TempDirectory::new("paths");

    let default_store = SqlStore::connect_relative_to(None, &directory.path)
        .await
        .unwrap();
    default_store
        .create_group(new_group("default"))
        .await
        .unwrap();
    default_store.close().await;
    assert!(directory.path.join("data").join("relay.db").is_file());

    let relative_store =
        SqlStore::connect_relative_to(Some("sqlite://nested/deeper/relay.db"), &directory.path)
            .await
            .unwrap();
    assert!(
        relative_store.list_groups().await.unwrap().is_empty(),
        "a new file"
    );
    relative_store.close().await;
    assert!(directory.path.join("nested/deeper/relay.db").is_file());

    let odd_name = directory.path.join("odd dir #1").join("a%b.db");
    let absolute_store = SqlStore::connect_relative_to(
        Some(&format!("sqlite:{}", odd_name.display())),
        Path::new("/"),
    )
    .await
    .unwrap();
    absolute_store.close().await;
    assert!(odd_name.is_file(), "{} was not created", odd_name.display());

    let reopened_default =
        SqlStore::connect_relative_to(Some("sqlite:data/relay.db"), &directory.path)
            .await
            .unwrap();
    assert_eq!(reopened_default.list_groups().await.unwrap().len(), 1);
    reopened_default.close().await;
}
