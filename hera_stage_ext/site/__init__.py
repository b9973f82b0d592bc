"""The site service (``hera-stage site``): one trusted Jupyter server per site that alone holds
the catalogue database, the stores, the peers and their secrets, and that users reach with
their own identity (a JupyterHub token or cookie, or a site token issued by an admin).

``service``: the launcher; ``auth``: who a request is (identity providers) and what it may do
(the authorizer, the scope each route needs); ``scopes``: the scopes a user holds; ``tokens``:
the hashed per-user API tokens of a site without a hub; ``worker_ops``: what a user's worker
may do to that user's jobs (the worker API).
"""
