//! Message templates (minijinja, `{{ name }}` syntax), checked at create time and
//! rendered per recipient from its variables.

use minijinja::{Environment, UndefinedBehavior};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A missing variable renders empty rather than failing the send: recipients
    // often lack optional columns. Use `{{ name | default("there") }}` for fallbacks.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
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
    fn syntax_errors_are_reported_at_compile_time() {
        assert!(MessageTemplate::compile("Hi {{ name").is_err());
        assert!(MessageTemplate::compile("{% if %}").is_err());
    }
}
