"""Fault-injection tools for processhub tests (plain Python, no Django).

* :mod:`tests.chaos.proxy` -- a loopback-only TCP proxy that can cut,
  blackhole or delay the traffic between a node and PostgreSQL / Redis.
* :mod:`tests.chaos.detector` -- the pure checker of the double-activation
  detector (overlapping / backwards epochs, lost process ids).
* :mod:`tests.chaos.recording` -- the verdict: recorder events judged against
  the database's leases (late actions, allowances, twins, lost evidence).
"""
