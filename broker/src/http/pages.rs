//! The server-rendered pages people see while signing in and connecting an MCP client:
//! sign-in, consent, waiting for an approver, and errors. Plain HTML forms that work
//! without JavaScript, styled by the approver page's stylesheet, every value escaped,
//! served with a strict Content-Security-Policy (no script at all; forms post only to
//! this broker, or — for consent, whose answer redirects — to the client's redirect).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::connections::service::ProviderView;
use crate::oauth::server::{Authorization, ConsentChoices};

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: `title`, then `body` (already HTML). `form_target` holds extra
/// `form-action` sources, space-separated (the origin a consent answer redirects to, the
/// providers a connect form leads to).
pub fn page(status: StatusCode, title: &str, body: &str, form_target: Option<&str>) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Leash</title><link rel=\"stylesheet\" href=\"/ui/app.css\"></head>\
         <body><header><h1>Leash <span class=\"sub\">{title}</span></h1></header>\
         <main><div class=\"card narrow\">{body}</div></main></body></html>\n",
        title = escape(title),
    );
    let extra: String = form_target
        .unwrap_or_default()
        .split(' ')
        .filter(|t| !t.is_empty() && !t.contains([';', ',', '\'', '"', '\n', '\r', '\t']))
        .map(|t| format!(" {t}"))
        .collect();
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; \
         form-action 'self'{extra}; frame-ancestors 'none'"
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An error page (nothing is redirected).
pub fn error(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Cannot continue",
        &format!("<p class=\"error\">{}</p>", escape(message)),
        None,
    )
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        escape(name),
        escape(value)
    )
}

