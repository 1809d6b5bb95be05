"""Sample policies shared by tests of different tiers (unit and in-process pipeline)."""

# Two Services (one with a static endpoint and a subset, one to be filled by discovery), a
# Gateway and a Route naming both: the discovery tests register endpoints into it.
DISCOVERY_POLICY = """
kind: Service
name: reviews
endpoints: [{address: 127.0.0.1:9081, labels: {version: v1}}]
subsets: {v1: {version: v1}}
---
kind: Service
name: ratings
---
kind: Gateway
name: edge
listeners: [{name: http, port: 10000, address: 127.0.0.1}]
---
kind: Route
name: shop
gateway: edge
rules:
  - match: {path: {prefix: /ratings}}
    backends: [{service: ratings}]
  - backends: [{service: reviews}, {service: reviews, subset: v1}]
"""
