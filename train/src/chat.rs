//! Chat templates: a model's `tokenizer.chat_template` (a Jinja template, as Hugging Face
//! `transformers` renders it: `trim_blocks` and `lstrip_blocks` on, Python string methods
//! such as `.strip()` available, `raise_exception`) rendered with `minijinja` over a list of
//! messages, `bos_token`, `eos_token` and `add_generation_prompt`.

use crate::core::Model;
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

/// Template instructions a rendering may take (the published templates take a few
/// thousand for a short conversation).
const FUEL: u64 = 2_000_000;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// A model file's chat template, if it has one.
pub fn template_of<B: AsRef<[u8]>>(m: &Model<B>) -> Option<String> {
    m.get_str("tokenizer.chat_template").map(str::to_string)
}

/// Render `template` over `messages` as transformers' `apply_chat_template` does.
pub fn render(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
) -> Result<String, String> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?,
    );
    // a template from a file never runs away (`range(10**9)`): a bounded number of steps
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| format!("tokenizer.chat_template does not parse: {e}"))?;
    let t = env
        .get_template("chat")
        .map_err(|e| format!("tokenizer.chat_template: {e}"))?;
    let messages: Vec<std::collections::BTreeMap<String, String>> = messages
        .iter()
        .map(|m| {
            [
                ("role".to_string(), m.role.clone()),
                ("content".to_string(), m.content.clone()),
            ]
            .into()
        })
        .collect();
    t.render(context! {
        messages => messages,
        bos_token => bos_token,
        eos_token => eos_token,
        add_generation_prompt => add_generation_prompt,
    })
    .map_err(|e| format!("tokenizer.chat_template: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Vec<Message> {
        vec![Message {
            role: "user".into(),
            content: s.into(),
        }]
    }

    #[test]
    fn chatml_renders_with_python_methods_and_trimmed_blocks() {
        let t = "{% for m in messages %}\n<|im_start|>{{ m['role'] }}\n{{ m['content'].strip() }}<|im_end|>\n{% endfor %}\n{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let out = render(t, &user("  hi  "), "<s>", "</s>", true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_and_bad_templates_are_errors() {
        let t = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message first') }}{% endif %}";
        let e = render(t, &user("x"), "", "", true).unwrap_err();
        assert!(e.contains("a system message first"), "{e}");
        let e = render("{% for %}", &user("x"), "", "", true).unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
        // a runaway loop from a hostile file ends with an error
        let e = render(
            "{% for i in range(100000000) %}x{% endfor %}",
            &user("x"),
            "",
            "",
            true,
        )
        .unwrap_err();
        assert!(!e.is_empty());
    }
}
