//! The pgbench rows: how fast Postgres itself writes the rows of a registration on this
//! machine, with the durability the registry gets, so that the registry's durable
//! registrations can be read as a share of what the database allows.
//!
//! The rows are the ones a real registration wrote: the bench registers one instance
//! through the registry (the body wrk's registrations send), reads back its `instances`
//! row and its `events` row, and pgbench inserts copies of them (new keys, the same
//! values, so the same JSON sizes) into the same tables, with their indexes and the
//! events' NOTIFY trigger. The database is a fresh one migrated by the registry itself,
//! on the server the registry uses, so `fsync` and `synchronous_commit` are the server's.
//! Each transaction inserts its registrations with one statement per table, as the
//! registry writes a group; the single row of `registry_meta` (one index increment per
//! group, not per registration) is left out, so several clients never wait on each other.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde::Serialize;
use serde_json::Value;
use sqlx::Connection;
use tokio::process::Command;

use crate::registry::{Backend, Database, Registry, unique_suffix};
use crate::{Plan, RegistryFigures, Report, load, scenarios};

/// The registration whose rows are copied: wrk's first (`registration_body(1)`).
const TEMPLATE_REGISTRATION: u64 = 1;

/// Clients of the batched run the registry is compared with: as many as it has groups in
/// flight on Postgres, one.
const COMPARED_CLIENTS: usize = 1;

/// Measures pgbench unbatched (one registration per transaction, one client) and
/// batched (`pgbench_batch` per transaction, with one client and with two), and adds
/// their rows and the registry's share of the batched figure with [`COMPARED_CLIENTS`].
pub async fn report_rows(
    plan: &Plan,
    admin_url: &str,
    http: &reqwest::Client,
    figures: &RegistryFigures,
    report: &mut Report,
) -> anyhow::Result<()> {
    let ratio_label = format!(
        "postgres: registrations / pgbench {} per transaction, {}",
        plan.pgbench_batch,
        clients(COMPARED_CLIENTS)
    );
    let Some(pgbench) = binary() else {
        report.not_measured(
            ratio_label,
            ">= 0.3",
            "pgbench not found (it comes with Postgres's own binaries: pg_config --bindir)",
        );
        return Ok(());
    };
    let database = Database::fresh(Backend::Postgres, admin_url).await?;
    let outcome = measure(plan, &pgbench, &database, http).await;
    database.drop_now().await?;
    let runs = outcome?;
    for run in &runs {
        report.add(
            format!(
                "pgbench: registrations/s, {} per transaction, {}",
                run.batch,
                clients(run.clients)
            ),
            format!(
                "{:.0}/s ({:.0} transactions/s, latency avg {:.2} ms)",
                run.registrations_per_second, run.transactions_per_second, run.latency_avg_ms
            ),
            "",
            (run.failed > 0).then_some(false),
            serde_json::to_value(run)?,
        );
    }
    let batched = runs
        .iter()
        .find(|run| run.batch == plan.pgbench_batch && run.clients == COMPARED_CLIENTS)
        .context("no batched pgbench run")?;
    report.ratio(
        ratio_label,
        figures.registrations_per_second,
        batched.registrations_per_second,
        Some(0.3),
    );
    Ok(())
}

/// "1 client", "2 clients".
fn clients(count: usize) -> String {
    format!("{count} client{}", if count == 1 { "" } else { "s" })
}

/// What one pgbench run measured.
#[derive(Debug, Clone, Serialize)]
struct PgbenchRun {
    /// Registrations (an `instances` row and an `events` row) per transaction.
    batch: usize,
    clients: usize,
    transactions: u64,
    failed: u64,
    transactions_per_second: f64,
    registrations_per_second: f64,
    latency_avg_ms: f64,
}

/// Migrates the database (by starting the registry on it), takes one registration's
/// rows, and runs pgbench in its three forms.
async fn measure(
    plan: &Plan,
    pgbench: &Path,
    database: &Database,
    http: &reqwest::Client,
) -> anyhow::Result<Vec<PgbenchRun>> {
    let registry = Registry::start(&database.url, &[]).await?;
    let registered = register_template(http, &registry).await;
    // Stopped before pgbench: a running registry would follow the events pgbench adds
    // (their NOTIFY) and take CPU from it.
    registry.stop().await?;
    let (service, id) = registered?;
    let template = Template::read(&database.url, &service, &id).await?;
    let duration = Duration::from_secs(plan.load_seconds);
    // Two clients: what Postgres writes with a second connection, which the registry,
    // one group at a time, does not use.
    let forms = [
        (1, 1),
        (plan.pgbench_batch, COMPARED_CLIENTS),
        (plan.pgbench_batch, 2),
    ];
    let mut runs = Vec::new();
    for (form, (batch, clients)) in forms.into_iter().enumerate() {
        scenarios::phase(&format!(
            "pgbench: {batch} registration(s) per transaction, {clients} client(s), {} s",
            duration.as_secs()
        ));
        let run = run(
            pgbench,
            &database.url,
            &template.script(form, batch),
            batch,
            clients,
            duration,
        )
        .await?;
        eprintln!("    {:.0} registrations/s", run.registrations_per_second);
        runs.push(run);
    }
    check_copies(&database.url, &service, &id).await?;
    Ok(runs)
}

