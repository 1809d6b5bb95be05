"""The conformance report the e2e conformance test writes: each upstream test counted in the
profile its features say, core or extended, failures said, features claimed only by tests that
passed."""

from __future__ import annotations

import gatewayapi_conformance as conformance
import pytest


def _profiles(results: dict[str, str]) -> dict[str, dict]:
    report = conformance.conformance_report(results, "test", "2026-01-01T00:00:00Z")
    assert report["kind"] == "ConformanceReport"
    return {p["name"]: p for p in report["profiles"]}


def test_every_transcribed_test_has_its_features() -> None:
    assert set(conformance.FEATURES) == set(conformance.CASES) | set(conformance.MESH_FEATURES)


def test_tests_count_in_their_profile_core_or_extended() -> None:
    profiles = _profiles({name: "PASS" for name in conformance.CASES})
    http, tls = profiles["GATEWAY-HTTP"], profiles["GATEWAY-TLS"]
    assert http["core"]["tests"]["HTTPRouteSimpleSameNamespace"] == "Passed"
    assert "HTTPRouteMethodMatching" in http["extended"]["tests"]
    assert "BackendTLSPolicySANValidation" in http["extended"]["tests"]
    assert {"BackendTLSPolicy", "BackendTLSPolicySANValidation", "HTTPRouteMethodMatching"} <= \
        set(http["extended"]["supportedFeatures"])
    assert tls["core"]["tests"]["TLSRouteSimpleSameNamespace"] == "Passed"
    assert tls["core"]["statistics"]["Failed"] == 0
    # It needs both HTTPRoute and TLSRoute: it counts in neither profile.
    assert all("HTTPRouteDisallowedKind" not in p.get(k, {}).get("tests", {})
               for p in profiles.values() for k in ("core", "extended"))
    assert profiles["MESH-HTTP"]["core"]["result"] == "skipped"  # no mesh test in the results
    grpc = profiles["GATEWAY-GRPC"]
    assert set(grpc["core"]["tests"]) == {"GRPCExactMethodMatching", "GRPCRouteHeaderMatching",
                                          "GRPCRouteListenerHostnameMatching", "GRPCRouteWeight"}
    # BackendTLSPolicy over gRPC is an extended feature of the GRPC profile.
    assert "BackendTLSPolicyGRPCRoute" in grpc["extended"]["tests"]
    assert grpc["extended"]["supportedFeatures"] == ["BackendTLSPolicy", "GRPCRouteNamedRouteRule",
                                                     "GRPCRouteRequestHeaderModifier"]
    assert "GatewayFrontendClientCertificateValidationInsecureFallback" in \
        http["extended"]["tests"]
    assert {"GatewayFrontendClientCertificateValidation",
            "GatewayFrontendClientCertificateValidationInsecureFallback"} <= \
        set(http["extended"]["supportedFeatures"])


def test_a_failure_is_said_and_its_feature_is_not_claimed() -> None:
    results = {name: "PASS" for name in conformance.CASES}
    results["HTTPRouteQueryParamMatching"] = "FAIL (2)"
    results["HTTPRouteMatching"] = "FAIL (1)"
    http = _profiles(results)["GATEWAY-HTTP"]
    assert http["extended"]["result"] == "failure"
    assert http["extended"]["failedTests"] == ["HTTPRouteQueryParamMatching"]
    assert "HTTPRouteQueryParamMatching" not in http["extended"]["supportedFeatures"]
    assert http["core"]["result"] == "failure"
    assert http["core"]["statistics"]["Failed"] == 1


def test_a_feature_said_unsupported_is_never_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    everything = {name: "PASS" for name in conformance.CASES}
    http = _profiles(everything)["GATEWAY-HTTP"]
    # Claimed when its tests pass (GEP-957's parentRef port: a status and a traffic test) ...
    assert "HTTPRouteDestinationPortMatching" in http["extended"]["supportedFeatures"]
    # ... and never while said unsupported, though a test of it passes.
    monkeypatch.setitem(conformance.UNSUPPORTED, "GATEWAY-HTTP", (
        *conformance.UNSUPPORTED["GATEWAY-HTTP"], "HTTPRouteDestinationPortMatching"))
    http = _profiles(everything)["GATEWAY-HTTP"]
    assert "HTTPRouteDestinationPortMatching" in http["extended"]["unsupportedFeatures"]
    assert not set(http["extended"]["supportedFeatures"]) & \
        set(http["extended"]["unsupportedFeatures"])
    assert "GatewayHTTPSListenerDetectMisdirectedRequests" in \
        http["extended"]["supportedFeatures"]
    tls = _profiles({name: "PASS" for name in conformance.CASES})["GATEWAY-TLS"]
    assert tls["extended"]["unsupportedFeatures"] == []
    assert tls["extended"]["supportedFeatures"] == ["BackendTLSPolicy", "TLSRouteModeMixed",
                                                    "TLSRouteModeTerminate"]


def test_mesh_tests_count_in_the_mesh_profile_only() -> None:
    results = {name: "PASS" for name in (*conformance.CASES, *conformance.MESH_FEATURES)}
    results["MeshHTTPRouteRedirectPort"] = "FAIL (1)"
    profiles = _profiles(results)
    mesh = profiles["MESH-HTTP"]
    assert mesh["core"]["tests"]["MeshHTTPRouteWeight"] == "Passed"
    assert "MeshHTTPRouteRewritePath" in mesh["extended"]["tests"]
    assert mesh["extended"]["failedTests"] == ["MeshHTTPRouteRedirectPort"]
    assert "MeshHTTPRouteRedirectPort" not in mesh["extended"]["supportedFeatures"]
    assert "MeshHTTPRouteRewritePath" in mesh["extended"]["supportedFeatures"]
    assert not any(name.startswith("Mesh") for p in ("GATEWAY-HTTP", "GATEWAY-GRPC")
                   for k in ("core", "extended")
                   for name in profiles[p].get(k, {}).get("tests", {}))
    # The GRPCRoute mesh tests count in MESH-GRPC, as core (Mesh and GRPCRoute are its core).
    grpc = profiles["MESH-GRPC"]
    assert grpc["core"]["tests"] == {"MeshGRPCRouteRequestHeaderModifier": "Passed",
                                     "MeshGRPCRouteWeight": "Passed"}
    assert not any(name.startswith("MeshGRPC") for k in ("core", "extended")
                   for name in mesh.get(k, {}).get("tests", {}))
    assert "MeshClusterIPMatching" in mesh["extended"]["supportedFeatures"]
