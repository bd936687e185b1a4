"""The control plane: live weights, the admin API, hot reload, ramps and the audit trail.

::

    store.py       WeightStore: RedisWeightStore (fleet) or LocalWeightStore (one host)
    controller.py  applies store snapshots to the Gateway (pub/sub + 1 s reconcile)
    plane.py       ControlPlane: the operations (set, rollback, ramp, reload, audit)
    api.py         /api/... on the admin listener, bearer-token protected
    auth.py        admin tokens (GATEWAY_ADMIN_TOKEN, GATEWAY_ADMIN_TOKENS)
    reload.py      routes.yaml hot reload: file watch, SIGHUP, API
    ramp.py        staged ramps, owned by the replica that started them
    window.py      sliding per-(route, side) figures fed by every request

This package imports nothing heavy at import time: :mod:`gateway.app` imports ``window``.
"""
