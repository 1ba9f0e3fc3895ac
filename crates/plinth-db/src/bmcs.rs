//! bmcs: how to reach a machine's baseboard controller. The password is stored only as
//! AEAD ciphertext (encrypted and decrypted by plinth-core with the configured key).

use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct BmcRow {
    pub machine_id: Uuid,
    pub protocol: String,
    pub address: String,
    pub username: String,
    pub verify_tls: bool,
}

pub struct NewBmc<'a> {
    pub protocol: &'a str,
    pub address: &'a str,
    pub username: &'a str,
    pub password_nonce: &'a [u8],
    pub password_ciphertext: &'a [u8],
    pub verify_tls: bool,
}

/// Inserts or replaces the machine's BMC.
pub async fn upsert(
    conn: &mut PgConnection,
    machine_id: Uuid,
    b: &NewBmc<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into bmcs (machine_id, protocol, address, username, password_nonce, password_ciphertext, verify_tls)
         values ($1, $2, $3, $4, $5, $6, $7)
         on conflict (machine_id) do update set protocol = excluded.protocol, address = excluded.address,
             username = excluded.username, password_nonce = excluded.password_nonce,
             password_ciphertext = excluded.password_ciphertext, verify_tls = excluded.verify_tls,
             updated_at = now()",
        machine_id,
        b.protocol,
        b.address,
        b.username,
        b.password_nonce,
        b.password_ciphertext,
        b.verify_tls
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, machine_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!("delete from bmcs where machine_id = $1", machine_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The BMCs of these machines, without their secrets.
pub async fn for_machines(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<BmcRow>, sqlx::Error> {
    sqlx::query_as!(
        BmcRow,
        "select machine_id, protocol, address, username, verify_tls from bmcs where machine_id = any($1)",
        ids
    )
    .fetch_all(conn)
    .await
}

/// The encrypted password of one machine's BMC: (nonce, ciphertext). For the BMC drivers.
pub async fn secret(
    conn: &mut PgConnection,
    machine_id: Uuid,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query!(
        "select password_nonce, password_ciphertext from bmcs where machine_id = $1",
        machine_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.password_nonce, r.password_ciphertext)))
}
