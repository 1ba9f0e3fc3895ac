//! The boot templates: the shipped defaults, each replaced by a file of the same name in the
//! override directory when there is one, loaded and checked once at start. A variable a
//! template names but the context lacks is an error, never an empty string.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// The shipped templates: (name, text).
pub const DEFAULT_TEMPLATES: &[(&str, &str)] = &[
    (
        "ramdisk.ipxe",
        include_str!("../../templates/boot/ramdisk.ipxe"),
    ),
    (
        "localboot.ipxe",
        include_str!("../../templates/boot/localboot.ipxe"),
    ),
    (
        "poweroff.ipxe",
        include_str!("../../templates/boot/poweroff.ipxe"),
    ),
    ("wait.ipxe", include_str!("../../templates/boot/wait.ipxe")),
    (
        "chain.ipxe",
        include_str!("../../templates/boot/chain.ipxe"),
    ),
];

/// A template that does not parse or does not render. Its Display names the template.
#[derive(Debug, Clone, thiserror::Error)]
#[error("boot template {template}: {message}")]
pub struct TemplateError {
    pub template: String,
    pub message: String,
}

/// The boot templates: the shipped defaults, each replaced by a file of the same name in the
/// override directory when there is one. Loaded (and checked) once, at start.
pub struct Templates {
    env: minijinja::Environment<'static>,
    /// Where each template came from (`shipped` or a path), for logs.
    pub origins: BTreeMap<String, String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("origins", &self.origins)
            .finish()
    }
}

impl Templates {
    pub fn load(override_dir: Option<&Path>) -> std::result::Result<Templates, TemplateError> {
        let mut env = minijinja::Environment::new();
        // A variable the template names but the context lacks is an error, not an empty
        // string: a script with a blank kernel URL would be worse than a 500.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        let mut origins = BTreeMap::new();
        for (name, shipped) in DEFAULT_TEMPLATES {
            let (text, origin) = match override_dir.map(|d| d.join(name)) {
                Some(p) if p.exists() => {
                    let text = std::fs::read_to_string(&p).map_err(|e| TemplateError {
                        template: p.display().to_string(),
                        message: format!("cannot be read: {e}"),
                    })?;
                    (text, p.display().to_string())
                }
                _ => ((*shipped).to_owned(), "shipped".to_owned()),
            };
            env.add_template_owned(*name, text)
                .map_err(|e| TemplateError {
                    template: origin.clone(),
                    message: template_message(&e),
                })?;
            origins.insert((*name).to_owned(), origin);
        }
        Ok(Templates { env, origins })
    }

    /// Renders one template with `ctx`; an error names the template and never yields half a
    /// script.
    pub fn render(
        &self,
        name: &str,
        ctx: &impl Serialize,
    ) -> std::result::Result<String, TemplateError> {
        let err = |e: minijinja::Error| TemplateError {
            template: format!(
                "{name} ({})",
                self.origins.get(name).map_or("unknown", String::as_str)
            ),
            message: template_message(&e),
        };
        self.env
            .get_template(name)
            .map_err(err)?
            .render(ctx)
            .map_err(err)
    }
}

fn template_message(e: &minijinja::Error) -> String {
    let mut m = e.to_string();
    if let Some(line) = e.line() {
        m.push_str(&format!(" (line {line})"));
    }
    m
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::boot::{BootSettings, refusal_context};

    #[test]
    fn broken_override_templates_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wait.ipxe"), "#!ipxe\necho {{ reason }\n").unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.to_string().contains("wait.ipxe"), "{e}");
        // Parses, but names a variable the context lacks: a render error naming it, no text.
        std::fs::write(
            dir.path().join("wait.ipxe"),
            "#!ipxe\necho {{ reason }}\necho {{ no_such_thing }}\n",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert!(t.origins["wait.ipxe"].ends_with("wait.ipxe"));
        assert_eq!(t.origins["ramdisk.ipxe"], "shipped");
        let s = BootSettings::with_root(PathBuf::from("/srv"));
        let e = t
            .render("wait.ipxe", &refusal_context("x", &s))
            .unwrap_err();
        assert!(e.to_string().contains("wait.ipxe"), "{e}");
        assert!(
            e.to_string().contains("no_such_thing") || e.message.contains("undefined"),
            "{e}"
        );
    }
}
