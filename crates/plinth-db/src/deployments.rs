//! deployments: what a deploy writes to a machine, kept while its allocation lives.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::{AllocationId, ImageId, MachineId};

use crate::Result;

#[derive(Debug, Clone)]
pub struct DeploymentRow {
    pub machine_id: MachineId,
    pub allocation_id: AllocationId,
    pub image_id: ImageId,
    pub image_name: String,
    pub root_device: String,
    pub root_device_hint: Option<serde_json::Value>,
    pub instance_id: Uuid,
    pub hostname: Option<String>,
    pub user_data: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub network_config: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

pub struct NewDeployment<'a> {
    pub machine_id: MachineId,
    pub allocation_id: AllocationId,
    pub image_id: ImageId,
    pub root_device: &'a str,
    pub root_device_hint: Option<serde_json::Value>,
    pub hostname: Option<&'a str>,
    pub user_data: Option<&'a str>,
    pub ssh_authorized_keys: &'a [String],
    pub network_config: Option<&'a str>,
    pub created_by: &'a str,
}

/// Records a machine's deployment, replacing an earlier one (a failed deploy retried).
pub async fn upsert(conn: &mut PgConnection, d: NewDeployment<'_>) -> Result<Uuid> {
    sqlx::query_scalar!(
        "insert into deployments (machine_id, allocation_id, image_id, root_device,
             root_device_hint, hostname, user_data, ssh_authorized_keys, network_config, created_by)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         on conflict (machine_id) do update set allocation_id = excluded.allocation_id,
             image_id = excluded.image_id, root_device = excluded.root_device,
             root_device_hint = excluded.root_device_hint, instance_id = gen_random_uuid(),
             hostname = excluded.hostname, user_data = excluded.user_data,
             ssh_authorized_keys = excluded.ssh_authorized_keys,
             network_config = excluded.network_config, created_by = excluded.created_by,
             created_at = now()
         returning instance_id",
        d.machine_id as MachineId,
        d.allocation_id as AllocationId,
        d.image_id as ImageId,
        d.root_device,
        d.root_device_hint,
        d.hostname,
        d.user_data,
        d.ssh_authorized_keys,
        d.network_config,
        d.created_by
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn get(conn: &mut PgConnection, machine_id: MachineId) -> Result<Option<DeploymentRow>> {
    sqlx::query_as!(
        DeploymentRow,
        r#"select d.machine_id as "machine_id: MachineId", d.allocation_id as "allocation_id: AllocationId",
                d.image_id as "image_id: ImageId", i.name as image_name, d.root_device,
                d.root_device_hint, d.instance_id, d.hostname, d.user_data,
                d.ssh_authorized_keys, d.network_config, d.created_by, d.created_at
         from deployments d join images i on i.id = d.image_id
         where d.machine_id = $1"#,
        machine_id as MachineId
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Forgets a machine's deployment (release): its user data and keys go with it.
pub async fn delete(conn: &mut PgConnection, machine_id: MachineId) -> Result<bool> {
    let n = sqlx::query!(
        "delete from deployments where machine_id = $1",
        machine_id as MachineId
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// The deployment with this instance id (what the metadata endpoint serves).
pub async fn by_instance(
    conn: &mut PgConnection,
    instance_id: Uuid,
) -> Result<Option<DeploymentRow>> {
    sqlx::query_as!(
        DeploymentRow,
        r#"select d.machine_id as "machine_id: MachineId", d.allocation_id as "allocation_id: AllocationId",
                d.image_id as "image_id: ImageId", i.name as image_name, d.root_device,
                d.root_device_hint, d.instance_id, d.hostname, d.user_data,
                d.ssh_authorized_keys, d.network_config, d.created_by, d.created_at
         from deployments d join images i on i.id = d.image_id
         where d.instance_id = $1"#,
        instance_id
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// The addresses a machine answers from: those plinth leases to its NICs now, their
/// reservations, and the address its last deploy token was bound to (where plinth does not
/// serve its DHCP). What the metadata endpoint accepts requests for its deployment from.
pub async fn machine_addresses(
    conn: &mut PgConnection,
    machine_id: MachineId,
) -> Result<Vec<IpAddr>> {
    let rows = sqlx::query_scalar!(
        r#"select l.address as "a!: IpAddr" from leases l join nics n on n.mac = l.mac and n.active
           where n.machine_id = $1 and l.state = 'bound' and l.expires_at > now()
           union
           select n.ipv4 from nics n
           where n.machine_id = $1 and n.active and n.ipv4 is not null
           union
           (select t.bound_ip from agent_tokens t
            where t.machine_id = $1 and t.mode = 'deploy' and t.bound_ip is not null
            order by t.created_at desc limit 1)"#,
        machine_id as MachineId
    )
    .fetch_all(conn)
    .await?;
    Ok(rows)
}