/// The sign-in form, and the link to the OpenID provider (`provider`) when there is one.
pub fn sign_in(
    status: StatusCode,
    next: &str,
    csrf: &str,
    message: Option<&str>,
    provider: Option<&str>,
) -> Response {
    let notice = message
        .map(|m| format!("<p class=\"error\">{}</p>", escape(m)))
        .unwrap_or_default();
    let oidc = provider
        .map(|name| {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("next", next);
            format!(
                "<p><a class=\"primary\" href=\"/signin/oidc?{}\">Sign in with {}</a></p>\
                 <p class=\"muted\">Or with a local account:</p>",
                escape(&query.finish()),
                escape(name)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h2>Sign in</h2>{notice}{oidc}<form method=\"post\" action=\"/signin\">\
         <label for=\"username\">User name</label>\
         <input class=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
         <label for=\"password\">Password</label>\
         <input class=\"text\" id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         {}{}<button class=\"primary\" type=\"submit\">Sign in</button></form>",
        hidden("next", next),
        hidden("csrf", csrf),
    );
    page(status, "Sign in", &body, None)
}

/// A window in words.
fn window_text(seconds: i64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{} day{}", s / 86_400, if s == 86_400 { "" } else { "s" }),
        s if s % 3600 == 0 => format!("{} hour{}", s / 3600, if s == 3600 { "" } else { "s" }),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// The consent page: the task this client asks `user` to open.
pub fn consent(
    user: &str,
    request: &Authorization,
    choices: &ConsentChoices,
    csrf: &str,
    redirect_origin: Option<&str>,
) -> Response {
    let params = &request.params;
    let mut fields = String::new();
    for (name, value) in [
        ("response_type", params.response_type.as_deref()),
        ("client_id", params.client_id.as_deref()),
        ("redirect_uri", params.redirect_uri.as_deref()),
        ("code_challenge", params.code_challenge.as_deref()),
        (
            "code_challenge_method",
            params.code_challenge_method.as_deref(),
        ),
        ("state", params.state.as_deref()),
        ("resource", params.resource.as_deref()),
        ("scope", params.scope.as_deref()),
    ] {
        if let Some(value) = value {
            fields.push_str(&hidden(name, value));
        }
    }
    fields.push_str(&hidden("csrf", csrf));
    let tools: String = choices
        .tools
        .iter()
        .map(|(name, description, checked)| {
            format!(
                "<label class=\"check\"><input type=\"checkbox\" name=\"tools\" value=\"{}\"{}> \
                 <span><code>{}</code> <span class=\"muted\">{}</span></span></label>",
                escape(name),
                if *checked { " checked" } else { "" },
                escape(name),
                escape(description),
            )
        })
        .collect();
    let windows: String = choices
        .windows
        .iter()
        .map(|w| {
            format!(
                "<option value=\"{w}\"{}>{}</option>",
                if *w == choices.default_window {
                    " selected"
                } else {
                    ""
                },
                window_text(*w)
            )
        })
        .collect();
    let host = reqwest::Url::parse(&request.redirect_uri)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(str::to_string)
                .or_else(|| Some(u.scheme().to_string()))
        })
        .unwrap_or_default();
    let body = format!(
        "<h2>Connect <bdi>{client}</bdi></h2>\
         <p><strong><bdi>{client}</bdi></strong> asks to use tools on your behalf, as <strong>{user}</strong>. \
         It will be sent back to <code>{host}</code>.{published}</p>\
         <form method=\"post\" action=\"/oauth/authorize\">{fields}\
         <label for=\"purpose\">What is this access for?</label>\
         <input class=\"text\" id=\"purpose\" name=\"purpose\" maxlength=\"1000\" required value=\"{purpose}\">\
         <fieldset><legend>Tools it may call</legend>{tools}</fieldset>\
         <label for=\"ttl_seconds\">For how long</label>\
         <select id=\"ttl_seconds\" name=\"ttl_seconds\">{windows}</select>\
         <p class=\"muted\">You can end this access at any time on the approver page; it also ends when the window does.</p>\
         <div class=\"actions\"><button class=\"primary\" type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
         <button class=\"danger\" type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></div></form>",
        client = escape(&request.client.client_name),
        user = escape(user),
        host = escape(&host),
        purpose = escape(&format!("MCP client {}", request.client.client_name)),
        published = reqwest::Url::parse(&request.client.client_id)
            .ok()
            .filter(|u| u.scheme() == "https")
            .and_then(|u| u
                .host_str()
                .map(|h| format!(" Its identity is published by <code>{}</code>.", escape(h))))
            .unwrap_or_default(),
    );
    page(StatusCode::OK, "Connect a client", &body, redirect_origin)
}

/// The page shown while an approver decides; it reloads itself (no script needed).
pub fn waiting(task_id: &str) -> Response {
    let url = format!("/oauth/authorize/pending?task={}", escape(task_id));
    let body = format!(
        "<h2>Waiting for an approver</h2>\
         <p class=\"notice\">Your grant needs an approver's decision before this client gets access. \
         This page checks again by itself; you can also <a href=\"{url}\">check now</a>.</p>\
         <p class=\"muted task-id\">Task <code>{}</code></p>",
        escape(task_id)
    );
    let mut response = page(StatusCode::OK, "Waiting for an approver", &body, None);
    if let Ok(value) = HeaderValue::from_str(&format!("5; url={url}")) {
        response
            .headers_mut()
            .insert(axum::http::HeaderName::from_static("refresh"), value);
    }
    response
}

/// Signed in, with nothing else to do.
pub fn signed_in(user: &str, csrf: &str) -> Response {
    let body = format!(
        "<h2>Signed in</h2><p>You are signed in as <strong>{}</strong>.</p>\
         <p><a href=\"/ui\">Open the approver page</a></p>\
         <form method=\"post\" action=\"/signout\">{}<button type=\"submit\">Sign out</button></form>",
        escape(user),
        hidden("csrf", csrf)
    );
    page(StatusCode::OK, "Signed in", &body, None)
}

/// `/connections`: the person's accounts at each provider, with connect and disconnect
/// forms; `asked` is the provider a refused call pointed them to.
pub fn connections(
    user: &str,
    csrf: &str,
    providers: &[ProviderView],
    asked: Option<&str>,
    form_targets: &str,
) -> Response {
    let mut rows = String::new();
    for provider in providers {
        let name = escape(&provider.provider);
        let title = escape(&provider.display_name);
        let highlight = if asked == Some(provider.provider.as_str()) {
            " class=\"asked\""
        } else {
            ""
        };
        let per_task = if provider.per_task_tokens {
            "Each task gets its own narrowed token, revoked at the provider when the task ends."
        } else {
            "Tasks use your account's token; ending a task does not revoke it at the provider."
        };
        let connect_form = |label: &str| {
            format!(
                "<form method=\"post\" action=\"/connections/{name}/connect\">{}\
                 <button class=\"primary\" type=\"submit\">{label}</button></form>",
                hidden("csrf", csrf)
            )
        };
        let status = match &provider.connection {
            None => format!("<p>Not connected.</p>{}", connect_form("Connect")),
            Some(c) if c.state == "active" => format!(
                "<p class=\"connected\">Connected (<code>{}</code>), scopes <code>{}</code>.</p>\
                 <form method=\"post\" action=\"/connections/{}/disconnect\">{}\
                 <button class=\"danger\" type=\"submit\">Disconnect</button></form>",
                escape(&c.connection_id),
                escape(&c.scopes),
                escape(&c.connection_id),
                hidden("csrf", csrf),
            ),
            Some(c) => format!(
                "<p class=\"error broken\">Broken: {}. Calls that need it are refused until you connect again.</p>{}\
                 <form method=\"post\" action=\"/connections/{}/disconnect\">{}\
                 <button type=\"submit\">Forget it</button></form>",
                escape(
                    c.broken_reason
                        .as_deref()
                        .unwrap_or("the provider refused it")
                ),
                connect_form("Connect again"),
                escape(&c.connection_id),
                hidden("csrf", csrf),
            ),
        };
        rows.push_str(&format!(
            "<section id=\"provider-{name}\"{highlight} data-provider=\"{name}\"><h3>{title}</h3>\
             <p class=\"muted\">{per_task}</p>{status}</section>"
        ));
    }
    if providers.is_empty() {
        rows.push_str("<p>This broker has no providers configured.</p>");
    }
    let notice = asked
        .filter(|a| providers.iter().any(|p| p.provider == *a))
        .map(|a| {
            format!(
                "<p class=\"notice\">A task needs your account at <strong>{}</strong>: connect it below, then let the agent try again.</p>",
                escape(a)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h2>Connected accounts</h2><p>Signed in as <strong>{}</strong>. Agents acting for you reach these \
         providers as you; they never see the tokens.</p>{notice}{rows}",
        escape(user)
    );
    page(
        StatusCode::OK,
        "Connected accounts",
        &body,
        Some(form_targets),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_markup_character_is_escaped() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(window_text(3600), "1 hour");
        assert_eq!(window_text(7 * 86_400), "7 days");
        assert_eq!(window_text(900), "15 minutes");
    }
}
