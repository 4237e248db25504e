//! The dashboard page and its Content-Security-Policy: the page's inline script and style are
//! allowed by their SHA-256, computed from the embedded page, and nothing else runs.

use std::sync::LazyLock;

use base64::Engine;
use sha2::{Digest, Sha256};

/// The dashboard: one page with inline CSS and JavaScript that polls `status.json`.
pub(crate) const DASHBOARD: &str = include_str!("dashboard.html");

/// The page runs its own inline script and style and reads `status.json`, nothing else: the
/// script and style are named by hash, so that anything else inline (a script or handler
/// an injection slipped into the page) is refused.
pub(crate) static DASHBOARD_CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hashes(DASHBOARD, "script"),
        inline_hashes(DASHBOARD, "style"),
    )
});

/// The CSP sources that allow each `<tag>` element of `page` by the SHA-256 of its content
/// (`'sha256-…'`, space-separated), or `'none'` when it has none.
fn inline_hashes(page: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut sources = Vec::new();
    let mut rest = page;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        // `<style>` or `<style media=…>`, not `<styles>`.
        if !rest.starts_with(|c: char| c == '>' || c.is_ascii_whitespace()) {
            continue;
        }
        let Some(start) = rest.find('>') else { break };
        let Some(len) = rest[start + 1..].find(&close) else {
            break;
        };
        // The browser hashes the text as parsed, and HTML parsing turns CRLF and CR into LF.
        let text = rest[start + 1..start + 1 + len]
            .replace("\r\n", "\n")
            .replace('\r', "\n");
        let digest = Sha256::digest(text.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        sources.push(format!("'sha256-{b64}'"));
        rest = &rest[start + 1 + len + close.len()..];
    }
    if sources.is_empty() {
        return "'none'".to_string();
    }
    sources.join(" ")
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_is_small_and_self_contained() {
        assert!(DASHBOARD.len() < 16 * 1024, "{} bytes", DASHBOARD.len());
        // No CDN: the machines herd runs on often have no internet.
        assert!(!DASHBOARD.contains("src=\"http"), "an external script");
        assert!(!DASHBOARD.contains("href=\"http"), "an external link");
    }

    #[test]
    fn the_policy_names_each_inline_block_by_hash() {
        // Known digests (`printf 'alert(1)' | sha256sum`, in base64); CRLF is hashed as LF.
        let page = "<style>p{}</style><script>alert(1)</script><styles>x</styles>\
                    <script type=module>a\r\nb</script>";
        assert_eq!(
            inline_hashes(page, "script"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI=' \
             'sha256-fhj3NzEbLcOy8mndeDlrA1HxT7Zu+oefdoyyMYGIPHg='"
        );
        assert_eq!(inline_hashes(page, "style").matches("'sha256-").count(), 1);
        assert_eq!(inline_hashes("<p>", "script"), "'none'");
        // The dashboard: one script and one style, and no 'unsafe-inline' anywhere.
        for tag in ["script", "style"] {
            assert_eq!(
                inline_hashes(DASHBOARD, tag).matches("'sha256-").count(),
                DASHBOARD.matches(&format!("<{tag}>")).count(),
                "{tag}"
            );
        }
        assert!(
            !DASHBOARD_CSP.contains("unsafe-inline"),
            "{}",
            *DASHBOARD_CSP
        );
        // Inline `style="…"` attributes would need 'unsafe-inline' (or 'unsafe-hashes').
        assert!(!DASHBOARD.contains(" style="), "an inline style attribute");
    }
}
