//! The wire protocol between the host and the plugin process: one message
//! per line on the child's stdin/stdout, fields separated by tabs, with `\`,
//! tab, CR and newline escaped inside fields.
//!
//! ```text
//! host → plugin   render      <req> <page> <template> <title> <body>
//! plugin → host   fetch       <req> <cb> <name>          a callback: "send me template <name>"
//! host → plugin   fetched     <req> <cb> <text>          the answer
//! host → plugin   fetch-error <req> <cb> <message>
//! plugin → host   done        <req> <html>
//! plugin → host   failed      <req> <message>
//! ```
//!
//! `req` numbers a render request, so several can be in flight on the one
//! pipe; `cb` numbers a callback within its request.

/// One message, in either direction.
#[derive(Debug, PartialEq)]
pub enum Msg {
    /// Render a page with the named template.
    Render {
        req: u64,
        page: String,
        template: String,
        title: String,
        body: String,
    },
    /// While rendering `req`, the plugin needs the template or partial `name`.
    Fetch { req: u64, cb: u64, name: String },
    /// The host's answer to a `Fetch`.
    Fetched {
        req: u64,
        cb: u64,
        result: Result<String, String>,
    },
    /// The plugin finished `req`.
    Done {
        req: u64,
        result: Result<String, String>,
    },
}

impl Msg {
    /// The message as one line, without the trailing newline.
    pub fn encode(&self) -> String {
        let (tag, fields): (&str, Vec<String>) = match self {
            Msg::Render {
                req,
                page,
                template,
                title,
                body,
            } => (
                "render",
                vec![
                    req.to_string(),
                    page.clone(),
                    template.clone(),
                    title.clone(),
                    body.clone(),
                ],
            ),
            Msg::Fetch { req, cb, name } => {
                ("fetch", vec![req.to_string(), cb.to_string(), name.clone()])
            }
            Msg::Fetched { req, cb, result } => (
                if result.is_ok() {
                    "fetched"
                } else {
                    "fetch-error"
                },
                vec![
                    req.to_string(),
                    cb.to_string(),
                    result.clone().unwrap_or_else(|e| e),
                ],
            ),
            Msg::Done { req, result } => (
                if result.is_ok() { "done" } else { "failed" },
                vec![req.to_string(), result.clone().unwrap_or_else(|e| e)],
            ),
        };
        let mut line = tag.to_string();
        for field in fields {
            line.push('\t');
            escape_into(&field, &mut line);
        }
        line
    }

    /// Parses one line (without its newline).
    pub fn decode(line: &str) -> Result<Msg, String> {
        let mut parts = line.split('\t');
        let tag = parts.next().unwrap_or_default();
        let fields: Vec<String> = parts.map(unescape).collect::<Result<_, _>>()?;
        let num = |i: usize| -> Result<u64, String> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| format!("{tag}: field {i} is not a number"))
        };
        let text = |i: usize| -> Result<String, String> {
            fields
                .get(i)
                .cloned()
                .ok_or_else(|| format!("{tag}: missing field {i}"))
        };
        Ok(match tag {
            "render" => Msg::Render {
                req: num(0)?,
                page: text(1)?,
                template: text(2)?,
                title: text(3)?,
                body: text(4)?,
            },
            "fetch" => Msg::Fetch {
                req: num(0)?,
                cb: num(1)?,
                name: text(2)?,
            },
            "fetched" | "fetch-error" => Msg::Fetched {
                req: num(0)?,
                cb: num(1)?,
                result: if tag == "fetched" {
                    Ok(text(2)?)
                } else {
                    Err(text(2)?)
                },
            },
            "done" | "failed" => Msg::Done {
                req: num(0)?,
                result: if tag == "done" {
                    Ok(text(1)?)
                } else {
                    Err(text(1)?)
                },
            },
            other => return Err(format!("unknown message {other:?}")),
        })
    }
}

fn escape_into(field: &str, out: &mut String) {
    for c in field.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            _ => out.push(c),
        }
    }
}

fn unescape(field: &str) -> Result<String, String> {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            other => return Err(format!("bad escape \\{other:?} in {field:?}")),
        }
    }
    Ok(out)
}
