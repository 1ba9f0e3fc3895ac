//! What `/metrics` reads from the database at scrape time: counts by state, one round trip per
//! kind of row (a scrape every 15 s costs a few index or sequential scans of small tables).

use sqlx::PgConnection;

use crate::Result;

/// Machines by lifecycle state and maintenance flag.
#[derive(Debug, Clone)]
pub struct MachineCount {
    pub state: String,
    pub maintenance: bool,
    pub count: i64,
}

/// BMC jobs by kind and state (the rows the table holds: queued and running are the queue).
#[derive(Debug, Clone)]
pub struct JobCount {
    pub kind: String,
    pub state: String,
    pub count: i64,
}

/// BMCs by what power sync last found: reachable, unreachable, or not yet polled (`None`).
#[derive(Debug, Clone)]
pub struct BmcCount {
    pub reachable: Option<bool>,
    pub count: i64,
}

/// Leases by subnet and state.
#[derive(Debug, Clone)]
pub struct LeaseCount {
    pub subnet: String,
    pub state: String,
    pub count: i64,
}

/// The addresses of a subnet's dynamic ranges (its pool's size).
#[derive(Debug, Clone)]
pub struct PoolSize {
    pub subnet: String,
    pub addresses: i64,
}

/// Everything `/metrics` reads from the database.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub machines: Vec<MachineCount>,
    pub jobs: Vec<JobCount>,
    pub bmcs: Vec<BmcCount>,
    /// BMCs by the hardware health they last reported (`unknown`: not read yet).
    pub health: Vec<(String, i64)>,
    pub leases: Vec<LeaseCount>,
    pub pools: Vec<PoolSize>,
}

pub async fn snapshot(conn: &mut PgConnection) -> Result<Snapshot> {
    let machines = sqlx::query_as!(
        MachineCount,
        r#"select state as "state!", maintenance as "maintenance!", count(*) as "count!"
           from machines group by 1, 2 order by 1, 2"#
    )
    .fetch_all(&mut *conn)
    .await?;
    let jobs = sqlx::query_as!(
        JobCount,
        r#"select kind as "kind!", state as "state!", count(*) as "count!"
           from jobs group by 1, 2 order by 1, 2"#
    )
    .fetch_all(&mut *conn)
    .await?;
    let bmcs = sqlx::query_as!(
        BmcCount,
        r#"select reachable, count(*) as "count!" from bmcs group by 1 order by 1"#
    )
    .fetch_all(&mut *conn)
    .await?;
    let leases = sqlx::query_as!(
        LeaseCount,
        r#"select s.cidr::text as "subnet!", l.state as "state!", count(*) as "count!"
           from leases l join subnets s on s.id = l.subnet_id
           group by 1, 2 order by 1, 2"#
    )
    .fetch_all(&mut *conn)
    .await?;
    let pools = sqlx::query_as!(
        PoolSize,
        r#"select s.cidr::text as "subnet!", sum(r.last_addr - r.first_addr + 1)::bigint as "addresses!"
           from subnets s join subnet_ranges r on r.subnet_id = s.id
           group by 1 order by 1"#
    )
    .fetch_all(&mut *conn)
    .await?;
    let health = crate::health::counts(&mut *conn).await?;
    Ok(Snapshot {
        machines,
        jobs,
        bmcs,
        health,
        leases,
        pools,
    })
}
