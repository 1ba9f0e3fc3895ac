//! The UI's static files (versioned URLs, long caching) and its templates, compiled into the binary.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;

pub(crate) struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

pub(crate) const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../../web/static/app.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../../../web/static/icon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../../web/static/app.js"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../../web/static/console.js"),
    },
    // From the npm package @xterm/xterm, fetched and checked by web/vendor.sh.
    Asset {
        name: "xterm.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../../web/static/vendor/xterm.js"),
    },
    Asset {
        name: "xterm.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../../web/static/vendor/xterm.css"),
    },
];

/// A short content hash per asset: its URL changes with its content, so it can be cached for
/// good.
pub(crate) fn asset_versions() -> &'static HashMap<&'static str, String> {
    static V: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    V.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                // FNV-1a: enough to tell versions apart; not a security boundary.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in a.body {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
                }
                (a.name, format!("{:012x}", h & 0xffff_ffff_ffff))
            })
            .collect()
    })
}

pub(crate) async fn static_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let etag = format!("\"{}\"", asset_versions()[asset.name]);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, asset.content_type.to_owned()),
            (
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".to_owned(),
            ),
            (header::ETAG, etag),
        ],
        asset.body,
    )
        .into_response()
}

pub(crate) const TEMPLATES: &[(&str, &str)] = &[
    (
        "base.html",
        include_str!("../../../../web/templates/base.html"),
    ),
    (
        "login.html",
        include_str!("../../../../web/templates/login.html"),
    ),
    (
        "error.html",
        include_str!("../../../../web/templates/error.html"),
    ),
    (
        "machines.html",
        include_str!("../../../../web/templates/machines.html"),
    ),
    (
        "machine.html",
        include_str!("../../../../web/templates/machine.html"),
    ),
    (
        "machine_health.html",
        include_str!("../../../../web/templates/machine_health.html"),
    ),
    (
        "machine_firmware.html",
        include_str!("../../../../web/templates/machine_firmware.html"),
    ),
    (
        "timeline.html",
        include_str!("../../../../web/templates/timeline.html"),
    ),
    (
        "machine_console.html",
        include_str!("../../../../web/templates/machine_console.html"),
    ),
    (
        "machine_bios.html",
        include_str!("../../../../web/templates/machine_bios.html"),
    ),
    (
        "racks.html",
        include_str!("../../../../web/templates/racks.html"),
    ),
    (
        "rack.html",
        include_str!("../../../../web/templates/rack.html"),
    ),
    (
        "elevation.html",
        include_str!("../../../../web/templates/elevation.html"),
    ),
    (
        "enroll.html",
        include_str!("../../../../web/templates/enroll.html"),
    ),
    (
        "discovered.html",
        include_str!("../../../../web/templates/discovered.html"),
    ),
];

pub(crate) fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, src) in TEMPLATES {
            env.add_template(name, src)
                .unwrap_or_else(|e| panic!("web/templates/{name}: {e:#}"));
        }
        // Our own URLs, made of safe characters: not HTML-escaped (which would turn every '/'
        // into an entity).
        env.add_function("asset", |name: &str| -> minijinja::Value {
            minijinja::Value::from_safe_string(match asset_versions().get(name) {
                Some(v) => format!("/static/{name}?v={v}"),
                None => format!("/static/{}", url_encode(name)),
            })
        });
        env.add_filter("when", |s: String| -> String {
            match chrono::DateTime::parse_from_rfc3339(&s) {
                Ok(t) => t
                    .with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string(),
                Err(_) => s,
            }
        });
        env.add_filter("bytes", |n: u64| -> String { human_bytes(n) });
        env.add_filter("urlencode", |s: String| -> String { url_encode(&s) });
        env
    })
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub(crate) use plinth_types::percent_encode as url_encode;

/// Renders a template; a template error is a bug, logged and shown as a 500.
pub(crate) fn render(name: &str, ctx: minijinja::Value) -> Response {
    match env().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %format!("{e:#}"), "rendering a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "page rendering failed").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_sizes_read_well() {
        let _ = env();
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(32 << 20), "32 MiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
    }
}
