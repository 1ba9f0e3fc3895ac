//! [`App::prepare_vmedia_boot`] and [`App::vmedia_iso`]: a virtual-media boot recorded with its
//! agent token, and its ISO answered while that token is live.

use std::net::IpAddr;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chrono::{DateTime, Utc};
use plinth_types::{AgentMode, Error, netboot};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::config::{StaticNet, grub_cfg};
use super::iso::{self, FileRef, IsoImage, IsoInput};
use crate::auth::{generate_secret, hash_secret};
use crate::boot::{Firmware, ScriptAction, ScriptMachine, script_context, script_decision};
use crate::machines::not_found;
use crate::{App, DbResult, Result};

/// The images root's GRUB images of the ISO (built by images/build.sh).
pub const BIOS_IMAGE: &str = "plinth/vmedia-bios.img";
pub const EFI_IMAGE: &str = "plinth/vmedia-efi.img";
/// The largest BIOS boot image read into memory (GRUB's is about 150 KiB).
const MAX_BIOS_IMAGE: u64 = 4 << 20;

/// A virtual-media boot, as the lifecycle needs it to drive the BMC: the ISO's URL (a
/// capability: whoever has it can read the agent token inside, so it is not logged or put in
/// events) and when it stops being served.
#[derive(Clone)]
pub struct VmediaBoot {
    pub machine_id: Uuid,
    pub mode: AgentMode,
    pub url: String,
    pub expires_at: DateTime<Utc>,
    /// The network the ramdisk configures statically; `None`: it asks DHCP.
    pub static_network: Option<StaticNet>,
}

impl std::fmt::Debug for VmediaBoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmediaBoot")
            .field("machine_id", &self.machine_id)
            .field("mode", &self.mode)
            .field("url", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("static_network", &self.static_network)
            .finish()
    }
}

/// A live boot's ISO: its layout and validators.
#[derive(Debug, Clone)]
pub struct VmediaIso {
    pub machine_id: Uuid,
    pub image: IsoImage,
    /// A strong ETag (quoted): changes with the boot and with any file the ISO is made of.
    pub etag: String,
    pub created_at: DateTime<Utc>,
}

/// The sealing key of a boot's grub.cfg, derived from the ISO's id (which the database holds
/// only as a hash).
fn key_of(id: &str) -> Key {
    let mut h = Sha256::new();
    h.update(b"plinth vmedia config\0");
    h.update(id.as_bytes());
    *Key::from_slice(&h.finalize())
}

fn seal(id: &str, machine: Uuid, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = ChaCha20Poly1305::new(&key_of(id))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: machine.as_bytes(),
            },
        )
        .expect("ChaCha20-Poly1305 encryption of a short message cannot fail");
    let mut out = nonce.to_vec();
    out.extend(ct);
    out
}

fn unseal(id: &str, machine: Uuid, sealed: &[u8]) -> Option<Vec<u8>> {
    let (nonce, ct) = sealed.split_at_checked(12)?;
    ChaCha20Poly1305::new(&key_of(id))
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: machine.as_bytes(),
            },
        )
        .ok()
}

/// A new ISO id: 256 random bits, URL-safe base64 (43 characters).
fn new_id() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Whether `id` can be an ISO id at all (checked before any database work).
fn plausible_id(id: &str) -> bool {
    id.len() == 43
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn net_of(r: plinth_db::vmedia::StaticNetRow) -> Option<StaticNet> {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(v) => v.to_ipv4_mapped(),
    };
    Some(StaticNet {
        mac: r.mac,
        address: v4(r.ipv4)?,
        prefix: u8::try_from(r.prefix).ok()?,
        gateway: r.router.and_then(v4),
        dns: r.dns.into_iter().filter_map(v4).collect(),
    })
}

fn file_ref(root: &Path, name: &str) -> Result<FileRef> {
    let missing = || {
        tracing::error!(
            file = name,
            root = %root.display(),
            "a file of the virtual-media ISO is missing from the images root (run images/build.sh)"
        );
        Error::unavailable(format!(
            "the images root has no {name}: the virtual-media ISO cannot be made (run images/build.sh)"
        ))
    };
    let path = crate::files::resolve(root, name).map_err(|_| missing())?;
    let len = std::fs::metadata(&path).map_err(|_| missing())?.len();
    Ok(FileRef { path, len })
}

