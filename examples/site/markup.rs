//! Plain functions with no picante in them: front matter and Markdown to
//! HTML (pulldown-cmark). The queries in `queries.rs` call these; keeping
//! them pure makes it obvious that everything incremental about the site
//! generator lives in the queries, not here. Templates are minijinja's (see
//! `queries::environment`).

/// What a page's front matter says.
#[derive(Debug, Default)]
pub struct FrontMatter {
    pub title: Option<String>,
    pub template: Option<String>,
}

/// Splits `text` into its front matter and its Markdown body.
///
/// ```text
/// ---
/// title: Habanero
/// template: doc
/// ---
/// The habanero is small, lantern-shaped and fruity...
/// ```
///
/// A file without a leading `---` line has no front matter. Unknown keys are
/// ignored; a front matter that is opened but never closed is an error.
pub fn split_front_matter(text: &str) -> Result<(FrontMatter, &str), String> {
    let mut front = FrontMatter::default();
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return Ok((front, text));
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        offset += line.len();
        let line = line.trim_end();
        if line == "---" {
            return Ok((front, &rest[offset..]));
        }
        let Some((key, value)) = line.split_once(':') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("front matter line {line:?} is not `key: value`"));
        };
        let value = value.trim().to_string();
        match key.trim() {
            "title" => front.title = Some(value),
            "template" => front.template = Some(value),
            _ => {}
        }
    }
    Err("front matter starts with `---` but has no closing `---` line".to_string())
}

/// Markdown to HTML, with tables enabled.
pub fn markdown_to_html(markdown: &str) -> String {
    use pulldown_cmark::{Options, Parser, html};
    let parser = Parser::new_ext(markdown, Options::ENABLE_TABLES);
    let mut out = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut out, parser);
    out
}
