"""Evaluates Envoy RBAC configs (camelCase JSON, as MessageToDict writes them) for the unit tests
that compare meshpilot's rules with Istio's builder goldens: one evaluator, so HTTP and TCP
authorization are judged by the same reading of Envoy's matchers."""

from __future__ import annotations

import re
from typing import Any

Request = dict[str, Any]  # principal (None: plaintext), and path, method, host, port as asked


def string_matches(matcher: dict[str, Any], value: str) -> bool:
    """Envoy's StringMatcher: exact, prefix, suffix or safe_regex, ignore_case honoured."""
    if matcher.get("ignoreCase"):
        value = value.lower()
        matcher = {k: v.lower() if isinstance(v, str) else v for k, v in matcher.items()}
    if "exact" in matcher:
        return value == matcher["exact"]
    if "prefix" in matcher:
        return value.startswith(matcher["prefix"])
    if "suffix" in matcher:
        return value.endswith(matcher["suffix"])
    return re.fullmatch(matcher["safeRegex"]["regex"], value) is not None


def template_matches(template: str, path: str) -> bool:
    """Envoy's uri_template: `*` one segment, `**` any segments (none too)."""
    pattern = "/".join("[^/]+" if s == "*" else ".*" if s == "**" else re.escape(s)
                       for s in template.split("/"))
    return re.fullmatch(pattern, path) is not None


def _header(header: dict[str, Any], request: Request) -> bool:
    value = {":method": request.get("method"), ":authority": request.get("host")}.get(
        header["name"], request.get("headers", {}).get(header["name"]))
    if value is None:
        return False
    if header.get("presentMatch"):
        return True
    if "safeRegexMatch" in header:
        return re.fullmatch(header["safeRegexMatch"]["regex"], value) is not None
    return string_matches(header.get("stringMatch", header), value)


def permission_matches(p: dict[str, Any], request: Request) -> bool:
    """An RBAC permission: and/or/not, any, url path, uri template, header, destination port."""
    if p.get("any"):
        return True
    if "andRules" in p:
        return all(permission_matches(r, request) for r in p["andRules"]["rules"])
    if "orRules" in p:
        return any(permission_matches(r, request) for r in p["orRules"]["rules"])
    if "notRule" in p:
        return not permission_matches(p["notRule"], request)
    if "urlPath" in p:
        return string_matches(p["urlPath"]["path"], request["path"])
    if "uriTemplate" in p:
        return template_matches(p["uriTemplate"]["typedConfig"]["pathTemplate"], request["path"])
    if "destinationPort" in p:
        return int(p["destinationPort"]) == request["port"]
    return _header(p["header"], request)


def principal_matches(i: dict[str, Any], principal: str | None) -> bool:
    """An RBAC principal for a caller known by its SPIFFE ID (None: plaintext); source IPs
    are never matched (the tests' callers are in none of their blocks)."""
    if i.get("any"):
        return True
    if "andIds" in i:
        return all(principal_matches(x, principal) for x in i["andIds"]["ids"])
    if "orIds" in i:
        return any(principal_matches(x, principal) for x in i["orIds"]["ids"])
    if "notId" in i:
        return not principal_matches(i["notId"], principal)
    if "directRemoteIp" in i or "remoteIp" in i:
        return False
    return principal is not None and string_matches(i["authenticated"]["principalName"],
                                                    principal)


def matched(rules: dict[str, Any], request: Request) -> bool:
    """Whether the request matches one of the rules' policies (no `principal`: plaintext)."""
    return any(permission_matches(p, request)
               and principal_matches(i, request.get("principal"))
               for policy in rules.get("policies", {}).values()
               for p in policy["permissions"] for i in policy["principals"])


def admits(config: dict[str, Any], request: Request) -> bool:
    """Whether an RBAC filter config lets the request through (shadow rules only: always)."""
    rules = config.get("rules")
    if rules is None:
        return True
    hit = matched(rules, request)
    return hit if rules.get("action", "ALLOW") == "ALLOW" else not hit
