#!/usr/bin/env python3
"""An MCP client that connects to Leash "by the book": the official MCP Python SDK's
`OAuthClientProvider` (mcp 2.x) discovers Leash as the authorization server of /mcp,
registers itself (RFC 7591), runs the authorization-code flow with PKCE, and refreshes its
access token. The browser's part (sign-in and consent pages) is played with plain HTTP
requests and an HTML form reader. Prints one JSON report on stdout.

Usage: mcp_oauth_client.py MCP_URL USERNAME PASSWORD APPROVER_CREDENTIAL [CONSENT_TOOLS]
  CONSENT_TOOLS: comma-separated tools to leave ticked on the consent page (default: the
  page's own preselection). The access token should live about 2 seconds (the driver sets
  it), so that sleeping 3 seconds makes the SDK refresh it.

Report: {"tools", "call", "after_refresh", "refreshed", "authorizations_before_revoke",
"task", "after_revoke", "scope_requested", "resource_requested", "offered", "consented"}
(or "error" when something failed before the revocation).
"""
import asyncio
import json
import sys
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import anyio
import httpx2
from mcp.client import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

mcp_url, username, password, approver = sys.argv[1:5]
consent_tools = [t for t in sys.argv[5].split(",") if t] if len(sys.argv) > 5 else None
parts = urlsplit(mcp_url)
base = "%s://%s" % (parts.scheme, parts.netloc)
# Nothing listens here: the browser stops at the redirect and hands its query over.
REDIRECT_URI = "http://127.0.0.1:8976/callback"


def describe(err):
    """The leaf errors of an exception (group), as text."""
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in err.exceptions)
    return "%s: %s" % (type(err).__name__, err)


def text_of(result):
    return "\n".join(getattr(block, "text", "") for block in result.content)


