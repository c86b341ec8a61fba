//! Helpers for tests (of this crate and of the end-to-end suite): a fresh database per
//! test, found through `DATABASE_URL` first.

use sqlx::Connection;

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
    let name = format!(
        "registry_test_{}_{}",
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

/// A fresh SQLite database file in a new temporary folder (kept until the process ends).
pub fn fresh_sqlite_url() -> String {
    let dir = std::env::temp_dir().join(format!(
        "registry-test-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let _ = std::fs::create_dir_all(&dir);
    format!("sqlite://{}", dir.join("registry.db").display())
}
