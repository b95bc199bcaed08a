//! Message templates (minijinja, `{{ name }}` syntax), checked at create time and
//! rendered per recipient from its variables.
//!
//! Rendering is forgiving: a missing variable renders empty, and so does an
//! attribute of a missing object (`{{ profile.first }}` without `profile`), so
//! `{{ profile.first | default("there") }}` works. [`MessageTemplate::variables`]
//! lists the top-level names a template reads, which the API shows and which a
//! strict template requires of every imported row.

use std::collections::BTreeSet;

use minijinja::{Environment, UndefinedBehavior};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A missing variable renders empty rather than failing the send: recipients
    // often lack optional columns. Chainable (not Lenient) so that an attribute
    // of a missing object is undefined too instead of an error, and
    // `{{ profile.first | default("there") }}` has something to default.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    // Bounds the work a hostile template can make a sender do per message.
    env.set_fuel(Some(100_000));
    env
}

/// A compiled template, reusable across recipients.
#[derive(Debug)]
pub struct MessageTemplate {
    env: Environment<'static>,
}

impl MessageTemplate {
    pub fn compile(body: &str) -> Result<Self, TemplateError> {
        let mut env = environment();
        env.add_template_owned("body", body.to_owned())
            .map_err(|e| TemplateError(format!("template syntax error: {e}")))?;
        Ok(Self { env })
    }

    /// The top-level variables the template reads, sorted: `Hi {{ profile.first }}
    /// {% for c in codes %}{{ c }}{% endfor %}` reads `codes` and `profile`.
    /// Names the template assigns itself (`set`, loop variables) and the
    /// environment's globals (`range`, `dict`, ...) are not listed.
    pub fn variables(&self) -> Vec<String> {
        let Ok(template) = self.env.get_template("body") else {
            return Vec::new();
        };
        let globals: BTreeSet<&str> = self.env.globals().map(|(name, _)| name).collect();
        let names: BTreeSet<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|name| !globals.contains(name.as_str()))
            .collect();
        names.into_iter().collect()
    }

    pub fn render(&self, variables: &serde_json::Value) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template("body")
            .map_err(|e| TemplateError(e.to_string()))?;
        template
            .render(minijinja::value::Serde(variables))
            .map_err(|e| TemplateError(format!("template render error: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_render_recipient_variables() {
        let t = MessageTemplate::compile("Hi {{ name }}, code {{ code | upper }}").unwrap();
        assert_eq!(
            t.render(&json!({"name": "Ana", "code": "x1"})).unwrap(),
            "Hi Ana, code X1"
        );
        assert_eq!(t.render(&json!({})).unwrap(), "Hi , code ");
    }

    #[test]
    fn missing_objects_and_their_attributes_render_empty_and_default_works() {
        let t = MessageTemplate::compile(r#"Hi {{ profile.first | default("there") }}"#).unwrap();
        assert_eq!(t.render(&json!({})).unwrap(), "Hi there");
        assert_eq!(
            t.render(&json!({"profile": {"first": "Ana"}})).unwrap(),
            "Hi Ana"
        );
        let t = MessageTemplate::compile("[{{ profile.first }}|{{ a.b.c }}]").unwrap();
        assert_eq!(t.render(&json!({})).unwrap(), "[|]");
    }

    #[test]
    fn variables_lists_the_top_level_names_a_template_reads() {
        let t = MessageTemplate::compile(
            "{% set greeting = 'Hi' %}{{ greeting }} {{ profile.first | default(name) }}\
             {% for c in codes %}{{ c }}{{ loop.index }}{% endfor %}{% for i in range(2) %}{% endfor %}",
        )
        .unwrap();
        assert_eq!(t.variables(), ["codes", "name", "profile"]);
        assert!(
            MessageTemplate::compile("plain")
                .unwrap()
                .variables()
                .is_empty()
        );
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        assert!(MessageTemplate::compile("Hi {{ name").is_err());
        assert!(MessageTemplate::compile("{% if %}").is_err());
    }
}