class MemoryStorage:
    """The SDK's TokenStorage protocol, in memory; remembers every access token it saw."""

    def __init__(self):
        self.tokens = None
        self.client_info = None
        self.access_tokens = []

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.access_tokens.append(tokens.access_token)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class FormReader(HTMLParser):
    """The forms of a page: [{"action", "fields": [{"tag", "type", "name", "value", "checked"}]}]."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms = []
        self.select = None
        self.option = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "fields": []})
            return
        if not self.forms:
            return
        fields = self.forms[-1]["fields"]
        if tag == "input":
            fields.append({"tag": "input", "type": a.get("type", "text").lower(), "name": a.get("name"),
                           "value": a.get("value", ""), "checked": "checked" in a})
        elif tag == "select":
            self.select = a.get("name")
        elif tag == "option" and self.select is not None:
            self.option = {"tag": "option", "type": "option", "name": self.select,
                           "value": a.get("value"), "checked": "selected" in a, "text": ""}
            fields.append(self.option)
        elif tag == "textarea":
            fields.append({"tag": "textarea", "type": "textarea", "name": a.get("name"), "value": "",
                           "checked": False})
        elif tag == "button":
            fields.append({"tag": "button", "type": a.get("type", "submit"), "name": a.get("name"),
                           "value": a.get("value", ""), "checked": False})

    def handle_endtag(self, tag):
        if tag == "select":
            self.select = None
        if tag in ("option", "select"):
            self.option = None

    def handle_data(self, data):
        if self.option is not None:
            self.option["text"] += data
        elif self.forms and self.forms[-1]["fields"] and self.forms[-1]["fields"][-1]["tag"] == "textarea":
            self.forms[-1]["fields"][-1]["value"] += data


def form_on(html, action_path):
    reader = FormReader()
    reader.feed(html)
    for form in reader.forms:
        if urlsplit(form["action"]).path == action_path:
            return form
    raise RuntimeError("no form posting to %s on the page: %s" % (action_path, html[:2000]))


def filled(form):
    """What a browser submits for the form as it stands (no button)."""
    out, selects = [], {}
    for f in form["fields"]:
        if not f["name"]:
            continue
        if f["tag"] == "option":
            value = f["value"] if f["value"] is not None else f["text"].strip()
            chosen = selects.get(f["name"])
            if chosen is None or (f["checked"] and not chosen[1]):
                selects[f["name"]] = (value, f["checked"])
        elif f["tag"] == "button" or f["type"] in ("submit", "button", "reset", "image"):
            continue
        elif f["type"] in ("checkbox", "radio"):
            if f["checked"]:
                out.append((f["name"], f["value"] or "on"))
        else:
            out.append((f["name"], f["value"]))
    out.extend((name, value) for name, (value, _) in selects.items())
    return out


def replace(fields, name, value):
    return [(k, v) for k, v in fields if k != name] + [(name, value)]


class Browser:
    """The user's browser: no redirects followed, cookies kept by hand."""

    def __init__(self):
        self.http = httpx2.AsyncClient(timeout=30, follow_redirects=False)
        self.cookies = {}
        self.result = None
        self.failure = None
        self.authorizations = 0
        self.refuse = False
        self.report = {}

    def _remember(self, response):
        for raw in response.headers.get_list("set-cookie"):
            pair, _, attributes = raw.partition(";")
            name, _, value = pair.partition("=")
            name, value = name.strip(), value.strip().strip('"')
            attrs = attributes.lower().replace(" ", "")
            if not value or "max-age=0" in attrs or "max-age=-" in attrs or "expires=thu,01jan1970" in attrs:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        self.http.cookies.clear()

    def _headers(self, extra=None):
        headers = dict(extra or {})
        if self.cookies:
            headers["Cookie"] = "; ".join("%s=%s" % kv for kv in self.cookies.items())
        return headers

    async def get(self, url):
        self.http.cookies.clear()
        response = await self.http.get(url, headers=self._headers())
        self._remember(response)
        return response

    async def post_form(self, url, fields):
        self.http.cookies.clear()
        response = await self.http.post(
            url,
            content=urlencode(fields).encode(),
            headers=self._headers({"Content-Type": "application/x-www-form-urlencoded"}),
        )
        self._remember(response)
        return response

    async def redirect_handler(self, authorization_url):
        """The SDK "opens" the authorization URL: sign in, consent, stop at the redirect."""
        self.authorizations += 1
        self.result, self.failure = None, None
        query = parse_qs(urlsplit(authorization_url).query)
        if self.authorizations == 1:
            self.report["authorization_url_params"] = sorted(query)
            self.report["scope_requested"] = query.get("scope", [None])[0]
            self.report["resource_requested"] = query.get("resource", [None])[0]
        response = await self.get(authorization_url)
        if response.status_code in (302, 303) and "/signin" in response.headers.get("location", ""):
            signin_url = urljoin(authorization_url, response.headers["location"])
            page = await self.get(signin_url)
            if page.status_code != 200:
                raise RuntimeError("sign-in page: HTTP %d %s" % (page.status_code, page.text[:500]))
            fields = filled(form_on(page.text, "/signin"))
            fields = replace(replace(fields, "username", username), "password", password)
            signed = await self.post_form(urljoin(signin_url, "/signin"), fields)
            if signed.status_code != 303:
                raise RuntimeError("sign-in: HTTP %d %s" % (signed.status_code, signed.text[:500]))
            response = await self.get(urljoin(signin_url, signed.headers["location"]))
        if response.status_code != 200:
            raise RuntimeError("consent page: HTTP %d %s %s" % (
                response.status_code, response.headers.get("location"), response.text[:500]))
        form = form_on(response.text, "/oauth/authorize")
        offered = [(f["value"], f["checked"]) for f in form["fields"] if f["name"] == "tools"]
        fields = filled(form)
        if consent_tools is not None:
            unknown = [t for t in consent_tools if t not in [v for v, _ in offered]]
            if unknown:
                raise RuntimeError("the consent page does not offer %s: %s" % (unknown, offered))
            fields = [(k, v) for k, v in fields if k != "tools"] + [("tools", t) for t in consent_tools]
        if self.authorizations == 1:
            self.report["offered"] = {value: checked for value, checked in offered}
            self.report["consented"] = sorted(v for k, v in fields if k == "tools")
        decision = "deny" if self.refuse else "allow"
        answer = await self.post_form(urljoin(authorization_url, "/oauth/authorize"),
                                      fields + [("decision", decision)])
        if answer.status_code != 303:
            raise RuntimeError("consent: HTTP %d %s" % (answer.status_code, answer.text[:500]))
        location = answer.headers["location"]
        if not location.startswith(REDIRECT_URI + "?"):
            raise RuntimeError("consent redirected elsewhere: %s" % location)
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        if "code" in params:
            self.result = AuthorizationCodeResult(code=params["code"], state=params.get("state"),
                                                  iss=params.get("iss"))
        else:
            self.failure = "authorization refused: %s (%s)" % (params.get("error"),
                                                               params.get("error_description"))

    async def callback_handler(self) -> AuthorizationCodeResult:
        """What the redirect URI received; the SDK checks state and iss itself."""
        if self.result is None:
            raise RuntimeError(self.failure or "no authorization code arrived")
        return self.result


