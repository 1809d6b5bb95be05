"""Istio's traffic and security APIs as an input format (docs/istio.md).

    format.py   the apiVersions and kinds it reads; documents named namespace/name
    objects.py  what each document says, once read (pending parts)
    parse.py    reading one document: every field checked, positions kept
    hosts.py    how an Istio host names a Service of the model, and a workload its view
    compile.py  all Istio documents together -> Services, Routes and Gateways of the model
    security.py PeerAuthentication and AuthorizationPolicy -> the sidecars' mTLS and RBAC
"""
