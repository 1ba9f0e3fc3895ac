//! The instance's view of its DHCP clients: enough to answer a new client's DISCOVER without a
//! round trip to the database.
//!
//! A DISCOVER from a MAC the database does not know (no NIC, no lease row), that asks for no
//! address and does not network-boot, in a large subnet (the pools `dhcp_lease_batch` offers
//! from memory), is offered the next address of the subnet's reservoir: free addresses read
//! from a random point of the pool, [`REFILL`] at a time, in the background. The offer is an
//! offer from memory like the database's (the [`OfferBook`] holds it); the client's REQUEST
//! goes to the database, which binds the address only if it is still free and the client's
//! (no reservation, no NIC, no other client). Everything else goes to the database as before.
//!
//! The view holds the subnets, every MAC the database knows and the reservoirs. It is loaded
//! when its listener (channel `dhcp_view`, see `sql/dhcp.sql`) connects, and kept fresh by
//! the notifications: the lease rows any instance writes (their MACs become known, their
//! addresses leave the reservoirs), NICs (the same), and a reload when subnets or ranges
//! change. Until it is loaded, while its listener is away, or while PostgreSQL's notification
//! queue is too full for the lease notifications, it answers nothing. A notification that
//! arrives late can cost an offer the REQUEST refuses; the client's MAC is then known, and its
//! next DISCOVER goes to the database.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use plinth_db::PgPool;
use plinth_db::dhcp_view::{Change, ViewSubnet};
use plinth_db::leases::LeaseDecision;
use plinth_types::MacAddr;
use uuid::Uuid;

use super::{DhcpRequest, LeaseOp, OfferBook};

/// Addresses read into a reservoir at a time.
pub(crate) const REFILL: i32 = 2048;
/// A reservoir with fewer left is refilled.
const LOW: usize = 512;
/// How often [`watch_queue`] looks at the notification queue's usage.
const QUEUE_CHECK: Duration = Duration::from_secs(5);
/// From this usage on, the view answers nothing (the lease notifications stop at 0.5).
const QUEUE_FULL: f64 = 0.4;

#[derive(Debug, Default)]
pub(crate) struct ClientView {
    state: Mutex<View>,
    started: std::sync::OnceLock<()>,
    /// DISCOVERs answered from the view.
    answered: AtomicU64,
    /// Loads (the first, and after a reconnect or a reload).
    loads: AtomicU64,
    /// Switched off (`dhcp.client_view = false`; tests of the database's own decisions):
    /// answers nothing and never starts its listener.
    off: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct View {
    ready: bool,
    /// Counts the loads: a refill read before the last one is dropped.
    generation: u64,
    subnets: Vec<ViewSubnet>,
    /// Every MAC the database knows: a NIC's or a lease row's (and more: a MAC stays in it
    /// when its row goes to another client, which only sends it to the database).
    known: HashSet<MacAddr>,
    /// Past this many known MACs (made-up MACs binding leases), the view is loaded again.
    known_limit: usize,
    reservoirs: HashMap<Uuid, Reservoir>,
    refill_failed: Option<Instant>,
    /// PostgreSQL's notification queue is too full for lease notifications ([`watch_queue`]).
    queue_full: bool,
    /// Lease notifications may have been left out since the last load.
    missed: bool,
}

#[derive(Debug, Default)]
struct Reservoir {
    /// In the order read (from a random point of the pool).
    order: VecDeque<Ipv4Addr>,
    /// Those of `order` still free: a notification takes an address out of it.
    free: HashSet<Ipv4Addr>,
    /// While a refill is under way: the addresses taken meanwhile, which it must not add.
    taken: Option<HashSet<Ipv4Addr>>,
}

impl Reservoir {
    /// Whether a refill is to start (none is under way).
    fn begin_refill(&mut self) -> bool {
        let start = self.taken.is_none();
        if start {
            self.taken = Some(HashSet::new());
        }
        start
    }

    fn take(&mut self, a: Ipv4Addr) {
        self.free.remove(&a);
        if let Some(t) = &mut self.taken {
            t.insert(a);
        }
    }
}

fn contains(s: &ViewSubnet, a: Ipv4Addr) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(s.prefix_len))
        .unwrap_or(0);
    u32::from(a) & mask == u32::from(s.network) & mask
}

impl View {
    /// The subnet of a request, as `dhcp_lease_batch` finds it: a relay address names its
    /// subnet, else the subnet around the address, which takes relayed requests only where
    /// `relay_any_in_cidr`.
    fn subnet(&self, match_addr: Ipv4Addr, relayed: bool) -> Option<&ViewSubnet> {
        let named = || {
            self.subnets
                .iter()
                .find(|s| s.relay_addresses.contains(&match_addr))
        };
        relayed.then(named).flatten().or_else(|| {
            self.subnets
                .iter()
                .find(|s| contains(s, match_addr) && (s.relay_any_in_cidr || !relayed))
        })
    }

