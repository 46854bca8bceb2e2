//! Plain functions with no picante in them: front matter, Markdown to HTML,
//! and a tiny template language. The queries in `queries.rs` call these;
//! keeping them pure makes it obvious that everything incremental about the
//! site generator lives in the queries, not here. (`Template` derives
//! `facet::Facet` only so that the memos holding one can be saved to the
//! on-disk cache.)

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

/// Escapes text for use inside HTML.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq, facet::Facet)]
#[repr(u8)]
pub enum Segment {
    /// Literal text.
    Text(String),
    /// `{{name}}`: a variable filled in at render time.
    Var(String),
    /// `{{> name}}`: the partial `partials/name.html`, included by name.
    Include(String),
}

/// A parsed template: text, variables and includes.
#[derive(Clone, Debug, Default, PartialEq, Eq, facet::Facet)]
pub struct Template {
    pub segments: Vec<Segment>,
}

impl Template {
    /// Parses `{{var}}` and `{{> partial}}` out of `text`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segments.push(Segment::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                let line = text[..text.len() - rest.len() + start]
                    .lines()
                    .count()
                    .max(1);
                return Err(format!("line {line}: `{{{{` is never closed with `}}}}`"));
            };
            let inner = after[..end].trim();
            let (is_include, name) = match inner.strip_prefix('>') {
                Some(name) => (true, name.trim()),
                None => (false, inner),
            };
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!("`{{{{{inner}}}}}` is not a valid tag name"));
            }
            segments.push(if is_include {
                Segment::Include(name.to_string())
            } else {
                Segment::Var(name.to_string())
            });
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        Ok(Template { segments })
    }

    /// Whether the template uses variable `name`.
    pub fn uses(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Var(v) if v == name))
    }

    /// Fills the variables in. `lookup` returns `None` for an unknown
    /// variable, which is an error. Includes must have been resolved first.
    pub fn fill<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> Result<String, String> {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Var(name) => match lookup(name) {
                    Some(value) => out.push_str(value),
                    None => return Err(format!("unknown variable `{{{{{name}}}}}`")),
                },
                Segment::Include(name) => {
                    return Err(format!("unresolved include `{{{{> {name}}}}}`"));
                }
            }
        }
        Ok(out)
    }
}