fn mtime_nanos(p: &Path) -> u64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

impl App {
    /// Prepares a virtual-media boot of machine `id`'s ramdisk in `mode`, which its state must
    /// boot (as the iPXE script would): mints the agent token (revoking the live one of that
    /// mode, as a newer script does), bound to the static address when the machine has one
    /// (its NIC's reservation in a subnet plinth knows) and otherwise to the addresses plinth
    /// leases the machine; records the boot (a `vmedia_prepared` event) and returns the
    /// ISO's URL, served until the token expires, is used by the agent's report, or is revoked
    /// by a state change. The ISO's kernel command line is the iPXE script's for that state,
    /// plus `plinth.net=` for the static network.
    pub async fn prepare_vmedia_boot(&self, id: Uuid, mode: AgentMode) -> Result<VmediaBoot> {
        let s = &self.boot_env().settings;
        let base = s.public_url.clone().ok_or_else(|| {
            Error::invalid(
                "no_public_url",
                "boot.public_url must be set to boot by virtual media: the ISO carries plinth's URL",
            )
        })?;
        let base = base.trim_end_matches('/').to_owned();
        let mut tx = self.begin().await?;
        let state = plinth_db::vmedia::lock_machine(&mut tx, id)
            .await
            .db()?
            .ok_or_else(|| not_found(id))?;
        match script_decision(Some(state), s.unknown_machines, s.idle) {
            ScriptAction::Ramdisk(m) if m == mode => {}
            _ => {
                return Err(Error::conflict(
                    "wrong_state",
                    format!("machine {id} is {state}: it boots no {mode} ramdisk"),
                ));
            }
        }
        let net = plinth_db::vmedia::static_network(&mut tx, id)
            .await
            .db()?
            .and_then(net_of);
        let token = generate_secret();
        let token_hash = hash_secret(&token);
        let iso_id = new_id();
        let iso_hash = hash_secret(&iso_id);
        let machine = ScriptMachine {
            id,
            hostname: None,
            state: state.as_str().to_owned(),
            mac: net.as_ref().map(|n| n.mac.to_string()).unwrap_or_default(),
            label: id.to_string(),
        };
        let ctx = script_context(
            &ScriptAction::Ramdisk(mode),
            machine,
            Firmware::Bios,
            &base,
            Some(&token),
            s,
        );
        let mut args = ctx.ramdisk_args;
        if let Some(n) = &net {
            args.push(' ');
            args.push_str(&n.kernel_arg());
        }
        let cfg = grub_cfg(&args)?;
        let sealed = seal(&iso_id, id, cfg.as_bytes());
        let ttl = chrono::Duration::from_std(s.agent_token_ttl)
            .unwrap_or_else(|_| chrono::Duration::hours(1));
        let expires_at = Utc::now() + ttl;
        let static_ip = net.as_ref().map(|n| IpAddr::V4(n.address));
        plinth_db::vmedia::insert_boot(
            &mut tx,
            &plinth_db::vmedia::NewBoot {
                id_sha256: &iso_hash,
                machine_id: id,
                mode,
                token_sha256: &token_hash,
                expires_at,
                sealed_config: &sealed,
                static_ip,
            },
        )
        .await
        .db()?;
        plinth_db::events::insert(
            &mut tx,
            plinth_db::events::NewEvent {
                actor: "system",
                machine_id: Some(id),
                kind: "vmedia_prepared",
                from_state: None,
                to_state: None,
                details: json!({
                    "mode": mode.as_str(),
                    "expires_at": expires_at,
                    "static_address": net.as_ref().map(|n| format!("{}/{}", n.address, n.prefix)),
                    "mac": net.as_ref().map(|n| n.mac.to_string()),
                }),
            },
        )
        .await
        .db()?;
        tx.commit().await.db()?;
        tracing::info!(machine_id = %id, mode = mode.as_str(), static_address = ?static_ip, "virtual-media boot prepared");
        Ok(VmediaBoot {
            machine_id: id,
            mode,
            url: netboot::file_url(&base, &format!("{}{iso_id}.iso", netboot::VMEDIA_DIR)),
            expires_at,
            static_network: net,
        })
    }

