"""API-only modules of the tickstream Chalice app (validation, auth, errors, OpenAPI, route logic)."""
