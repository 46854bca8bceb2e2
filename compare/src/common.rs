//! The user code both engines run (parse, render, site shape, chain step,
//! W7 item, W8 remote parse), the execution counters, and the plain
//! non-incremental recomputations every result is checked against.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub const TEMPLATES: u32 = 10;

/// Execution counters, incremented inside the query bodies of both engines
/// (only one engine runs at a time, so deltas are per engine).
pub static PARSE: AtomicU64 = AtomicU64::new(0);
pub static RENDER: AtomicU64 = AtomicU64::new(0);
pub static SITE: AtomicU64 = AtomicU64::new(0);
pub static OTHER: AtomicU64 = AtomicU64::new(0);

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub parse: u64,
    pub render: u64,
    pub site: u64,
    pub other: u64,
}

pub fn counts() -> Counts {
    Counts {
        parse: PARSE.load(Ordering::Relaxed),
        render: RENDER.load(Ordering::Relaxed),
        site: SITE.load(Ordering::Relaxed),
        other: OTHER.load(Ordering::Relaxed),
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            parse: self.parse - o.parse,
            render: self.render - o.render,
            site: self.site - o.site,
            other: self.other - o.other,
        }
    }
}

/// A parsed page: front matter + whitespace-normalized body.
#[derive(Clone, PartialEq, Eq, Debug, Hash)]
pub struct Parsed {
    pub title: String,
    pub template: u32,
    pub body: String,
}

/// Front matter + body, whitespace-normalized (so whitespace edits cut off).
pub fn parse_text(text: &str) -> Parsed {
    let mut lines = text.lines();
    let title = lines.next().unwrap_or_default().trim().to_string();
    let template = lines
        .next()
        .and_then(|l| l.trim().strip_prefix("template: "))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut body = String::with_capacity(text.len());
    for word in lines.flat_map(str::split_whitespace) {
        if !body.is_empty() {
            body.push(' ');
        }
        body.push_str(word);
    }
    Parsed {
        title,
        template,
        body,
    }
}

pub fn render_text(page: &Parsed, template: &str) -> Arc<str> {
    template
        .replace("{{title}}", &page.title)
        .replace("{{body}}", &page.body)
        .into()
}

/// The site's value: the total length of all rendered pages.
pub fn site_value<'a>(renders: impl Iterator<Item = &'a Arc<str>>) -> u64 {
    renders.map(|p| p.len() as u64).sum()
}

/// ~2 KB of page source; `variant` changes the value (and the render).
pub fn source(file: u32, variant: u32) -> Arc<str> {
    let mut s = format!("Page {file}\ntemplate: {}\n", file % TEMPLATES);
    for line in 0..40 {
        s.push_str(&format!(
            "word{file} line{line} some text about peppers v{variant}\n"
        ));
    }
    s.into()
}

/// A whitespace-only variant of `source(file, 0)` (parses to the same value).
pub fn whitespace(file: u32, odd: bool) -> Arc<str> {
    let base = source(file, 0);
    if odd {
        format!("{base}   \n").replace(" some", "  some").into()
    } else {
        base
    }
}

pub fn template(t: u32, variant: u32) -> Arc<str> {
    format!("<html><!-- t{t} v{variant} --><h1>{{{{title}}}}</h1><main>{{{{body}}}}</main></html>")
        .into()
}

/// The site's inputs: `files` sources (variant 0) and the templates.
pub fn inputs(files: u32) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
    (
        (0..files).map(|f| source(f, 0)).collect(),
        (0..TEMPLATES).map(|t| template(t, 0)).collect(),
    )
}

/// Plain recomputation of one page.
pub fn plain_render(src: &str, templates: &[Arc<str>]) -> Arc<str> {
    let p = parse_text(src);
    render_text(&p, &templates[p.template as usize])
}

/// Plain recomputation of the whole site.
pub fn plain_site(sources: &[Arc<str>], templates: &[Arc<str>]) -> u64 {
    let renders: Vec<Arc<str>> = sources.iter().map(|s| plain_render(s, templates)).collect();
    site_value(renders.iter())
}

/// W4: level 0 is `base / 2` (integer halving makes 2 → 3 a cutoff), level i
/// is level i-1 plus one.
pub fn plain_chain(base: u64, depth: u32) -> u64 {
    base / 2 + u64::from(depth)
}

/// W7: the value of item `k` under `seed`.
pub fn item_value(seed: u64, k: u32) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(k)
}

/// W8: what a page's "remote parse" returns (after the simulated call).
pub fn remote_value(page: u32) -> u64 {
    u64::from(page).wrapping_mul(31) + 7
}

pub fn plain_remote_site(pages: u32) -> u64 {
    (0..pages).map(remote_value).sum()
}
