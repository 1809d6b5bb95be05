"""Request security's names for existing callers: the features live in `httpfilters/`.

`translators.auth` was the one module of request security (JWT, API keys, basic auth,
ext_authz, RBAC, local rate limits); each is now a feature module of `httpfilters/`, in the one
ordering table there. These re-exports keep `translators.auth.<name>` working for the code that
still reads them (tests/unit/test_auth_features.py); new code imports the feature modules.
"""

from __future__ import annotations

from meshpilot.translators.httpfilters.api_key_auth import API_KEY_AUTH, api_key_auth
from meshpilot.translators.httpfilters.basic_auth import BASIC_AUTH
from meshpilot.translators.httpfilters.ext_authz import EXT_AUTHZ, ext_authz, ext_authz_filter
from meshpilot.translators.httpfilters.jwt_authn import JWT_AUTHN, jwt_authentication
from meshpilot.translators.httpfilters.local_ratelimit import LOCAL_RATELIMIT, local_rate_limit
from meshpilot.translators.httpfilters.rbac import RBAC_ALLOW, RBAC_DENY, rbac

__all__ = ["API_KEY_AUTH", "BASIC_AUTH", "EXT_AUTHZ", "JWT_AUTHN", "LOCAL_RATELIMIT",
           "RBAC_ALLOW", "RBAC_DENY", "api_key_auth", "ext_authz", "ext_authz_filter",
           "jwt_authentication", "local_rate_limit", "rbac"]
