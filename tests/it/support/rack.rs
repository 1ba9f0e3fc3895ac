//! What the virtual-rack tests share (`rack`, `deploy`): VMs behind virtual
//! BMCs (`plinth-lab vbmc`), enrollment and lifecycle calls on plinth's App, and waiting for
//! states with a report of what the machines, plinth and the consoles said when it times out.

use std::path::Path;
use std::time::{Duration, Instant};

use plinth_core::Principal;
use plinth_core::boot::{BootSettings, Templates};
use plinth_core::lifecycle::Action;
use plinth_testkit::netns::{Lab, Ns, Proc};
use plinth_testkit::rack::{
    BmcProtocol, VirtualBmc, VirtualBmcSpec, plinth_lab_beside, start_virtual_bmc,
};
use plinth_testkit::vm::{Firmware, Nic, VmSpec};
use plinth_types::api::{
    AddressRange, AllocationRequest, Arch, BmcSpec, DeployRequest, Event, ImageKind, ImageRegister,
    Machine, MachineCreate, NicSpec, SubnetCreate,
};
use plinth_types::{MachineState, Verb};

use super::BIN;
use super::env::Env;

pub const PASSWORD: &str = "vbmc-Pa55";

/// What the lifecycle helpers below drive: a runtime and an `App` (a test database's
/// [`Env`], or the HA tests' Patroni cluster).
pub trait Drives {
    fn rt(&self) -> &tokio::runtime::Runtime;
    fn app(&self) -> &plinth_core::App;
}

impl Drives for Env {
    fn rt(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }
    fn app(&self) -> &plinth_core::App {
        &self.app
    }
}
pub const MIB: usize = 1 << 20;

pub struct VmDef {
    pub name: String,
    pub protocol: BmcProtocol,
    pub firmware: Firmware,
    pub nic: Nic,
    pub mac: String,
    pub memory_mib: u32,
    pub disks: &'static [u64],
    /// NVMe disks (after the virtio ones), MiB.
    pub nvme_disks: &'static [u64],
    /// ATA disks (after those), MiB.
    pub sata_disks: &'static [u64],
}

/// Starts the virtual BMC of each VM, on its tap (see [`vbmc`]).
pub fn vbmcs(
    lab: &mut Lab,
    srv: &Ns,
    rack: &Ns,
    taps: &[String],
    vms: &[VmDef],
) -> Vec<VirtualBmc> {
    vms.iter()
        .zip(taps)
        .map(|(vm, tap)| vbmc(lab, srv, rack, tap, vm))
        .collect()
}

