"""Authorization: a Route's or a rule's `authorization` (Istio's semantics), by RBAC filters.

On a gateway listener with a Route that uses it: one filter for DENY policies, then one for
ALLOW, after the authentications whose results (JWT claims) they read. A rule's authorization
replaces both of the Route's policies for its entries. `rbac()` is also how a sidecar's
callers are checked (`mesh_authorization.py`), Istio's AUDIT policies marked (`audit.py`) and
the requests Istio's CUSTOM policies send to their provider picked (`shadow`, `ext_authz.py`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from envoy.config.core.v3.address_pb2 import CidrRange
from envoy.config.rbac.v3.rbac_pb2 import RBAC as RbacRules
from envoy.config.rbac.v3.rbac_pb2 import Permission, Policy, Principal
from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC, RBACPerRoute
from envoy.extensions.path.match.uri_template.v3.uri_template_match_pb2 import (
    UriTemplateMatchConfig,
)
from envoy.type.matcher.v3.metadata_pb2 import MetadataMatcher
from envoy.type.matcher.v3.path_pb2 import PathMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from envoy.type.matcher.v3.value_pb2 import ListMatcher, ValueMatcher
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import UInt32Value

from meshpilot.ir.model import Authorization, AuthzCondition, AuthzRule, Route, Rule, StringMatch
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
    securities,
    security_inputs,
)
from meshpilot.translators.httpfilters.jwt_authn import JWT_AUTHN, JWT_PAYLOAD
from meshpilot.translators.matchers import header_matcher, re2_literal, string_matcher

RBAC_DENY = "envoy.filters.http.rbac/deny"
RBAC_ALLOW = "envoy.filters.http.rbac/allow"
# Whatever a filter is called, the RBAC filter writes its dynamic metadata under this name.
RBAC_METADATA = "envoy.filters.http.rbac"
# Istio's names for what picks CUSTOM's requests: the shadow rules' stat (and metadata key)
# prefix, and the prefix of their policies' names, which the ext_authz filter matches.
SHADOW_PREFIX = "istio_ext_authz_"
SHADOW_POLICY = "istio-ext-authz-"
SHADOW_POLICY_KEY = f"{SHADOW_PREFIX}shadow_effective_policy_id"


class RbacFeature(HttpFeature):
    route_inputs = staticmethod(security_inputs)

    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        actions = {p.action for route in chain.routes for s in securities(route)
                   for p in s.authorization or ()}  # (AUDIT: audit.py's filter)
        return [http_filter(name, RBAC(), disabled=True)
                for name, action in ((RBAC_DENY, "DENY"), (RBAC_ALLOW, "ALLOW"))
                if action in actions]

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        return _policies(route.security.authorization)

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        policies = rule.security.authorization
        if policies is None:
            return {}
        # Replaces both of the Route's policies: one the rule does not have is switched off.
        return {RBAC_DENY: RBACPerRoute(), RBAC_ALLOW: RBACPerRoute(), **_policies(policies)}


FEATURE = RbacFeature()


def reads_server_name(routes: Iterable[Route]) -> bool:
    """Whether a rule of the Routes' authorization (or of the requests a CUSTOM provider is
    asked about) reads the TLS server name, which Envoy knows only from the TLS inspector."""
    def reads(rule: AuthzRule | None) -> bool:
        return rule is not None and (any(c.attribute == "sni" for c in rule.conditions)
                                     or reads(rule.exclude))

    return any(reads(rule) for route in routes for security in securities(route)
               for rule in (*(r for p in security.authorization or () for r in p.rules),
                            *((security.ext_authz.only or ()) if security.ext_authz else ())))


def _policies(policies: tuple[Authorization, ...] | None) -> dict[str, Message]:
    # A gateway's source_ips are the client's address as the listener detects it (client_ip:
    # behind trusted proxies), which is the peer's unless the listener says otherwise.
    return {RBAC_DENY if policy.action == "DENY" else RBAC_ALLOW: RBACPerRoute(
        rbac=rbac(policy, detected_client=True)) for policy in policies or ()
        if policy.action != "AUDIT"}


def rbac(policy: Authorization, *, detected_client: bool = False) -> RBAC:
    """ALLOW: requests matching a rule pass, the rest are refused (no rules: all refused).
    DENY: requests matching a rule are refused (no rules: none). AUDIT: requests matching a
    rule are marked for audit logging (Envoy's LOG action: `access_log_hint` true in the
    filter's dynamic metadata, stat `rbac.logged`), none refused. `detected_client`: source
    IPs are the detected client's (`remote_ip`), else the peer's (`direct_remote_ip`: a
    sidecar's inbound, whose callers' X-Forwarded-For is not trusted)."""
    rules = RbacRules(action=_ACTIONS[policy.action])
    for index, rule in enumerate(policy.rules):
        rules.policies[f"rules[{index}]"].CopyFrom(_policy(rule, detected_client))
    return RBAC(rules=rules)


_ACTIONS = {"ALLOW": RbacRules.ALLOW, "DENY": RbacRules.DENY, "AUDIT": RbacRules.LOG}


def shadow(rules: tuple[AuthzRule, ...], *, detected_client: bool = False) -> RBAC:
    """Rules that refuse nothing: a request matching one gets its policy's name, which starts
    with `SHADOW_POLICY`, as `SHADOW_POLICY_KEY` in the RBAC filter's dynamic metadata (how
    Istio's CUSTOM action picks the requests its ext_authz filter checks)."""
    matched = rbac(Authorization("DENY", rules), detected_client=detected_client).rules
    picked = RbacRules(action=RbacRules.DENY)
    for name in sorted(matched.policies):
        picked.policies[SHADOW_POLICY + name].CopyFrom(matched.policies[name])
    return RBAC(shadow_rules=picked, shadow_rules_stat_prefix=SHADOW_PREFIX)


def _policy(rule: AuthzRule, detected_client: bool = False) -> Policy:
    permissions, principals = _conditions(rule, detected_client=detected_client)
    if rule.exclude is not None:  # each condition given must not hold
        not_permissions, not_principals = _conditions(rule.exclude, separately=True,
                                                      detected_client=detected_client)
        permissions += [Permission(not_rule=p) for p in not_permissions]
        principals += [Principal(not_id=p) for p in not_principals]
    if rule.authenticated is not None:
        principals.append(_token_principal() if rule.authenticated
                          else Principal(not_id=_token_principal()))
    return Policy(
        permissions=[_all_permission(permissions) if permissions else Permission(any=True)],
        principals=[_all_principal(principals) if principals else Principal(any=True)])


def _conditions(rule: AuthzRule, *, separately: bool = False, detected_client: bool = False
                ) -> tuple[list[Permission], list[Principal]]:
    """The rule's conditions as RBAC permissions (what is asked) and principals (who asks);
    `separately`: each header and claim on its own (for `not`: none of them may hold)."""
    permissions: list[Permission] = []
    if any(p.kind == "present" for p in rule.paths):  # "*": any path
        if separately:  # not "*": no path at all
            permissions.append(Permission(any=True))
    elif rule.paths or rule.path_templates:
        permissions.append(_any_permission(
            [Permission(url_path=PathMatcher(path=string_matcher(p))) for p in rule.paths]
            + [_template_permission(t) for t in rule.path_templates]))
    if rule.methods:
        permissions.append(_any_permission([
            Permission(header=header_matcher(":method", StringMatch("exact", m)))
            for m in rule.methods]))
    for name, how in rule.headers:
        permissions.append(Permission(header=header_matcher(name, how)))
    if rule.ports:
        permissions.append(_any_permission([Permission(destination_port=p)
                                            for p in rule.ports]))
    if rule.hosts:
        permissions.append(_any_permission([_host_permission(h) for h in rule.hosts]))
    principals: list[Principal] = []
    if rule.source_ips:
        principals.append(_any_principal([_cidr_principal(c, detected_client)
                                          for c in rule.source_ips]))
    for claim, value in rule.claims:
        principals.append(_claim_principal(claim, value))
    if rule.principals:  # a sidecar's `from`: SPIFFE IDs by now (translators/mtls.py)
        principals.append(_any_principal([_authenticated_principal(p)
                                          for p in rule.principals]))
    if rule.service_accounts:
        principals.append(_any_principal([_service_account_principal(a)
                                          for a in rule.service_accounts]))
    if rule.request_principals:
        principals.append(_any_principal([_request_principal(p)
                                          for p in rule.request_principals]))
    for condition in rule.conditions:
        if condition.attribute in _PERMISSION_ATTRIBUTES:
            permissions.append(_condition_permission(condition))
        else:
            principals.append(_condition_principal(condition))
    return permissions, principals


# What the request asks for is a permission, who asks a principal (Envoy's RBAC reads both
# the same way: only their AND matters).
_PERMISSION_ATTRIBUTES = ("header", "metadata", "destination_ip", "sni")


def _condition_permission(condition: AuthzCondition) -> Permission:
    """A condition on what is asked: any of its matches holds."""
    if condition.attribute == "header":
        (name,) = condition.key
        return _any_permission([Permission(header=header_matcher(name, m))
                                for m in condition.matches])
    if condition.attribute == "sni":
        return _any_permission([Permission(requested_server_name=string_matcher(m))
                                for m in condition.matches])
    if condition.attribute == "destination_ip":
        return _any_permission([Permission(destination_ip=_cidr(c)) for c in condition.cidrs])
    filter_name, key = condition.key
    permission = Permission()  # the request's dynamic metadata (sourced_metadata's default)
    permission.sourced_metadata.metadata_matcher.CopyFrom(MetadataMatcher(
        filter=filter_name, path=[MetadataMatcher.PathSegment(key=key)],
        value=_any_value([ValueMatcher(string_match=string_matcher(m))
                          for m in condition.matches]
                         + [ValueMatcher(list_match=ListMatcher(one_of=ValueMatcher(
                             string_match=string_matcher(m)))) for m in condition.elements])))
    return permission


def _condition_principal(condition: AuthzCondition) -> Principal:
    """A condition on who asks: any of its matches holds."""
    if condition.attribute == "principal":
        found = []
        for how in condition.matches:
            principal = Principal()
            principal.authenticated.principal_name.CopyFrom(string_matcher(how))
            found.append(principal)
        return _any_principal(found)
    if condition.attribute == "request_principal":
        return _any_principal([_request_principal(p) for p in condition.request_principals])
    if condition.attribute in ("peer_ip", "client_ip"):
        return _any_principal([_cidr_principal(c, condition.attribute == "client_ip")
                               for c in condition.cidrs])
    # a claim: its value matches, or it is a list with an element that does (Istio's reading)
    value = _any_value([ValueMatcher(string_match=string_matcher(m))
                        for m in condition.matches])
    principal = Principal()
    principal.sourced_metadata.metadata_matcher.CopyFrom(MetadataMatcher(
        filter=JWT_AUTHN, path=[MetadataMatcher.PathSegment(key=k)
                                for k in (JWT_PAYLOAD, *condition.key)],
        value=_any_value([ValueMatcher(list_match=ListMatcher(one_of=value)), value])))
    return principal


def _any_value(items: list[ValueMatcher]) -> ValueMatcher:
    if len(items) == 1:
        return items[0]
    found = ValueMatcher()
    found.or_match.value_matchers.extend(items)
    return found


def _cidr(cidr: str) -> CidrRange:
    address, _, length = cidr.partition("/")
    return CidrRange(address_prefix=address, prefix_len=UInt32Value(value=int(length)))


def _template_permission(template: str) -> Permission:
    """The path matches an Envoy uri_template (Istio's `{*}`/`{**}` paths, as its builder)."""
    permission = Permission()
    permission.uri_template.name = "uri-template"
    permission.uri_template.typed_config.Pack(UriTemplateMatchConfig(path_template=template))
    return permission


def _service_account_principal(account: str) -> Principal:
    """The peer's SPIFFE ID is of service account `namespace/name`, in any trust domain
    (Istio's serviceAccounts: the regex its builder writes)."""
    namespace, _, name = account.partition("/")
    principal = Principal()
    principal.authenticated.principal_name.safe_regex.regex = (
        f"spiffe://.+/ns/{re.escape(namespace)}/(.+/|)sa/{re.escape(name)}(/.+)?")
    return principal


def _token_principal() -> Principal:
    """The request carries a valid JWT: jwt_authn wrote its payload (Istio's
    requestPrincipals: ["*"])."""
    principal = Principal()
    principal.sourced_metadata.metadata_matcher.CopyFrom(MetadataMatcher(
        filter=JWT_AUTHN, path=[MetadataMatcher.PathSegment(key=JWT_PAYLOAD)],
        value=ValueMatcher(present_match=True)))
    return principal


def _host_permission(host: str) -> Permission:
    """The Host header (`:authority`) is `host`, ends with it (`*.example.com`) or starts
    with it (`example.*`), case ignored, as Istio's `hosts`."""
    permission = Permission()
    header = permission.header
    header.name = ":authority"
    if host == "*":
        header.present_match = True
        return permission
    matcher = header.string_match
    matcher.ignore_case = True
    if host.startswith("*"):
        matcher.suffix = host[1:]
    elif host.endswith("*"):
        matcher.prefix = host[:-1]
    else:
        matcher.exact = host
    return permission


def _any_permission(items: list[Permission]) -> Permission:
    return items[0] if len(items) == 1 else Permission(or_rules=Permission.Set(rules=items))


def _all_permission(items: list[Permission]) -> Permission:
    return items[0] if len(items) == 1 else Permission(and_rules=Permission.Set(rules=items))


def _any_principal(items: list[Principal]) -> Principal:
    return items[0] if len(items) == 1 else Principal(or_ids=Principal.Set(ids=items))


def _all_principal(items: list[Principal]) -> Principal:
    return items[0] if len(items) == 1 else Principal(and_ids=Principal.Set(ids=items))


def _cidr_principal(cidr: str, detected_client: bool) -> Principal:
    address, _, length = cidr.partition("/")
    principal = Principal()
    block = principal.remote_ip if detected_client else principal.direct_remote_ip
    block.address_prefix = address
    block.prefix_len.value = int(length)
    return principal


def _authenticated_principal(spiffe_id: str) -> Principal:
    """The peer certificate's URI SAN is exactly `spiffe_id` (mTLS in the mesh); Istio's
    wildcards: `*` any authenticated caller, `spiffe://td/ns/a/*` a prefix, `*/sa/b` a suffix."""
    principal = Principal()
    name = principal.authenticated.principal_name
    if spiffe_id in ("*", "spiffe://*"):
        name.safe_regex.regex = ".+"
    elif spiffe_id.endswith("*"):
        name.prefix = spiffe_id[:-1]
    elif spiffe_id.startswith("*"):
        name.suffix = spiffe_id[1:]
    else:
        name.exact = spiffe_id
    return principal


def _request_principal(written: str) -> Principal:
    """Istio's request principal: `iss/sub` of the validated token (the last `/` splits them:
    an issuer may be a URL), `*`: any valid token; a leading `*` makes the issuer (or, with no
    `/`, the subject) a suffix, a trailing one the subject (with no `/`, the issuer) a prefix,
    as Istio's builder reads them."""
    if written == "*":
        principal = Principal()
        principal.sourced_metadata.metadata_matcher.CopyFrom(MetadataMatcher(
            filter=JWT_AUTHN, path=[MetadataMatcher.PathSegment(key=JWT_PAYLOAD),
                                    MetadataMatcher.PathSegment(key="iss")],
            value=ValueMatcher(present_match=True)))
        return principal
    issuer, slash, subject = written.rpartition("/")
    anything = StringMatch("regex", ".+")
    if not slash:  # no subject written: the text is the issuer's, or the subject's
        if written.startswith("*"):
            return _all_principal([_claim_match("iss", anything), _claim_match(
                "sub", StringMatch("regex", ".*" + re2_literal(written[1:])))])
        if written.endswith("*"):
            return _all_principal([_claim_match("iss", StringMatch("prefix", written[:-1])),
                                   _claim_match("sub", anything)])
        return _all_principal([_claim_match("iss", StringMatch("exact", written)),
                               _claim_match("sub", StringMatch("exact", ""))])
    if written.startswith("*"):
        iss = anything if issuer == "*" else StringMatch("regex", ".*" + re2_literal(issuer[1:]))
        return _all_principal([_claim_match("iss", iss),
                               _claim_match("sub", StringMatch("exact", subject))])
    if written.endswith("*"):
        sub = anything if subject == "*" else StringMatch("prefix", subject[:-1])
        return _all_principal([_claim_match("iss", StringMatch("exact", issuer)),
                               _claim_match("sub", sub)])
    return _all_principal([_claim_principal("iss", issuer), _claim_principal("sub", subject)])


def _claim_match(claim: str, how: StringMatch) -> Principal:
    principal = Principal()
    principal.sourced_metadata.metadata_matcher.CopyFrom(MetadataMatcher(
        filter=JWT_AUTHN, path=[MetadataMatcher.PathSegment(key=JWT_PAYLOAD),
                                MetadataMatcher.PathSegment(key=claim)],
        value=ValueMatcher(string_match=string_matcher(how))))
    return principal


def _claim_principal(claim: str, value: str) -> Principal:
    """The claim equals `value`, or is a list holding it (Istio's request.auth.claims)."""
    def matcher(value_matcher: ValueMatcher) -> Principal:
        principal = Principal()
        principal.sourced_metadata.metadata_matcher.CopyFrom(MetadataMatcher(
            filter=JWT_AUTHN, path=[MetadataMatcher.PathSegment(key=JWT_PAYLOAD),
                                    MetadataMatcher.PathSegment(key=claim)],
            value=value_matcher))
        return principal

    exact = ValueMatcher(string_match=StringMatcher(exact=value))
    return _any_principal([matcher(exact),
                           matcher(ValueMatcher(list_match=ListMatcher(one_of=exact)))])
