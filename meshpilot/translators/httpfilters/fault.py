"""Fault injection: a rule's `fault` (delays and aborts), by Envoy's fault filter.

In every chain that serves Routes (empty, so it does nothing for a route that does not
configure it); late in the table, so a request is refused by security before it is delayed,
and an aborted request's short local reply is not compressed.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.extensions.filters.common.fault.v3.fault_pb2 import FaultDelay
from envoy.extensions.filters.http.fault.v3.fault_pb2 import FaultAbort, HTTPFault
from google.protobuf.message import Message

from meshpilot.ir.model import Fault, Route, Rule
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
)
from meshpilot.translators.matchers import header_matcher
from meshpilot.translators.protos import duration, fractional_percent

FAULT = "envoy.filters.http.fault"


class FaultFeature(HttpFeature):
    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        return [http_filter(FAULT, HTTPFault())] if chain.serves_routes else []

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        # Only where the request goes upstream: a redirect or a direct response has no fault.
        forwards = rule.redirect is None and rule.direct_response is None
        return {FAULT: http_fault(rule.fault)} if forwards and rule.fault is not None else {}


FEATURE = FaultFeature()


def http_fault(fault: Fault) -> HTTPFault:
    """The fault filter's per-route config, which replaces the (empty) listener-wide one."""
    config = HTTPFault(headers=[header_matcher(name, how) for name, how in fault.headers])
    if fault.delay is not None:
        config.delay.CopyFrom(FaultDelay(fixed_delay=duration(fault.delay.fixed),
                                         percentage=fractional_percent(fault.delay.percentage)))
    if fault.abort is not None:
        abort = FaultAbort(percentage=fractional_percent(fault.abort.percentage))
        if fault.abort.grpc_status is not None:
            abort.grpc_status = fault.abort.grpc_status
        else:
            abort.http_status = fault.abort.status or 503
        config.abort.CopyFrom(abort)
    return config
