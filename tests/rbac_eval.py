"""Evaluates Envoy RBAC configs (camelCase JSON, as MessageToDict writes them) for the unit tests
that compare meshpilot's rules with Istio's builder goldens: one evaluator, so HTTP and TCP
authorization are judged by the same reading of Envoy's matchers."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

# principal (None: plaintext), and path, method, host, port as asked; headers; claims (the
# JWT's payload); peer and client addresses, destination_ip, sni; metadata (filter -> dict)
Request = dict[str, Any]


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
        header["name"], request.get("headers", {}).get(header["name"].lower()))  # any case
    if value is None:
        return False
    if header.get("presentMatch"):
        return True
    if "safeRegexMatch" in header:
        return re.fullmatch(header["safeRegexMatch"]["regex"], value) is not None
    return string_matches(header.get("stringMatch", header), value)


def permission_matches(p: dict[str, Any], request: Request) -> bool:
    """An RBAC permission: and/or/not, any, url path, uri template, header, destination port
    and IP, requested server name, dynamic metadata."""
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
        return int(p["destinationPort"]) == request.get("port")
    if "destinationIp" in p:
        return _in_block(p["destinationIp"], request.get("destination_ip"))
    if "requestedServerName" in p:
        sni = request.get("sni")
        return sni is not None and string_matches(p["requestedServerName"], sni)
    if "metadata" in p:
        return _metadata_matches(p["metadata"], request)
    if "sourcedMetadata" in p:
        return _metadata_matches(p["sourcedMetadata"]["metadataMatcher"], request)
    return _header(p["header"], request)


def _in_block(block: dict[str, Any], address: str | None) -> bool:
    if address is None:
        return False
    network = ipaddress.ip_network(f"{block['addressPrefix']}/{block.get('prefixLen', 32)}",
                                   strict=False)
    return ipaddress.ip_address(address) in network


def value_matches(matcher: dict[str, Any], value: Any) -> bool:
    """Envoy's ValueMatcher: string, present, list (one_of) and or."""
    if "orMatch" in matcher:
        return any(value_matches(m, value) for m in matcher["orMatch"]["valueMatchers"])
    if "listMatch" in matcher:
        return isinstance(value, list) and any(value_matches(matcher["listMatch"]["oneOf"], v)
                                               for v in value)
    if matcher.get("presentMatch"):
        return value is not None
    return isinstance(value, str) and string_matches(matcher["stringMatch"], value)


def _metadata_matches(matcher: dict[str, Any], request: Request) -> bool:
    """A metadata matcher on the request's dynamic metadata (`metadata`: filter -> dict); the
    JWT filter's payload is the request's `claims`."""
    metadata = dict(request.get("metadata", {}))
    if "claims" in request:
        metadata["envoy.filters.http.jwt_authn"] = {"payload": request["claims"]}
    value: Any = metadata.get(matcher["filter"])
    for segment in matcher["path"]:
        value = value.get(segment["key"]) if isinstance(value, dict) else None
    return value is not None and value_matches(matcher["value"], value)


def principal_matches(i: dict[str, Any], principal: str | None,
                      request: Request | None = None) -> bool:
    """An RBAC principal for a caller known by its SPIFFE ID (None: plaintext); source IPs
    are the request's `peer` and `client` addresses (none: in no block), headers and
    metadata the request's."""
    request = request or {}
    if i.get("any"):
        return True
    if "andIds" in i:
        return all(principal_matches(x, principal, request) for x in i["andIds"]["ids"])
    if "orIds" in i:
        return any(principal_matches(x, principal, request) for x in i["orIds"]["ids"])
    if "notId" in i:
        return not principal_matches(i["notId"], principal, request)
    if "directRemoteIp" in i:
        return _in_block(i["directRemoteIp"], request.get("peer"))
    if "remoteIp" in i:
        return _in_block(i["remoteIp"], request.get("client", request.get("peer")))
    if "header" in i:
        return _header(i["header"], request)
    if "sourcedMetadata" in i:
        return _metadata_matches(i["sourcedMetadata"]["metadataMatcher"], request)
    if "metadata" in i:
        return _metadata_matches(i["metadata"], request)
    return principal is not None and string_matches(i["authenticated"]["principalName"],
                                                    principal)


def matched(rules: dict[str, Any], request: Request) -> bool:
    """Whether the request matches one of the rules' policies (no `principal`: plaintext)."""
    return any(permission_matches(p, request)
               and principal_matches(i, request.get("principal"), request)
               for policy in rules.get("policies", {}).values()
               for p in policy["permissions"] for i in policy["principals"])


def admits(config: dict[str, Any], request: Request) -> bool:
    """Whether an RBAC filter config lets the request through (shadow rules only: always)."""
    rules = config.get("rules")
    if rules is None:
        return True
    hit = matched(rules, request)
    return hit if rules.get("action", "ALLOW") == "ALLOW" else not hit