/// Registers wrk's first registration; answers its service and id.
async fn register_template(
    http: &reqwest::Client,
    registry: &Registry,
) -> anyhow::Result<(String, String)> {
    let (service, id) = load::registration_key(TEMPLATE_REGISTRATION);
    let response = http
        .put(registry.url(&format!("/v1/services/{service}/instances/{id}")))
        .header("content-type", "application/json")
        .body(load::registration_body(TEMPLATE_REGISTRATION))
        .send()
        .await?;
    let status = response.status();
    ensure!(status.is_success(), "registration answered {status}");
    Ok((service, id))
}

/// Checks that the first registration pgbench wrote (`p-0-0-0`) holds the
/// template's values in every column but its keys.
async fn check_copies(database_url: &str, service: &str, id: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let same: Option<bool> = sqlx::query_scalar(
        "SELECT (SELECT to_jsonb(i) - 'service' - 'id' FROM instances i \
                 WHERE service = $1 AND id = $2) \
              = (SELECT to_jsonb(i) - 'service' - 'id' FROM instances i \
                 WHERE service = 'reg-0' AND id = 'p-0-0-0') \
            AND (SELECT to_jsonb(e) - 'idx' - 'service' - 'instance' FROM events e \
                 WHERE service = $1 AND instance = $2 ORDER BY idx DESC LIMIT 1) \
              = (SELECT to_jsonb(e) - 'idx' - 'service' - 'instance' FROM events e \
                 WHERE service = 'reg-0' AND instance = 'p-0-0-0')",
    )
    .bind(service)
    .bind(id)
    .fetch_one(&mut conn)
    .await?;
    ensure!(
        same == Some(true),
        "pgbench's rows differ from the registration's they copy"
    );
    Ok(())
}

/// The rows one registration wrote, each column as an SQL literal of its type.
struct Template {
    instance: Vec<(String, String)>,
    event: Vec<(String, String)>,
}

impl Template {
    async fn read(database_url: &str, service: &str, id: &str) -> anyhow::Result<Self> {
        let mut conn = sqlx::PgConnection::connect(database_url).await?;
        let instance: Value = sqlx::query_scalar(
            "SELECT to_jsonb(i) FROM instances i WHERE service = $1 AND id = $2",
        )
        .bind(service)
        .bind(id)
        .fetch_optional(&mut conn)
        .await?
        .context("the registration wrote no instances row")?;
        let event: Value = sqlx::query_scalar(
            "SELECT to_jsonb(e) FROM events e WHERE service = $1 AND instance = $2 \
             ORDER BY idx DESC LIMIT 1",
        )
        .bind(service)
        .bind(id)
        .fetch_optional(&mut conn)
        .await?
        .context("the registration wrote no events row")?;
        Ok(Self {
            instance: literals(&mut conn, "instances", &instance).await?,
            event: literals(&mut conn, "events", &event).await?,
        })
    }

    /// A pgbench script of one transaction: `batch` new registrations, one INSERT per
    /// table. `:n` counts each client's transactions (`-D n=0`), so keys never repeat
    /// within the run `form` nor across runs: instance `p-<form>-<client>-<k>` of service
    /// `reg-<k % 100>`, event index `(form * 1000 + client + 1) * 10^12 + k` (clear of
    /// the template's).
    fn script(&self, form: usize, batch: usize) -> String {
        let id = format!("'p-{form}-' || :client_id || '-' || k");
        let idx = format!("({form} * 1000 + :client_id::bigint + 1) * 1000000000000 + k");
        let instance = insert(
            "instances",
            &self.instance,
            &[("service", "'reg-' || (k % 100)"), ("id", &id)],
            batch,
        );
        let event = insert(
            "events",
            &self.event,
            &[
                ("idx", &idx),
                ("service", "'reg-' || (k % 100)"),
                ("instance", &id),
            ],
            batch,
        );
        format!("\\set first :n * {batch}\n\\set n :n + 1\nBEGIN;\n{instance};\n{event};\nEND;\n")
    }
}

