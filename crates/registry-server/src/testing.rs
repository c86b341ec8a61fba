//! Helpers for tests (of this crate and of the end-to-end suite): a fresh database per
//! test, found through `DATABASE_URL` first. Databases are named after the test process,
//! and the first call of a process removes those left by processes that have ended, so
//! test runs do not pile up databases.

use std::path::Path;

use sqlx::Connection;

const PREFIX_POSTGRES: &str = "registry_test_";
const PREFIX_SQLITE: &str = "registry-test-";

/// Whether the test process that made a leftover (its pid is in the name) has ended.
/// Without `/proc` nothing is known, so nothing is removed.
fn made_by_ended_process(name: &str, prefix: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split(['_', '-']).next())
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return false;
    };
    Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
}

async fn drop_leftover_databases(conn: &mut sqlx::PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'registry_test_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for name in names {
        let safe = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if safe && made_by_ended_process(&name, PREFIX_POSTGRES) {
            // The name was checked to hold only [a-z0-9_] just above.
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut *conn)
                .await;
        }
    }
}

fn remove_leftover_sqlite_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if made_by_ended_process(&name, PREFIX_SQLITE) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The Postgres server tests use: `DATABASE_URL`, else the local default.
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| url.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Creates an empty database with a unique name and answers its URL.
///
/// # Panics
/// When Postgres cannot be reached: tests need it.
#[allow(clippy::expect_used)]
pub async fn fresh_postgres_database() -> String {
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("tests need Postgres: set DATABASE_URL or start one on 127.0.0.1:5432");
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| drop_leftover_databases(&mut conn))
        .await;
    let name = format!(
        "{PREFIX_POSTGRES}{}_{}",
        std::process::id(),
        rand::random::<u64>()
    );
    // The name is made of digits and a fixed prefix above.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin).expect("DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}

/// A fresh SQLite database file in a new temporary folder (removed by a later test
/// process, once this one has ended).
pub fn fresh_sqlite_url() -> String {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(remove_leftover_sqlite_dirs);
    let dir = std::env::temp_dir().join(format!(
        "{PREFIX_SQLITE}{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let _ = std::fs::create_dir_all(&dir);
    format!("sqlite://{}", dir.join("registry.db").display())
}

/// An empty store in memory, migrated: for tests that need a store but not its file.
pub async fn memory_store() -> crate::store::SqliteStore {
    let store = crate::store::SqliteStore::connect("sqlite::memory:")
        .await
        .expect("store");
    crate::store::Store::migrate(&store).await.expect("migrate");
    store
}

/// Registers instance `id` of service `sum` (at `http://10.0.0.1:4040`, a 10 s lease)
/// straight in `store`, as another replica would: no view hears of it.
pub async fn register_in(store: &dyn crate::store::Store, id: &str) -> crate::store::Applied {
    register_at(store, "sum", id, "http://10.0.0.1:4040").await
}

/// Registers instance `id` of `service` at `url` (a 10 s lease) straight in `store`, as
/// another replica would: no view hears of it.
pub async fn register_at(
    store: &dyn crate::store::Store,
    service: &str,
    id: &str,
    url: &str,
) -> crate::store::Applied {
    let service = registry_api::ServiceName::parse(service).expect("name");
    let id = registry_api::InstanceId::parse(id).expect("id");
    let spec = registry_api::InstanceSpec::new(url)
        .validate(service.clone(), id.clone(), 10)
        .expect("valid");
    let now = crate::clock::Clock::default().now();
    store
        .apply(
            &service,
            &id,
            now,
            crate::store::Expect::Anything,
            Box::new(move |old| crate::lifecycle::register(old, &spec, now)),
        )
        .await
        .expect("apply")
}