    fn take_everywhere(&mut self, a: Ipv4Addr) {
        for r in self.reservoirs.values_mut() {
            r.take(a);
        }
    }
}

/// What [`ClientView::offer`] answered.
pub(crate) enum Offered {
    /// The offer, and a subnet whose reservoir is to be refilled.
    Yes(Box<LeaseDecision>, Option<(Uuid, u64)>),
    /// To the database; perhaps a refill to start.
    No(Option<(Uuid, u64)>),
}

impl ClientView {
    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the listener that loads and keeps the view, once (never when switched off).
    pub(crate) fn start(self: &Arc<Self>, pool: &PgPool) {
        if self.off.load(Ordering::Relaxed) {
            return;
        }
        self.started.get_or_init(|| {
            tokio::spawn(listen(Arc::downgrade(self), pool.clone()));
            tokio::spawn(watch_queue(Arc::downgrade(self), pool.clone()));
        });
    }

    /// Offers `req` an address from the view, if it may: see the module's description.
    pub(crate) fn offer(&self, req: &DhcpRequest<'_>, book: &OfferBook) -> Offered {
        if req.op != (LeaseOp::Discover { requested: None })
            || req.client.wants_boot()
            || self.off.load(Ordering::Relaxed)
        {
            return Offered::No(None);
        }
        let mut v = self.lock();
        if !v.ready
            || v.queue_full
            || v.missed
            || v.known.contains(&req.mac)
            || book.has_open(req.mac)
        {
            return Offered::No(None);
        }
        let Some(s) = v.subnet(req.match_addr, req.relayed).filter(|s| s.large) else {
            return Offered::No(None);
        };
        // (what the answer needs of the subnet: not its relay list)
        let id = s.id;
        let mut offer = LeaseDecision {
            outcome: Some("offer".into()),
            address: None,
            lease_secs: Some(s.lease_secs),
            subnet_id: Some(s.id),
            cidr: Some(s.cidr.clone()),
            prefix_len: Some(s.prefix_len),
            router: s.router,
            dns_servers: s.dns_servers.clone(),
            domain: s.domain.clone(),
            boot_server: s.boot_server,
            machine_id: None,
            machine_state: None,
            boot_file: None,
            reason: None,
            from_memory: true,
        };
        let generation = v.generation;
        let failed_lately = v
            .refill_failed
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        let r = v.reservoirs.entry(id).or_default();
        let mut address = None;
        while let Some(a) = r.order.pop_front() {
            if r.free.remove(&a) && !book.is_offered(a) {
                address = Some(a);
                break;
            }
        }
        let refill = (r.order.len() < LOW && !failed_lately)
            .then(|| r.begin_refill().then_some((id, generation)))
            .flatten();
        let Some(address) = address else {
            return Offered::No(refill);
        };
        drop(v);
        self.answered.fetch_add(1, Ordering::Relaxed);
        offer.address = Some(address);
        Offered::Yes(Box::new(offer), refill)
    }