/// `INSERT INTO table (...) SELECT ... FROM generate_series(...) AS k`: the template's
/// values, with the `keys` columns computed from `k`.
fn insert(table: &str, row: &[(String, String)], keys: &[(&str, &str)], batch: usize) -> String {
    let columns: Vec<&str> = row.iter().map(|(column, _)| column.as_str()).collect();
    let values: Vec<&str> = row
        .iter()
        .map(|(column, literal)| {
            keys.iter()
                .find(|(key, _)| key == column)
                .map_or(literal.as_str(), |(_, expression)| expression)
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM generate_series(:first::bigint, :first::bigint + {}) AS k",
        columns.join(", "),
        values.join(", "),
        batch - 1
    )
}

/// Each column of `table` in `row` (a `to_jsonb` of it) as an SQL literal cast to the
/// column's type, in the table's column order; generated columns, which Postgres
/// computes, are left out.
async fn literals(
    conn: &mut sqlx::PgConnection,
    table: &str,
    row: &Value,
) -> anyhow::Result<Vec<(String, String)>> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 AND is_generated = 'NEVER' \
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    ensure!(!columns.is_empty(), "no table {table}");
    columns
        .into_iter()
        .map(|(column, data_type)| {
            let value = row
                .get(&column)
                .with_context(|| format!("{table}.{column} missing from its row"))?;
            let literal = match value {
                Value::Null => format!("NULL::{data_type}"),
                Value::String(text) => quoted(text, &data_type),
                other => quoted(&other.to_string(), &data_type),
            };
            Ok((column, literal))
        })
        .collect()
}

/// `text` as an escape string literal cast to `data_type`. pgbench takes every `:name` of
/// a script for a variable, even in a literal, so colons (JSON has them) are written as
/// the escape `\x3a`.
fn quoted(text: &str, data_type: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('\'', "\\'")
        .replace(':', "\\x3a");
    format!("E'{escaped}'::{data_type}")
}

/// Runs pgbench with `script` on `clients` connections, one thread (as wrk), prepared
/// statements (as the registry's sqlx), for `duration`.
async fn run(
    pgbench: &Path,
    database_url: &str,
    script: &str,
    batch: usize,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<PgbenchRun> {
    let path = std::env::temp_dir().join(format!("registry-bench-pgbench-{}.sql", unique_suffix()));
    std::fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    let output = Command::new(pgbench)
        .args(["-n", "-M", "prepared", "-j", "1", "-D", "n=0"])
        .arg(format!("-c{clients}"))
        .arg(format!("-T{}", duration.as_secs().max(1)))
        .arg("-f")
        .arg(&path)
        .arg(database_url)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", pgbench.display()));
    let _ = std::fs::remove_file(&path);
    let output = output?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "pgbench failed ({}): {}{}",
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |prefix: &str| -> anyhow::Result<f64> {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .with_context(|| format!("no '{prefix}' in pgbench's output: {stdout}"))
    };
    let transactions = field("number of transactions actually processed:")? as u64;
    // Older pgbench does not print it (it stops at the first error instead).
    let failed = field("number of failed transactions:").unwrap_or(0.0) as u64;
    let transactions_per_second = field("tps =")?;
    ensure!(
        transactions > 0,
        "pgbench committed no transaction: {stdout}"
    );
    Ok(PgbenchRun {
        batch,
        clients,
        transactions,
        failed,
        transactions_per_second,
        registrations_per_second: transactions_per_second * batch as f64,
        latency_avg_ms: field("latency average =")?,
    })
}

/// Postgres's own pgbench: in `pg_config --bindir`, else in the newest of Debian's
/// `/usr/lib/postgresql/<version>/bin` (the version scripts/ensure-postgres.sh starts),
/// else on `PATH`.
fn binary() -> Option<PathBuf> {
    let bindir = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(|dir| {
                let dir = dir.ok()?;
                let version: u32 = dir.file_name().to_str()?.parse().ok()?;
                Some((version, dir.path().join("bin")))
            })
            .max_by_key(|(version, _)| *version)
            .map(|(_, bin)| bin)
        });
    bindir
        .into_iter()
        .chain(debian)
        .map(|dir| dir.join("pgbench"))
        .find(|path| path.is_file())
        .or_else(|| crate::dns::find_program("pgbench"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_keep_quotes_backslashes_and_colons_from_pgbench() {
        assert_eq!(
            quoted(r#"{"a":"it's \"x\""}"#, "jsonb"),
            r#"E'{"a"\x3a"it\'s \\"x\\""}'::jsonb"#
        );
    }

    #[test]
    fn insert_computes_the_keys_and_copies_the_rest() {
        let row = [
            ("service".to_owned(), "E'reg-1'::text".to_owned()),
            ("record".to_owned(), "E'{}'::jsonb".to_owned()),
        ];
        assert_eq!(
            insert("instances", &row, &[("service", "'s-' || k")], 32),
            "INSERT INTO instances (service, record) SELECT 's-' || k, E'{}'::jsonb \
             FROM generate_series(:first::bigint, :first::bigint + 31) AS k"
        );
    }
}
