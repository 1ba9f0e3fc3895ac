//! `deploy`: an allocated machine gets a disk image, its identity and its user's data. Every
//! check runs before anything moves: the image (a disk image of the catalog, its file in
//! place, its architecture and firmware fitting the machine's facts), the disk it goes to
//! (chosen from the facts by the hint), the cloud-init data. Then, in one transaction, the
//! deployment is recorded and the machine moves to `deploying` with its BMC work (boot from
//! the network once, power cycle), so the ramdisk's agent writes the image.
//!
//! A deployment lives as long as the allocation: `release` deletes it, user data and keys
//! included (see `lifecycle::apply`).

use plinth_types::api::ImageKind;
use plinth_types::api::{DeployRequest, Deployment, DiskSize, Machine, RootDeviceHint};
use plinth_types::{AllocationId, ImageId, MachineId};
use plinth_types::{Error, Verb};
use uuid::Uuid;

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result, files, validate};

const MAX_DATA: usize = 64 * 1024;
const MAX_KEYS: usize = 64;
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// A disk of the machine's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    pub serial: Option<String>,
}

/// The disks of an inspection report (`facts.disks`).
pub fn disks(facts: &serde_json::Value) -> Vec<Disk> {
    facts["disks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| {
                    Some(Disk {
                        name: d["name"].as_str()?.to_owned(),
                        size_bytes: d["size_bytes"].as_u64()?,
                        serial: d["serial"].as_str().map(str::to_owned),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn listed(disks: &[Disk]) -> String {
    disks
        .iter()
        .map(|d| {
            format!(
                "{} ({} bytes{})",
                d.name,
                d.size_bytes,
                d.serial
                    .as_deref()
                    .map(|s| format!(", serial {s}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The disk the image goes to: those matching the hint's name and serial (all of them when
/// the hint has neither) and holding `min_bytes`, then the smallest (default) or largest.
pub fn choose_root_device(
    disks: &[Disk],
    hint: Option<&RootDeviceHint>,
    min_bytes: u64,
) -> Result<String> {
    if disks.is_empty() {
        return Err(Error::conflict(
            "no_disks",
            "the machine's facts list no disks: inspect it first",
        ));
    }
    let default = RootDeviceHint::default();
    let hint = hint.unwrap_or(&default);
    let name = hint
        .name
        .as_deref()
        .map(|n| n.strip_prefix("/dev/").unwrap_or(n));
    let matching: Vec<&Disk> = disks
        .iter()
        .filter(|d| name.is_none_or(|n| d.name == n))
        .filter(|d| {
            hint.serial
                .as_deref()
                .is_none_or(|s| d.serial.as_deref() == Some(s))
        })
        .collect();
    if matching.is_empty() {
        return Err(Error::invalid(
            "no_matching_disk",
            format!(
                "no disk of the machine matches the root device hint; its disks: {}",
                listed(disks)
            ),
        ));
    }
    let fitting: Vec<&Disk> = matching
        .iter()
        .copied()
        .filter(|d| d.size_bytes >= min_bytes)
        .collect();
    if fitting.is_empty() {
        return Err(Error::invalid(
            "disk_too_small",
            format!(
                "the image and its cloud-init seed need {min_bytes} bytes; the matching disks are smaller: {}",
                listed(&matching.into_iter().cloned().collect::<Vec<_>>())
            ),
        ));
    }
    let pick = match hint.size {
        Some(DiskSize::Largest) => fitting
            .iter()
            .max_by_key(|d| (d.size_bytes, d.name.clone())),
        _ => fitting
            .iter()
            .min_by_key(|d| (d.size_bytes, d.name.clone())),
    };
    Ok(pick.map(|d| d.name.clone()).unwrap_or_default())
}

fn check_data(field: &'static str, v: Option<&str>) -> Result<()> {
    if let Some(v) = v {
        if v.len() > MAX_DATA {
            return Err(Error::invalid(
                "invalid_cloud_init",
                format!("{field} is {} bytes; at most {MAX_DATA}", v.len()),
            ));
        }
        if v.contains('\0') {
            return Err(Error::invalid(
                "invalid_cloud_init",
                format!("{field} contains a NUL byte"),
            ));
        }
    }
    Ok(())
}

/// SSH keys as `authorized_keys` lines: one key each, of a known type.
pub fn check_keys(keys: &[String]) -> Result<Vec<String>> {
    if keys.len() > MAX_KEYS {
        return Err(Error::invalid(
            "invalid_ssh_key",
            format!("at most {MAX_KEYS} SSH keys"),
        ));
    }
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let k = k.trim();
            let kind = k.split_whitespace().next().unwrap_or("");
            let blob = k.split_whitespace().nth(1).unwrap_or("");
            if k.len() > 16 * 1024
                || k.contains(['\n', '\r', '\0'])
                || !KEY_TYPES.contains(&kind)
                || blob.is_empty()
            {
                return Err(Error::invalid(
                    "invalid_ssh_key",
                    format!(
                        "SSH key {} is not one public key line (`ssh-ed25519 AAAA... comment`)",
                        i + 1
                    ),
                ));
            }
            Ok(k.to_owned())
        })
        .collect()
}

impl App {
    /// `POST /machines/{id}/actions/deploy`: see the module docs.
    pub async fn deploy(
        &self,
        who: &Principal,
        id: Uuid,
        req: DeployRequest,
        expected_version: Option<i64>,
    ) -> Result<Machine> {
        who.require(Permission::Act(Verb::Deploy))?;
        validate::reason(req.reason.as_deref())?;
        let hostname = req
            .hostname
            .as_deref()
            .map(validate::hostname)
            .transpose()?;
        check_data("user_data", req.user_data.as_deref())?;
        check_data("network_config", req.network_config.as_deref())?;
        let keys = check_keys(req.ssh_authorized_keys.as_deref().unwrap_or_default())?;

        let mut tx = self.begin().await?;
        let row = self.visible_row(&mut tx, who, id).await?;
        // The state first: deploying a machine that is not allocated says so, whatever the image.
        if !Verb::Deploy.allowed_from().contains(&row.state) {
            return Err(self
                .refusal(&mut tx, id, Verb::Deploy, expected_version, who)
                .await);
        }
        if req.image.trim().is_empty() {
            return Err(Error::invalid(
                "missing_image",
                "deploy needs an image: {\"image\": \"<a disk-image of the catalog>\"}",
            ));
        }
        let allocation = row.allocation_id.ok_or_else(crate::missing("deploy"))?;
        let image = plinth_db::images::get(&mut tx, &req.image)
            .await
            .db()?
            .ok_or_else(|| {
                Error::invalid(
                    "unknown_image",
                    format!("no image {:?} in the catalog", req.image),
                )
            })?;
        if image.kind != ImageKind::DiskImage {
            return Err(Error::invalid(
                "not_a_disk_image",
                format!(
                    "image {} is a {}, not a disk-image",
                    image.name,
                    image.kind.as_str()
                ),
            ));
        }
        let arch = row
            .arch
            .map(|a| a.as_str().to_owned())
            .or_else(|| row.facts["arch"].as_str().map(str::to_owned));
        if image.arch != "any"
            && let Some(a) = &arch
            && *a != image.arch
        {
            return Err(Error::invalid(
                "image_arch_mismatch",
                format!(
                    "image {} is for {}, the machine is {a}",
                    image.name, image.arch
                ),
            ));
        }
        let machine_fw = row.facts["firmware"].as_str();
        if let (Some(fw), Some(m)) = (image.firmware.as_deref(), machine_fw)
            && fw != "both"
            && fw != m
        {
            return Err(Error::invalid(
                "image_firmware_mismatch",
                format!(
                    "image {} boots with {fw} only; the machine boots with {m}",
                    image.name
                ),
            ));
        }
        let file = files::resolve(&self.boot.settings.images_root, &image.path).ok();
        let on_disk = file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).ok())
            .map(|m| m.len());
        if on_disk != Some(u64::try_from(image.size).unwrap_or(u64::MAX)) {
            return Err(Error::conflict(
                "image_unavailable",
                format!(
                    "the file of image {} ({}) is missing or not the size the catalog recorded; register it again",
                    image.name, image.path
                ),
            ));
        }
        let min = u64::try_from(image.raw_size.unwrap_or(image.size))
            .unwrap_or(0)
            .saturating_add(plinth_types::api::SEED_RESERVE_BYTES);
        let root = choose_root_device(&disks(&row.facts), req.root_device.as_ref(), min)?;
        let hostname = hostname.or(row.hostname.clone());
        plinth_db::deployments::upsert(
            &mut tx,
            plinth_db::deployments::NewDeployment {
                machine_id: MachineId(id),
                allocation_id: AllocationId(allocation),
                image_id: ImageId(image.id),
                root_device: &root,
                root_device_hint: req
                    .root_device
                    .as_ref()
                    .map(|h| serde_json::to_value(h).unwrap_or_default()),
                hostname: hostname.as_deref(),
                user_data: req.user_data.as_deref(),
                ssh_authorized_keys: &keys,
                network_config: req.network_config.as_deref(),
                created_by: &who.name,
            },
        )
        .await
        .db()?;
        let details = serde_json::json!({
            "image": image.name, "root_device": root, "hostname": hostname,
            "user_data": req.user_data.is_some(), "ssh_keys": keys.len(),
        });
        self.apply(
            &mut tx,
            who,
            id,
            Verb::Deploy,
            expected_version,
            req.reason.as_deref(),
            None,
            details,
        )
        .await?;
        let machine = self.machine_in(&mut tx, id).await?;
        tx.commit().await.db()?;
        Ok(crate::machines::as_seen_by(who, machine))
    }

    /// A machine's deployment, if it has one, as `who` may see it (see [`Deployment`]).
    pub async fn deployment(&self, who: &Principal, id: Uuid) -> Result<Option<Deployment>> {
        let mut conn = self.conn().await?;
        self.visible_row(&mut conn, who, id).await?;
        let d = plinth_db::deployments::get(&mut conn, MachineId(id))
            .await
            .db()?;
        // visible_row let a client through only to its own machines: the tenant's data is
        // theirs, and the people who run the rack; a viewer sees that there is a deployment.
        let tenant = who.role != plinth_types::Role::Viewer;
        Ok(d.map(|d| Deployment {
            image: d.image_name,
            root_device: d.root_device,
            instance_id: tenant.then_some(d.instance_id),
            hostname: d.hostname,
            has_user_data: d.user_data.is_some(),
            ssh_authorized_keys: d.ssh_authorized_keys.len(),
            has_network_config: d.network_config.is_some(),
            created_by: d.created_by,
            created_at: d.created_at,
            data: tenant.then(|| plinth_types::api::DeploymentData {
                user_data: d.user_data.clone(),
                network_config: d.network_config.clone(),
                ssh_authorized_keys: d.ssh_authorized_keys.clone(),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str, gib: u64, serial: &str) -> Disk {
        Disk {
            name: name.into(),
            size_bytes: gib << 30,
            serial: Some(serial.into()),
        }
    }

    #[test]
    fn the_root_device_follows_the_hint() {
        let disks = [
            d("sda", 480, "S1"),
            d("nvme0n1", 960, "N1"),
            d("sdb", 240, "S2"),
        ];
        let pick =
            |h: Option<RootDeviceHint>, min: u64| choose_root_device(&disks, h.as_ref(), min);
        assert_eq!(pick(None, 1 << 30).unwrap(), "sdb", "smallest by default");
        assert_eq!(
            pick(None, 300 << 30).unwrap(),
            "sda",
            "the smallest that holds the image"
        );
        let h = |name: Option<&str>, serial: Option<&str>, size: Option<DiskSize>| {
            Some(RootDeviceHint {
                name: name.map(Into::into),
                serial: serial.map(Into::into),
                size,
            })
        };
        assert_eq!(
            pick(h(None, None, Some(DiskSize::Largest)), 0).unwrap(),
            "nvme0n1"
        );
        assert_eq!(pick(h(Some("/dev/sda"), None, None), 0).unwrap(), "sda");
        assert_eq!(pick(h(None, Some("S2"), None), 0).unwrap(), "sdb");
        let e = pick(h(Some("sdz"), None, None), 0).unwrap_err();
        assert_eq!(e.code, "no_matching_disk");
        assert!(
            e.message.contains("sda (515396075520 bytes, serial S1)"),
            "{}",
            e.message
        );
        let e = pick(h(Some("sdb"), None, None), 300 << 30).unwrap_err();
        assert_eq!(e.code, "disk_too_small");
        let e = pick(h(Some("sda"), Some("N1"), None), 0).unwrap_err();
        assert_eq!(e.code, "no_matching_disk", "name and serial must both hold");
        assert_eq!(
            choose_root_device(&[], None, 0).unwrap_err().code,
            "no_disks"
        );
    }

    #[test]
    fn ssh_keys_are_one_known_key_per_line() {
        let ok = check_keys(&["  ssh-ed25519 AAAAC3Nz me@host ".into()]).unwrap();
        assert_eq!(ok, ["ssh-ed25519 AAAAC3Nz me@host"]);
        for bad in [
            "",
            "ssh-ed25519",
            "rsa AAAA",
            "ssh-rsa AAAA\nssh-rsa BBBB",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
        ] {
            assert_eq!(
                check_keys(&[bad.into()]).unwrap_err().code,
                "invalid_ssh_key",
                "{bad:?}"
            );
        }
        assert!(check_keys(&vec!["ssh-rsa AAAA".to_owned(); 65]).is_err());
    }
}