    /// The ISO of the live boot with this id (the `{id}` of `/boot/vmedia/{id}.iso`), counted
    /// as fetched; `None` for an id that is not a live boot's (unknown, malformed, or its token
    /// used, revoked or expired): the endpoint answers 404 alike, so nothing is learned.
    pub async fn vmedia_iso(&self, id: &str, remote: Option<IpAddr>) -> Result<Option<VmediaIso>> {
        if !plausible_id(id) {
            return Ok(None);
        }
        let row = {
            let mut conn = self.conn().await?;
            let remote = remote.map(crate::agent::ip_text);
            plinth_db::vmedia::fetch(&mut conn, &hash_secret(id), remote.as_deref())
                .await
                .db()?
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let Some(cfg) = unseal(id, row.machine_id, &row.sealed_config) else {
            tracing::error!(machine_id = %row.machine_id, "a virtual-media boot's configuration does not unseal");
            return Err(Error::internal());
        };
        let s = &self.boot_env().settings;
        let root = &s.images_root;
        let bios = file_ref(root, BIOS_IMAGE)?;
        if bios.len > MAX_BIOS_IMAGE {
            tracing::error!(
                len = bios.len,
                "{BIOS_IMAGE} is larger than a BIOS boot image can be"
            );
            return Err(Error::unavailable(format!("{BIOS_IMAGE} is too large")));
        }
        let bios_image = tokio::fs::read(&bios.path)
            .await
            .map_err(|_| Error::unavailable(format!("{BIOS_IMAGE} cannot be read")))?;
        let efi_image = file_ref(root, EFI_IMAGE)?;
        let kernel = file_ref(root, &s.kernel)?;
        let initrd = file_ref(root, &s.initrd)?;
        // The ETag: the boot and every file's size and time, hashed (nothing secret in it).
        let mut h = Sha256::new();
        h.update(&row.sealed_config);
        h.update(Sha256::digest(&bios_image));
        for f in [&efi_image, &kernel, &initrd] {
            h.update(f.len.to_le_bytes());
            h.update(mtime_nanos(&f.path).to_le_bytes());
        }
        let etag = format!("\"{}\"", hex::encode(&h.finalize()[..16]));
        let image = iso::build(IsoInput {
            volume_id: format!("PLINTH_{}", row.mode.as_str()),
            created: row.created_at,
            grub_cfg: cfg,
            bios_image,
            efi_image,
            kernel,
            initrd,
        })
        .map_err(|e| {
            tracing::error!(error = %e, "the virtual-media ISO cannot be made");
            Error::unavailable(format!("the virtual-media ISO cannot be made: {e}"))
        })?;
        if row.fetches == 1 {
            tracing::info!(machine_id = %row.machine_id, mode = row.mode.as_str(), remote = ?remote, "virtual-media ISO fetched");
        }
        Ok(Some(VmediaIso {
            machine_id: row.machine_id,
            image,
            etag,
            created_at: row.created_at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_config_opens_only_with_its_id_and_machine() {
        let id = new_id();
        assert!(plausible_id(&id));
        let m = Uuid::new_v4();
        let sealed = seal(&id, m, b"linux /plinth/vmlinuz plinth.token=x");
        assert_eq!(
            unseal(&id, m, &sealed).unwrap(),
            b"linux /plinth/vmlinuz plinth.token=x"
        );
        assert!(unseal(&new_id(), m, &sealed).is_none());
        assert!(unseal(&id, Uuid::new_v4(), &sealed).is_none());
        assert!(unseal(&id, m, &sealed[..10]).is_none());
        assert!(!plausible_id("../../etc/passwd"));
        assert!(!plausible_id(&id[1..]));
    }
}