async def call(client, name, args):
    try:
        result = await client.call_tool(name, args)
        return {"is_error": bool(result.is_error), "text": text_of(result)}
    except Exception as err:  # a JSON-RPC error
        return {"protocol_error": describe(err)}


async def find_task(http):
    """The OAuth grant's task, as an approver sees it."""
    bearer = {"Authorization": "Bearer " + approver}
    listed = await http.get(base + "/v1/tasks?state=active", headers=bearer)
    listed.raise_for_status()
    tasks = [t for t in listed.json()["tasks"] if str(t.get("agent", "")).startswith("client:")]
    if len(tasks) != 1:
        raise RuntimeError("expected one active client task, found %s" % tasks)
    shown = await http.get(base + "/v1/tasks/" + tasks[0]["task_id"], headers=bearer)
    shown.raise_for_status()
    return shown.json()


async def main():
    report = {}
    browser = Browser()
    browser.report = report
    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=mcp_url,
        client_metadata=OAuthClientMetadata(
            redirect_uris=[REDIRECT_URI],
            client_name="python-sdk-test",
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
            # The SDK replaces this with the scope Leash challenges with (WWW-Authenticate
            # scope, else the metadata's scopes_supported) before it registers and authorizes.
            scope="web.search",
        ),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    revoked = False
    try:
        with anyio.fail_after(120):
            transport = streamable_http_client(mcp_url, http_client=create_mcp_http_client(auth=provider))
            async with Client(transport, mode="auto", read_timeout_seconds=60) as client:
                tools = await client.list_tools()
                report["tools"] = sorted(tool.name for tool in tools.tools)
                report["call"] = await call(client, "web.search", {"query": "through oauth"})
                first = list(storage.access_tokens)
                # The access token lives ~2 s: the next request needs a refresh.
                await anyio.sleep(3)
                report["after_refresh"] = await call(client, "web.search", {"query": "after refresh"})
                report["refreshed"] = (
                    len(storage.access_tokens) > len(first)
                    and storage.access_tokens[-1] not in first
                    and browser.authorizations == 1
                )
                report["authorizations_before_revoke"] = browser.authorizations
                async with httpx2.AsyncClient(timeout=30) as http:
                    task = await find_task(http)
                    report["task"] = {k: task.get(k) for k in ("task_id", "agent", "user", "state", "tools")}
                    revoke = await http.post(
                        base + "/v1/tasks/%s/revoke" % task["task_id"],
                        json={"reason": "test"},
                        headers={"Authorization": "Bearer " + approver},
                    )
                    report["revoke_status"] = revoke.status_code
                # On the 401 the SDK starts the whole authorization again: the user now
                # denies it, so the call must fail rather than quietly get a new grant.
                browser.refuse = True
                revoked = True
                with anyio.fail_after(60):
                    report["after_revoke"] = await call(client, "web.search", {"query": "after revoke"})
    except BaseException as err:  # the transport's task group ends with the auth error
        if revoked and "after_revoke" not in report:
            report["after_revoke"] = {"error": describe(err)}
        elif not revoked:
            report["error"] = describe(err)
    report["authorizations"] = browser.authorizations
    await browser.http.aclose()
    print(json.dumps(report))


asyncio.run(main())