    /// Fills `subnet`'s reservoir now, once the view is loaded (tests: the DHCP server's
    /// reservoirs are filled in the background when they run low). False if it did not load
    /// within `wait`.
    #[cfg(feature = "testing")]
    pub(crate) async fn fill(
        self: &Arc<Self>,
        pool: &PgPool,
        subnet: Uuid,
        wait: Duration,
    ) -> bool {
        self.start(pool);
        let until = Instant::now() + wait;
        loop {
            let generation = {
                let mut v = self.lock();
                let g = v.generation;
                (v.ready && !v.missed)
                    .then(|| v.reservoirs.entry(subnet).or_default().begin_refill())
                    .map(|_| g)
            };
            if let Some(generation) = generation {
                self.clone().refill(pool.clone(), subnet, generation).await;
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The database decided for `mac` (an answer it wrote, or a NAK): from now on its
    /// DISCOVERs go there, and the address it was given is no longer free, before the
    /// notification of its row arrives (a refill may have read it as free just before).
    pub(crate) fn learn(&self, mac: MacAddr, address: Option<Ipv4Addr>) {
        let mut v = self.lock();
        v.known.insert(mac);
        if let Some(a) = address {
            v.take_everywhere(a);
        }
    }

    /// Reads free addresses for a subnet's reservoir (what [`ClientView::offer`] asked for).
    pub(crate) async fn refill(self: Arc<Self>, pool: PgPool, subnet: Uuid, generation: u64) {
        let got = async {
            let mut conn = plinth_db::acquire(&pool).await?;
            plinth_db::dhcp_view::free_addresses(&mut conn, subnet, REFILL).await
        }
        .await;
        let mut v = self.lock();
        if v.generation != generation {
            return;
        }
        let failed = got.is_err();
        if failed {
            v.refill_failed = Some(Instant::now());
        }
        let Some(r) = v.reservoirs.get_mut(&subnet) else {
            return;
        };
        let taken = r.taken.take().unwrap_or_default();
        match got {
            Ok(free) => {
                for a in free {
                    if !taken.contains(&a) && r.free.insert(a) {
                        r.order.push_back(a);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, %subnet, "cannot read free addresses for the DHCP view; its new clients go to the database");
            }
        }
        if !failed {
            v.refill_failed = None;
        }
    }

    fn unready(&self) {
        let mut v = self.lock();
        v.ready = false;
        v.reservoirs.clear();
    }

    fn install(&self, subnets: Vec<ViewSubnet>, known: Vec<MacAddr>) {
        let mut v = self.lock();
        v.generation += 1;
        v.known = known.into_iter().collect();
        v.known_limit = 2 * v.known.len() + 65_536;
        v.subnets = subnets;
        v.reservoirs.clear();
        v.refill_failed = None;
        v.missed = v.queue_full;
        v.ready = true;
        self.loads.fetch_add(1, Ordering::Relaxed);
    }

    fn queue_full(&self, full: bool) {
        let mut v = self.lock();
        v.queue_full = full;
        if full {
            v.missed = true;
        }
    }

    /// Takes in one notification; false when the view must be loaded again.
    fn apply(&self, change: Change) -> bool {
        let mut v = self.lock();
        match change {
            Change::Leases(rows) => {
                for (mac, a) in rows {
                    v.known.insert(mac);
                    v.take_everywhere(a);
                }
            }
            Change::Nic(mac, a) => {
                v.known.insert(mac);
                if let Some(a) = a {
                    v.take_everywhere(a);
                }
            }
            Change::Reload => return false,
        }
        v.known.len() <= v.known_limit
    }

    /// For tests and metrics: whether the view answers, the DISCOVERs it answered, its loads,
    /// and the addresses left in a subnet's reservoir.
    pub(crate) fn status(&self, subnet: Option<Uuid>) -> (bool, u64, u64, usize) {
        let v = self.lock();
        let left = subnet
            .and_then(|s| v.reservoirs.get(&s))
            .map_or(0, |r| r.free.len());
        (
            v.ready,
            self.answered.load(Ordering::Relaxed),
            self.loads.load(Ordering::Relaxed),
            left,
        )
    }

    /// Answers nothing from now on, and does not start (before its first use).
    pub(crate) fn switch_off(&self) {
        self.off.store(true, Ordering::Relaxed);
    }

    /// The free addresses of `subnet`'s reservoir, in the order they are offered (tests).
    #[cfg(feature = "testing")]
    pub(crate) fn reservoir(&self, subnet: Uuid) -> Vec<Ipv4Addr> {
        let v = self.lock();
        v.reservoirs.get(&subnet).map_or_else(Vec::new, |r| {
            r.order
                .iter()
                .filter(|a| r.free.contains(a))
                .copied()
                .collect()
        })
    }

    /// Whether the view knows `mac` (tests).
    #[cfg(feature = "testing")]
    pub(crate) fn knows(&self, mac: MacAddr) -> bool {
        self.lock().known.contains(&mac)
    }
}

async fn load(pool: &PgPool) -> plinth_db::Result<(Vec<ViewSubnet>, Vec<MacAddr>)> {
    let mut conn = plinth_db::acquire(pool).await?;
    let subnets = plinth_db::dhcp_view::subnets(&mut conn).await?;
    let known = plinth_db::dhcp_view::known_macs(&mut conn).await?;
    Ok((subnets, known))
}

/// The view's listener: connects, loads, takes in notifications; loads again after a lost
/// connection or a reload. Ends when the view is dropped or the pool closed.
async fn listen(view: Weak<ClientView>, pool: PgPool) {
    let mut backoff = Duration::from_millis(100);
    let pause = |backoff: &mut Duration| {
        let d = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(10));
        tokio::time::sleep(d)
    };
    'connect: loop {
        if pool.is_closed() {
            return;
        }
        match view.upgrade() {
            Some(v) => v.unready(),
            None => return,
        }
        let mut listener = match plinth_db::Listener::connect(&pool, plinth_db::dhcp_view::CHANNEL)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                if !pool.is_closed() {
                    tracing::warn!(error = %e, "DHCP view: cannot listen for changes; every DISCOVER goes to the database");
                }
                pause(&mut backoff).await;
                continue 'connect;
            }
        };
        'load: loop {
            match load(&pool).await {
                Ok((subnets, known)) => match view.upgrade() {
                    Some(v) => v.install(subnets, known),
                    None => return,
                },
                Err(e) => {
                    if !pool.is_closed() {
                        tracing::warn!(error = %e, "DHCP view: cannot load");
                    }
                    pause(&mut backoff).await;
                    continue 'connect;
                }
            }
            backoff = Duration::from_millis(100);
            loop {
                match listener.next_payload().await {
                    Ok(Some(payload)) => {
                        let Some(v) = view.upgrade() else { return };
                        if !v.apply(Change::parse(&payload)) {
                            continue 'load;
                        }
                    }
                    // Reconnected: what was sent meanwhile is lost.
                    Ok(None) => continue 'load,
                    Err(e) => {
                        if !pool.is_closed() {
                            tracing::warn!(error = %e, "DHCP view: lost its listener; connecting again");
                        }
                        continue 'connect;
                    }
                }
            }
        }
    }
}