/// plinth's settings for a lifecycle test on the rack: BMC jobs retried quickly, power
/// synced every 5 s, and the BMC key the test's App shares.
pub fn lifecycle_settings(key: &str) -> [(&'static str, &str); 5] {
    [
        ("PLINTH_BMC__BACKOFF_BASE_SECS", "1"),
        ("PLINTH_BMC__BACKOFF_MAX_SECS", "2"),
        ("PLINTH_BMC__POWER_WAIT_SECS", "60"),
        ("PLINTH_BMC__SYNC_INTERVAL_SECS", "5"),
        ("PLINTH_BMC__SECRET_KEY", key),
    ]
}

/// Starts a VM's virtual BMC (`plinth-lab vbmc`, built next to plinth) in `srv`.
pub fn vbmc(lab: &mut Lab, srv: &Ns, rack: &Ns, tap: &str, vm: &VmDef) -> VirtualBmc {
    vbmc_listening(lab, srv, rack, tap, vm, None)
}

/// [`vbmc`] listening on `listen` (`ADDR:0`, Redfish only) instead of loopback.
pub fn vbmc_listening(
    lab: &mut Lab,
    srv: &Ns,
    rack: &Ns,
    tap: &str,
    vm: &VmDef,
    listen: Option<&str>,
) -> VirtualBmc {
    let mut spec = VmSpec::new(&vm.name, vm.firmware, vm.nic, &vm.mac);
    spec.memory_mib = vm.memory_mib;
    spec.disks = vm.disks.to_vec();
    spec.nvme_disks = vm.nvme_disks.to_vec();
    spec.sata_disks = vm.sata_disks.to_vec();
    let spec = VirtualBmcSpec {
        vm: spec,
        protocol: vm.protocol,
        username: "admin".into(),
        password: PASSWORD.into(),
        ns: rack.name.clone(),
        tap: tap.into(),
        dir: lab.path(&vm.name),
        listen: listen.map(str::to_owned),
    };
    start_virtual_bmc(lab, srv, &plinth_lab_beside(Path::new(BIN)), &spec)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

pub fn admin() -> Principal {
    Principal {
        token_id: None,
        name: "tech".into(),
        role: plinth_types::Role::Admin,
    }
}

pub fn enroll(env: &impl Drives, vm: &VmDef, url: &str, password: &str) -> uuid::Uuid {
    enroll_with_pool(env, vm, url, password, None, None)
}

/// Enrolled with `ipv4` reserved for its NIC.
pub fn enroll_reserved(
    env: &impl Drives,
    vm: &VmDef,
    url: &str,
    password: &str,
    ipv4: &str,
) -> uuid::Uuid {
    enroll_with_pool(env, vm, url, password, None, Some(ipv4))
}

/// Enrolled into `pool`.
pub fn enroll_in(
    env: &impl Drives,
    vm: &VmDef,
    url: &str,
    password: &str,
    pool: &str,
) -> uuid::Uuid {
    enroll_with_pool(env, vm, url, password, Some(pool), None)
}

fn enroll_with_pool(
    env: &impl Drives,
    vm: &VmDef,
    url: &str,
    password: &str,
    pool: Option<&str>,
    ipv4: Option<&str>,
) -> uuid::Uuid {
    let req = MachineCreate {
        hostname: Some(vm.name.clone()),
        rack: None,
        rack_unit: None,
        size_u: None,
        pool: pool.map(str::to_owned),
        tags: None,
        arch: Some(Arch::X86_64),
        nics: vec![NicSpec {
            mac: vm.mac.parse().unwrap(),
            ipv4: ipv4.map(|a| a.parse().unwrap()),
            pxe: None,
        }],
        bmc: Some(BmcSpec {
            protocol: vm.protocol,
            address: url.into(),
            username: "admin".into(),
            password: password.into(),
            verify_tls: Some(false),
            plain_http: url.starts_with("http://").then_some(true),
        }),
    };
    env.rt()
        .block_on(env.app().enroll_machine(&admin(), req))
        .unwrap()
        .id
}

pub fn act(env: &impl Drives, id: uuid::Uuid, verb: Verb) {
    env.rt()
        .block_on(env.app().act(
            &admin(),
            id,
            Action {
                verb,
                expected_version: None,
                reason: None,
            },
        ))
        .unwrap_or_else(|e| panic!("{verb} {id}: {e:?}"));
}

pub fn machine(env: &impl Drives, id: uuid::Uuid) -> Machine {
    env.rt()
        .block_on(env.app().get_machine(&admin(), id))
        .unwrap()
}

pub fn events(env: &impl Drives, id: uuid::Uuid) -> Vec<Event> {
    env.rt()
        .block_on(env.app().events(&admin(), Some(id), Default::default()))
        .unwrap()
        .events
}

/// Waits until every machine is in `want` (with its BMC jobs done), or panics with what the
/// machines, their events, plinth and the VM consoles say.
pub fn wait_state(
    env: &impl Drives,
    ids: &[uuid::Uuid],
    want: MachineState,
    timeout: Duration,
    server: &Proc,
    dirs: &[&Path],
) {
    let deadline = Instant::now() + timeout;
    loop {
        let states: Vec<MachineState> = ids.iter().map(|id| machine(env, *id).state).collect();
        let busy = ids.iter().any(|id| {
            env.rt()
                .block_on(env.app().jobs(
                    &admin(),
                    plinth_core::jobs::JobQuery {
                        machine: Some(*id),
                        ..Default::default()
                    },
                ))
                .unwrap()
                .jobs
                .iter()
                .any(|j| !j.state.is_finished())
        });
        if states.iter().all(|s| *s == want) && !busy {
            return;
        }
        if Instant::now() > deadline {
            let mut report = format!("wanted {want}, got {states:?} (jobs busy: {busy})\n");
            for id in ids {
                report += &format!("--- events of {id}:\n");
                for e in events(env, *id) {
                    report += &format!("{} {} {}\n", e.kind, e.actor, e.details);
                }
            }
            for d in dirs {
                let console = std::fs::read_to_string(d.join("console.log")).unwrap_or_default();
                let tail: String = console
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                report += &format!("--- console of {}:\n{tail}\n", d.display());
            }
            panic!("{report}--- plinth:\n{}", server.log_text());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn fill(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len() as usize;
    std::fs::write(path, vec![0xa5u8; len]).unwrap();
}

/// The marker [`mark_middle`] writes.
pub const MARKER: &[u8] = b"PLINTH-WIPE-MARKER: a tenant's data in the middle of the disk";

/// Writes [`MARKER`] at the middle of a disk file.
pub fn mark_middle(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.write_all_at(MARKER, len / 2).unwrap();
}

/// Whether the marker is still at the middle of the disk file.
pub fn has_marker(path: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut buf = vec![0u8; MARKER.len()];
    f.read_exact_at(&mut buf, len / 2).unwrap();
    buf == MARKER
}

pub fn ends_zeroed(path: &Path) -> bool {
    let data = std::fs::read(path).unwrap();
    data[..MIB].iter().all(|b| *b == 0) && data[data.len() - MIB..].iter().all(|b| *b == 0)
}

/// A database and an App whose BMC key the `plinth serve` of the test shares (enrollment
/// encrypts with it), with the subnet `prefix.0/24` (addresses .100 to .200). Returns the key.
pub fn keyed_env(prefix: &str) -> (Env, String) {
    let mut env = Env::new();
    let key = plinth_core::BmcKey::generate_base64();
    env.app = plinth_core::App::new(
        env.db.pool.clone(),
        plinth_core::BmcKey::from_base64(&key).unwrap(),
    );
    env.rt()
        .block_on(env.app().create_subnet(
            &Principal::system(),
            SubnetCreate {
                cidr: format!("{prefix}.0/24"),
                ranges: vec![AddressRange {
                    start: format!("{prefix}.100").parse().unwrap(),
                    end: format!("{prefix}.200").parse().unwrap(),
                }],
                router: None,
                dns_servers: None,
                domain: None,
                lease_time: Some(600),
                boot_server: None,
                relay_addresses: None,
                relay_any_in_cidr: None,
            },
        ))
        .unwrap();
    (env, key)
}

/// Seconds until `needle` shows in the VM's console (polled every 100 ms), from `t0`.
pub fn until_console(dir: &Path, needle: &str, t0: Instant, timeout: Duration) -> f64 {
    loop {
        let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        if console.contains(needle) {
            return t0.elapsed().as_secs_f64();
        }
        assert!(
            t0.elapsed() < timeout,
            "no {needle:?} in {}:\n{console}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Gives the test's App the images root of the `plinth serve` it runs, for the catalog.
pub fn with_images(env: &mut Env, root: &Path) {
    env.app = env.app.clone().with_boot(
        BootSettings::with_root(root.to_owned()),
        Templates::load(None).unwrap(),
    );
}

pub fn register(env: &Env, name: &str, path: &str, firmware: &str) -> plinth_types::api::Image {
    env.rt
        .block_on(env.app.register_image(
            &admin(),
            ImageRegister {
                name: name.into(),
                kind: ImageKind::DiskImage,
                arch: None,
                path: path.into(),
                sha256: None,
                firmware: Some(firmware.into()),
            },
        ))
        .unwrap_or_else(|e| panic!("registering {path}: {e:?}"))
}

pub fn deploy(env: &Env, id: uuid::Uuid, req: DeployRequest) {
    env.rt
        .block_on(env.app.deploy(&admin(), id, req, None))
        .unwrap_or_else(|e| panic!("deploy {id}: {e:?}"));
}

/// Allocates `count` ready machines: the allocation and its machines.
pub fn allocate(env: &Env, count: u32) -> (uuid::Uuid, Vec<uuid::Uuid>) {
    let a = env
        .rt
        .block_on(env.app.allocate(
            &admin(),
            AllocationRequest {
                count: Some(count),
                ..Default::default()
            },
        ))
        .unwrap();
    let mut ids: Vec<uuid::Uuid> = a.machines.iter().map(|m| m.id).collect();
    ids.sort();
    (a.id, ids)
}

pub fn release(env: &Env, allocation: uuid::Uuid) {
    env.rt
        .block_on(env.app.release_allocation(&admin(), allocation))
        .unwrap();
}
