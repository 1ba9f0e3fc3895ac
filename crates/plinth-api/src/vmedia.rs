//! `GET|HEAD /boot/vmedia/{id}.iso`: a virtual-media boot's ISO (plinth-core's `vmedia`), for
//! the BMC that attaches it, without authentication (the unguessable id is the capability).
//! Answered like an image file (`file_plan::plan`: Content-Length, ETag, Last-Modified,
//! conditional requests, one byte range) with a body streamed from the ISO's extents: the
//! bytes plinth wrote for this boot, then ranges of the kernel and initrd files. An id that is
//! not a live boot's, for whatever reason, is a plain 404: nothing tells an unknown id from an
//! expired or used one.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use plinth_core::App;
use plinth_core::vmedia::iso::Slice;

use crate::boot::Peer;
use crate::error::ApiError;
use crate::file_plan::plan;

/// Bytes of zeros (padding) sent at a time.
const ZERO_CHUNK: u64 = 64 * 1024;

enum Part {
    Bytes(Bytes),
    File {
        path: std::path::PathBuf,
        offset: u64,
        len: u64,
    },
    Zeros(u64),
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found\n",
    )
        .into_response()
}

fn part_stream(p: Part) -> BoxStream<'static, std::io::Result<Bytes>> {
    match p {
        Part::Bytes(b) => stream::once(async move { Ok(b) }).boxed(),
        Part::Zeros(n) => {
            let chunks = (0..n.div_ceil(ZERO_CHUNK)).map(move |i| {
                Ok(Bytes::from(vec![
                    0u8;
                    (n - i * ZERO_CHUNK).min(ZERO_CHUNK)
                        as usize
                ]))
            });
            stream::iter(chunks).boxed()
        }
        Part::File { path, offset, len } => stream::once(async move {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let mut f = tokio::fs::File::open(&path).await?;
            // A file shorter than the layout says (replaced under us) ends the body early:
            // the client sees a short read, never other bytes.
            if f.metadata().await?.len() < offset + len {
                return Err(std::io::Error::other(
                    "an ISO file changed size while being served",
                ));
            }
            f.seek(std::io::SeekFrom::Start(offset)).await?;
            Ok(tokio_util::io::ReaderStream::with_capacity(
                f.take(len),
                256 * 1024,
            ))
        })
        .try_flatten()
        .boxed(),
    }
}

/// `GET|HEAD /boot/vmedia/{name}` with `{name}` = `{id}.iso`.
pub async fn iso(
    State(app): State<App>,
    Peer(peer): Peer,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = name.strip_suffix(".iso") else {
        return not_found();
    };
    let iso = match app.vmedia_iso(id, peer.map(|p| p.ip())).await {
        Ok(Some(iso)) => iso,
        Ok(None) => {
            tracing::debug!(peer = ?peer, "virtual-media ISO request for no live boot");
            return not_found();
        }
        Err(e) => return ApiError(e).into_response(),
    };
    let p = plan(iso.image.len(), iso.created_at.into(), &iso.etag, &headers);
    let body = match p.body {
        Some((start, count)) => {
            let parts: Vec<Part> = iso
                .image
                .slices(start..start + count)
                .into_iter()
                .map(|s| match s {
                    Slice::Bytes(b) => Part::Bytes(Bytes::copy_from_slice(b)),
                    Slice::File { path, offset, len } => Part::File {
                        path: path.to_owned(),
                        offset,
                        len,
                    },
                    Slice::Zeros(n) => Part::Zeros(n),
                })
                .collect();
            Body::from_stream(stream::iter(parts).flat_map(part_stream))
        }
        None => Body::empty(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = p.status;
    *resp.headers_mut() = p.headers;
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}
