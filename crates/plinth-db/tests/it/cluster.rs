//! A database that moves: given a Patroni cluster's multi-host URL, plinth's pool lands on the
//! primary, refuses a standby, and follows a failover by itself (no restart): writes resume on
//! the new primary with every acknowledged one kept, and LISTEN subscribes again there.
//! Real programs: plinth-testkit's Patroni cluster (etcd, three PostgreSQL nodes, synchronous
//! mode). Needs root, as the test command runs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use plinth_testkit::patroni::Cluster;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn port_of(pool: &plinth_db::PgPool) -> Result<u16, sqlx::Error> {
    let p: i32 = sqlx::query_scalar("select inet_server_port()")
        .fetch_one(pool)
        .await?;
    Ok(p as u16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_lands_on_the_primary_and_follows_a_failover() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (PostgreSQL runs as the postgres user)");
        return;
    }
    let cluster = block(|| Cluster::start(3)).unwrap();
    let old = cluster.primary().unwrap();

    // A standby alone is refused, naming the host, and soon.
    let standby = (0..3).find(|i| *i != old).unwrap();
    let standby_url = format!(
        "{}?target_session_attrs=read-write",
        cluster.node_urls()[standby]
    );
    let started = Instant::now();
    let e = plinth_db::cluster::connect_targets_within(
        plinth_db::cluster::Targets::parse(&[&standby_url]).unwrap(),
        2,
        Duration::from_secs(2),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!(
            "no primary among the database hosts 127.0.0.1:{}",
            cluster.pg_port(standby)
        )),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // The multi-host URL: whichever node is first in it, the pool is on the primary.
    let pool = plinth_db::connect(&cluster.url(), 4).await.unwrap();
    assert_eq!(port_of(&pool).await.unwrap(), cluster.pg_port(old));
    sqlx::query("create table acked (n int primary key)")
        .execute(&pool)
        .await
        .unwrap();
    let mut listener = plinth_db::Listener::connect(&pool, "wake").await.unwrap();

    // A writer commits through the pool while the primary dies; what it was told committed
    // must be on the new primary.
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let (mut acked, mut n, mut failed) = (BTreeSet::new(), 0, 0);
            let (mut last, mut longest) = (Instant::now(), Duration::ZERO);
            let deadline = Instant::now() + Duration::from_secs(90);
            while acked.len() < 400 && Instant::now() < deadline {
                match sqlx::query("insert into acked values ($1)")
                    .bind(n)
                    .execute(&pool)
                    .await
                {
                    Ok(_) => {
                        acked.insert(n);
                        longest = longest.max(last.elapsed());
                        last = Instant::now();
                    }
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, failed, longest)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = block(|| cluster.kill_primary()).unwrap();
    assert_eq!(killed, old);
    let new = block(|| cluster.wait_for_primary(old, Duration::from_secs(60))).unwrap();
    let (acked, failed, longest) = writer.await.unwrap();
    assert_eq!(acked.len(), 400, "writes resumed on the new primary");
    // The failover happened while it wrote: its writes stalled (the pool waits for a
    // connection while the watcher looks for the new primary) or failed.
    eprintln!("writes: {failed} failed, the longest wait for one {longest:?}");
    assert!(
        failed > 0 || longest > Duration::from_secs(2),
        "the writer never noticed the failover"
    );
    assert_eq!(port_of(&pool).await.unwrap(), cluster.pg_port(new));
    let stored: BTreeSet<i32> = sqlx::query_scalar("select n from acked")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        acked.is_subset(&stored),
        "acknowledged but lost: {:?}",
        acked.difference(&stored).collect::<Vec<_>>()
    );

    // The LISTEN connection died with the old primary; the same listener connects again
    // through the pool and subscribes on the new primary (a NOTIFY sent meanwhile is lost,
    // which is why every loop polls too: NOTIFY is a hint).
    let notifier = {
        let pool = pool.clone();
        tokio::spawn(async move {
            loop {
                let _ = sqlx::query("notify wake").execute(&pool).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(15), listener.recv())
        .await
        .expect("a NOTIFY on the new primary reaches the listener")
        .unwrap();
    notifier.abort();
    drop(listener);
    pool.close().await;
}
