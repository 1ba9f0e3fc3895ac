//! images: the catalog of boot images (files under the images root, known by name).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::api::ImageKind;

use crate::Result;

#[derive(Debug, Clone)]
pub struct ImageRow {
    pub id: Uuid,
    pub name: String,
    pub kind: ImageKind,
    pub arch: String,
    pub path: String,
    pub size: i64,
    pub sha256: String,
    pub source: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub firmware: Option<String>,
    pub raw_size: Option<i64>,
    pub raw_sha256: Option<String>,
}

pub struct NewImage<'a> {
    pub name: &'a str,
    pub kind: ImageKind,
    pub arch: &'a str,
    pub path: &'a str,
    pub size: i64,
    pub sha256: &'a str,
    pub source: &'a str,
    pub created_by: &'a str,
}

pub async fn insert(conn: &mut PgConnection, i: NewImage<'_>) -> Result<ImageRow> {
    sqlx::query_as!(
        ImageRow,
        r#"insert into images (name, kind, arch, path, size, sha256, source, created_by)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         returning id, name, kind as "kind: ImageKind", arch, path, size, sha256, source, created_by, created_at, firmware, raw_size, raw_sha256"#,
        i.name,
        i.kind.as_str(),
        i.arch,
        i.path,
        i.size,
        i.sha256,
        i.source,
        i.created_by
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<ImageRow>> {
    sqlx::query_as!(
        ImageRow,
        r#"select id, name, kind as "kind: ImageKind", arch, path, size, sha256, source, created_by, created_at, firmware, raw_size, raw_sha256
         from images order by name"#
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn get(conn: &mut PgConnection, name: &str) -> Result<Option<ImageRow>> {
    sqlx::query_as!(
        ImageRow,
        r#"select id, name, kind as "kind: ImageKind", arch, path, size, sha256, source, created_by, created_at, firmware, raw_size, raw_sha256
         from images where name = $1"#,
        name
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Deletes the entry (locked by the caller's transaction until it commits).
pub async fn delete(conn: &mut PgConnection, name: &str) -> Result<Option<ImageRow>> {
    sqlx::query_as!(
        ImageRow,
        r#"delete from images where name = $1
         returning id, name, kind as "kind: ImageKind", arch, path, size, sha256, source, created_by, created_at, firmware, raw_size, raw_sha256"#,
        name
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Records a disk image's firmware, uncompressed size and SHA-256 of those bytes (hex).
pub async fn set_disk_info(
    conn: &mut PgConnection,
    id: Uuid,
    firmware: Option<&str>,
    raw_size: Option<i64>,
    raw_sha256: Option<&str>,
) -> Result<ImageRow> {
    sqlx::query_as!(
        ImageRow,
        r#"update images set firmware = $2, raw_size = $3, raw_sha256 = $4 where id = $1
         returning id, name, kind as "kind: ImageKind", arch, path, size, sha256, source, created_by, created_at, firmware, raw_size, raw_sha256"#,
        id,
        firmware,
        raw_size,
        raw_sha256
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}
