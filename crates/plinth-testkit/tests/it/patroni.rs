//! The Patroni cluster harness against the real programs (Debian's patroni, etcd-server and
//! PostgreSQL): three nodes in synchronous mode (a commit waits for the synchronous standby),
//! the primary killed with SIGKILL while a writer commits, a replica promoted with every
//! committed row, the killed node back as a replica.
//! Needs root (PostgreSQL runs as the `postgres` user) and the packages in ../PACKAGES.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use plinth_testkit::patroni::Cluster;
use sqlx::{Connection, PgConnection};

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A blocking harness call inside the multi-threaded runtime.
fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Live processes whose command line names `dir`.
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

async fn insert(conn: &mut PgConnection, id: i32) -> Result<(), sqlx::Error> {
    sqlx::query("insert into committed (id) values ($1)")
        .bind(id)
        .execute(conn)
        .await
        .map(|_| ())
}

async fn ids(url: &str) -> BTreeSet<i32> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("select id from committed")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_without_losing_a_committed_row() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_killed_primary_fails_over_without_losing_a_committed_row: needs root \
             (PostgreSQL runs as the postgres user); the test command runs as root"
        );
        return;
    }
    let t = Instant::now();
    let cluster = block(|| Cluster::start(3)).unwrap();
    let start_time = t.elapsed();
    let dir = cluster.dir().to_owned();
    let urls = cluster.node_urls();
    let old = cluster.primary().expect("a primary after start");

    // The primary waits for a synchronous standby before a commit returns.
    let mut conn = PgConnection::connect(&urls[old]).await.unwrap();
    let standby: String = sqlx::query_scalar("show synchronous_standby_names")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        standby.starts_with("node"),
        "synchronous_standby_names is {standby:?}"
    );
    let commit: String = sqlx::query_scalar("show synchronous_commit")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(commit, "on");

    sqlx::query("create table committed (id int primary key)")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut committed = BTreeSet::new();
    for id in 0..1000 {
        insert(&mut conn, id).await.unwrap();
        committed.insert(id);
    }

    // A commit waits for the synchronous standby: with it frozen, none returns; thawed, the
    // waiting one does.
    let standby = cluster.sync_standby().expect("a synchronous standby");
    assert_ne!(standby, old);
    let mut other = PgConnection::connect(&urls[old]).await.unwrap();
    block(|| cluster.freeze_node(standby));
    let waiting = tokio::spawn(async move { insert(&mut other, -2).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let returned = waiting.is_finished();
    block(|| cluster.thaw_node(standby));
    assert!(
        !returned,
        "a commit returned while the synchronous standby was frozen"
    );
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the commit returns once the synchronous standby is back")
        .unwrap()
        .unwrap();
    committed.insert(-2);

    // A writer goes on committing, one row a transaction, until the primary dies under it:
    // every insert it saw commit must be on the new primary.
    let writer = tokio::spawn(async move {
        let mut acked = vec![];
        for id in 1000.. {
            if insert(&mut conn, id).await.is_err() {
                break;
            }
            acked.push(id);
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    let killed = block(|| cluster.kill_primary()).unwrap();
    assert_eq!(killed, old, "the primary changed before the kill");
    let acked = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the writer noticed its primary died")
        .unwrap();
    assert!(
        !acked.is_empty(),
        "the writer committed nothing before the kill"
    );
    committed.extend(acked.iter().copied());

    let new = block(|| cluster.wait_for_primary(old, Duration::from_secs(60))).unwrap();
    let failover = killed_at.elapsed();
    assert_ne!(new, old);
    println!(
        "patroni harness: start(3) took {start_time:.1?}; kill -> {} accepts a write took \
         {failover:.1?} ({} rows committed during the last {} ms before the kill)",
        urls[new],
        acked.len(),
        300
    );

    let present = ids(&urls[new]).await;
    let lost: Vec<&i32> = committed.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "the new primary lacks {} committed rows: {lost:?}\n{}",
        lost.len(),
        cluster.log_tails()
    );
    assert!(
        present
            .iter()
            .all(|id| (-2..1000 + acked.len() as i32 + 1).contains(id)),
        "rows nobody wrote"
    );

    // The new primary takes writes, and the dead one answers no more.
    let mut conn = PgConnection::connect(&urls[new]).await.unwrap();
    insert(&mut conn, -1).await.unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&urls[old]))
        .await
        .expect("connecting to the killed node fails at once");
    assert!(dead.is_err(), "the killed node {old} still answers");

    // libpq's multi-host URL finds the new primary.
    let out = std::process::Command::new(plinth_testkit::pg_tool("psql").unwrap())
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "select inet_server_port()",
            &cluster.url(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {}: {}",
        cluster.url(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cluster.pg_port(new).to_string()
    );

    // The killed node comes back as a replica of the new primary, with every row.
    let t = Instant::now();
    block(|| cluster.restart_node(old, Duration::from_secs(90))).unwrap();
    println!(
        "patroni harness: node {old} back as a replica in {:.1?}",
        t.elapsed()
    );
    let mut expected = present.clone();
    expected.insert(-1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let back = ids(&urls[old]).await;
        if back == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rejoined node has {} rows, the primary {}",
            back.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(cluster);
    assert_eq!(processes_mentioning(&dir), Vec::<String>::new());
    assert!(!dir.exists(), "{} left behind", dir.display());
}