/// Watches PostgreSQL's notification queue: past [`QUEUE_FULL`] the view answers nothing
/// (lease changes stop being notified at half full); when it has room again, every view is
/// told to load again (a `reload` notification), since changes went unlisted meanwhile.
async fn watch_queue(view: Weak<ClientView>, pool: PgPool) {
    let mut was_full = false;
    loop {
        tokio::time::sleep(QUEUE_CHECK).await;
        if pool.is_closed() {
            return;
        }
        let Some(v) = view.upgrade() else { return };
        let usage = async {
            let mut conn = plinth_db::acquire(&pool).await?;
            plinth_db::dhcp_view::queue_usage(&mut conn).await
        }
        .await;
        let full = match usage {
            Ok(u) => u >= QUEUE_FULL,
            Err(_) => continue, // (the listener reports a database that is away)
        };
        if full && !was_full {
            tracing::warn!(
                "DHCP view: PostgreSQL's notification queue is over {:.0} % full (a listener is not reading: a stopped or paused plinth instance?); every DISCOVER goes to the database",
                QUEUE_FULL * 100.0
            );
        }
        v.queue_full(full);
        if was_full && !full {
            tracing::info!("DHCP view: the notification queue has room again; loading");
            let sent = async {
                let mut conn = plinth_db::acquire(&pool).await?;
                plinth_db::dhcp_view::notify_reload(&mut conn).await
            }
            .await;
            if sent.is_err() {
                continue; // (still marked as having missed changes: try again)
            }
        }
        was_full = full;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(cidr: &str, relays: &[[u8; 4]], any: bool) -> ViewSubnet {
        let (net, len) = cidr.split_once('/').unwrap();
        ViewSubnet {
            id: Uuid::new_v4(),
            network: net.parse().unwrap(),
            prefix_len: len.parse().unwrap(),
            cidr: cidr.into(),
            relay_addresses: relays.iter().map(|a| Ipv4Addr::from(*a)).collect(),
            relay_any_in_cidr: any,
            large: true,
            lease_secs: 600,
            router: None,
            dns_servers: Vec::new(),
            domain: None,
            boot_server: None,
        }
    }

    /// The subnet of a request, by the rules of `dhcp_lease_batch`.
    #[test]
    fn subnets_as_the_database_finds_them() {
        let a = subnet("10.1.0.0/16", &[[192, 168, 9, 1]], false);
        let b = subnet("10.2.0.0/24", &[], true);
        let v = View {
            subnets: vec![a.clone(), b.clone()],
            ..Default::default()
        };
        let id = |m: [u8; 4], relayed| v.subnet(Ipv4Addr::from(m), relayed).map(|s| s.id);
        assert_eq!(id([10, 1, 200, 3], false), Some(a.id), "a local interface");
        assert_eq!(id([10, 2, 0, 255], false), Some(b.id));
        assert_eq!(id([10, 3, 0, 1], false), None);
        assert_eq!(id([192, 168, 9, 1], true), Some(a.id), "a listed relay");
        assert_eq!(
            id([10, 1, 0, 1], true),
            None,
            "a relay in a cidr that takes none"
        );
        assert_eq!(id([10, 2, 0, 1], true), Some(b.id), "relay_any_in_cidr");
        assert_eq!(id([192, 168, 9, 2], true), None, "an unknown relay");
        let all = subnet("0.0.0.0/0", &[], false);
        assert!(contains(&all, Ipv4Addr::new(1, 2, 3, 4)), "a zero prefix");
    }
}
